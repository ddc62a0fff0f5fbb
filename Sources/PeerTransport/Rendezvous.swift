import HTTPServing

/// Rendezvous (highest-random-weight) hashing: every instance ranks the instances for a stripe
/// of a file the same way, so the instance ranked first, the stripe's **owner**, is the same
/// for every asker; one joining or leaving moves only the stripes it ranks first.
///
/// The hash is FNV-1a with a SplitMix64 finalizer: deterministic across processes and
/// machines, unlike `Hasher`, which is seeded per process.
public enum Rendezvous {
    /// Blocks per stripe: a stripe of about 4 MiB has one owner, so that an owner reads its
    /// share of a file in runs (object-store clients stream long reads best) and an asker's
    /// prefetch chunk (4 blocks by default) goes to one owner in one request.
    public static func stripeBlocks(blockSize: Int) -> Int64 { Int64(max(1, (4 << 20) / max(1, blockSize))) }

    /// The stripe block `index` of a file with `blockSize` blocks lies in.
    public static func stripe(of index: Int64, blockSize: Int) -> Int64 { index / stripeBlocks(blockSize: blockSize) }

    /// Instances from first (the owner) to last for a stripe of `file`.
    public static func rank(_ instances: [PeerAddress], file: PeerFile, stripe: Int64) -> [PeerAddress] {
        let key = hash(of: file, stripe: stripe)
        return instances
            .map { (instance: $0, score: mix(hash(of: $0) ^ key)) }
            .sorted { $0.score != $1.score ? $0.score > $1.score : $0.instance < $1.instance }
            .map(\.instance)
    }

    static func hash(of file: PeerFile, stripe: Int64) -> UInt64 {
        var hash = FNV1a()
        hash.add(file.path)
        hash.add(file.size)
        hash.add(file.modifiedNanoseconds)
        hash.add(Int64(file.blockSize))
        hash.add(stripe)
        return hash.value
    }

    static func hash(of peer: PeerAddress) -> UInt64 {
        var hash = FNV1a()
        hash.add(peer.description.utf8)
        return hash.value
    }

    /// SplitMix64's finalizer: every input bit affects every output bit.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
