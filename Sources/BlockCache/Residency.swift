import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the cache holds of one file version right now (`cachefs ls`).
public struct Residency: Sendable, Equatable {
    /// Bytes of the version's blocks in memory.
    public var cachedBytes: Int
    public var pinned: Bool
    /// Held for readers the kernel serves from memory itself (FUSE passthrough).
    public var held: Bool
    /// When a block of it in memory was last used (seconds since the epoch): loaded, or looked up by a
    /// reader, prefetch, warm-up or peer, or opened in passthrough. This is the order LRU eviction goes by;
    /// reads the kernel serves itself are not seen. Nil when no block is in memory.
    public var lastUsed: Int64?

    public init(cachedBytes: Int, pinned: Bool, held: Bool, lastUsed: Int64?) {
        self.cachedBytes = cachedBytes
        self.pinned = pinned
        self.held = held
        self.lastUsed = lastUsed
    }
}

// Residency: reports what is in memory without changing it. Nothing is loaded, no block moves
// in the LRU order, no counter moves, so asking cannot change what the next reader finds.
extension BlockCache {
    /// Blocks looked at under one hold of the lock: a large file is told in slices, so readers
    /// never wait for more than a few milliseconds of lookups.
    static let residencySlice: Int64 = 4096

    /// What the cache holds of each version, in the same order.
    public func residency(of versions: [FileVersion]) -> [Residency] {
        versions.map(residency(of:))
    }

    public func residency(of version: FileVersion) -> Residency {
        let count = blockCount(version, blockSize: blockSize)
        var total = Residency(cachedBytes: 0, pinned: false, held: false, lastUsed: nil)
        var first: Int64 = 0
        repeat {
            let slice = first..<min(count, first + Self.residencySlice)
            state.withLock { state in
                total.pinned = state.isPinned(version)
                total.held = state.holds[version] != nil
                let fixed = state.fixed.isEmpty ? nil : state.fixed[version]
                for index in slice {
                    guard let block = fixed?[index] ?? state.resident.peek(BlockKey(file: version, index: index)) else { continue }
                    total.cachedBytes += block.count
                    total.lastUsed = max(total.lastUsed ?? 0, block.lastUsed.load(ordering: .relaxed))
                }
            }
            first = slice.upperBound
        } while first < count
        return total
    }
}

extension Block {
    /// Stamps the block with the time of its latest use (whole seconds: cheap, and all `cachefs ls` shows).
    func markUsed() {
        lastUsed.store(Int64(time(nil)), ordering: .relaxed)
    }
}
