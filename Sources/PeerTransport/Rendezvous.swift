import HTTPServing

/// Rendezvous (highest-random-weight) hashing: every instance ranks the instances for a stripe
/// of a file the same way, so the stripe's **owner** (the first in rank, within a bound on how many
/// stripes one instance owns: `owners`) is the same for every asker.
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
        return
            instances
            .map { (instance: $0, score: mix(hash(of: $0) ^ key)) }
            .sorted { $0.score != $1.score ? $0.score > $1.score : $0.instance < $1.instance }
            .map(\.instance)
    }

    /// The owner of every stripe of `file`, balanced: stripe by stripe, each goes to the first instance
    /// in its rank that owns fewer than ⌈(1 + slack) · (stripes so far) / instances⌉ of the stripes before
    /// it. Plain rendezvous leaves one of four instances a third more stripes than another, and the owner
    /// with the most decides when a cold fleet reading the file together is done; bounded this way none
    /// owns more than its share by much, in every stretch from the file's start (the fleet reads in that
    /// order). Every instance computes the same owners from the same instances; a change of instances moves
    /// more stripes than plain rendezvous would, which costs only that other instances load them.
    public static func owners(of file: PeerFile, among instances: [PeerAddress], slack: Double = 0.05) -> [PeerAddress] {
        guard !instances.isEmpty else { return [] }
        let stripes = (file.blockCount + stripeBlocks(blockSize: file.blockSize) - 1) / stripeBlocks(blockSize: file.blockSize)
        var owned: [PeerAddress: Int] = [:]
        var owners: [PeerAddress] = []
        owners.reserveCapacity(Int(stripes))
        for stripe in 0..<stripes {
            let cap = Int(((1 + slack) * Double(stripe + 1) / Double(instances.count)).rounded(.up))
            let owner = rank(instances, file: file, stripe: stripe).first { owned[$0, default: 0] < cap }!
            owned[owner, default: 0] += 1
            owners.append(owner)
        }
        return owners
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
