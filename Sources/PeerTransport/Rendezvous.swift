import HTTPServing

/// Rendezvous (highest-random-weight) hashing: every instance ranks the live
/// peers for a block the same way, so the readers of a block ask the same peer
/// first, and a peer joining or leaving moves only the blocks it ranks first.
///
/// The hash is FNV-1a with a SplitMix64 finalizer: deterministic across
/// processes and machines, unlike `Hasher`, which is seeded per process.
public enum Rendezvous {
    /// Peers from most to least likely to hold `block`.
    public static func rank(_ peers: [PeerAddress], for block: PeerBlockID) -> [PeerAddress] {
        let blockHash = hash(of: block)
        return peers
            .map { (peer: $0, score: mix(hash(of: $0) ^ blockHash)) }
            .sorted { $0.score != $1.score ? $0.score > $1.score : $0.peer < $1.peer }
            .map(\.peer)
    }

    static func hash(of block: PeerBlockID) -> UInt64 {
        var hash = FNV1a()
        hash.add(block.path)
        hash.add(block.fileSize)
        hash.add(block.modifiedNanoseconds)
        hash.add(Int64(block.blockSize))
        hash.add(block.index)
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
