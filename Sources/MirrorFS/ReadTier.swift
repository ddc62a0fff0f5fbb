/// Where the bytes of a read came from, fastest first. A read spanning several
/// blocks is counted in the slowest tier any of them needed.
///
/// Tiers will grow (a peer cache sits between memory and the source); code
/// that switches over them should expect new cases in that order.
public enum ReadTier: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    /// Every block was resident in this daemon's cache.
    case memory
    /// At least one block came from a peer's memory, none from the source.
    case peer
    /// At least one block was read from the source, or waited for while another reader read it.
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
    mutating func include(_ other: ReadTier) {
        if other > self { self = other }
    }
}

/// Told about every read the kernel asked for that succeeded.
///
/// Threads: called on FUSE worker threads, on every read, concurrently: it must be
/// cheap and must not block (no locks shared by all readers if it can avoid them).
public protocol ReadObserver: Sendable {
    func didRead(bytes: Int, tier: ReadTier, nanoseconds: UInt64)
}
