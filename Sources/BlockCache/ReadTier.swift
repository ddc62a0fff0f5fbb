/// Where bytes came from, fastest first: the one vocabulary for a block's origin
/// (what `BlockCache.fetch` reports), a read's tier (the slowest tier any of its
/// blocks needed) and the statistics counted by them.
public enum ReadTier: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    /// Every block was resident in this daemon's cache.
    case memory
    /// At least one block came from a peer's memory, none from the source.
    case peer
    /// Read from the source (for a read: at least one of its blocks was).
    case source

    public var description: String {
        switch self {
        case .memory: "memory"
        case .peer: "peer"
        case .source: "source"
        }
    }

    public static func < (lhs: ReadTier, rhs: ReadTier) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Raises this tier to `other` if it is slower.
    public mutating func include(_ other: ReadTier) {
        if other > self { self = other }
    }
}
