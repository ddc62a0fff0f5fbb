import BlockCache

/// Told about every read the kernel asked for that succeeded.
///
/// Threads: called on FUSE worker threads, on every read, concurrently: it must be
/// cheap and must not block (no locks shared by all readers if it can avoid them).
public protocol ReadObserver: Sendable {
    func didRead(bytes: Int, tier: ReadTier, nanoseconds: UInt64)
}
