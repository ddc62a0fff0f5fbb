import Dispatch
import Synchronization
import SystemPackage

/// A bounded in-memory cache of file blocks, evicting the least recently used.
///
/// Thread safety: every method may be called from any thread (FUSE workers,
/// prefetchers). One mutex guards the index and the counters; it is never held
/// while a block loads, allocates or is freed, so a slow source stalls only the
/// readers of the blocks it is loading.
///
/// Capacity: bytes of evictable resident blocks, plus bytes reserved by loads in
/// flight, plus the sizes of pinned files never exceed `capacity`. A load that
/// finds every byte reserved or pinned still runs, but its block is handed to the
/// caller and not kept.
///
/// Pinning (see `pin(_:)`): a pinned file version holds its whole size of the
/// capacity from the moment it is pinned, and its blocks, once loaded, live
/// outside the LRU list, so no eviction can take them.
public final class BlockCache: Sendable {
    public let capacity: Int
    public let blockSize: Int
    let state: Mutex<State>
    /// Memory for whole blocks, prepared off the loading threads' critical path.
    let preparedMemory: PreparedMappings

    public init(capacity: Int, blockSize: Int) {
        precondition(capacity > 0 && blockSize > 0)
        self.capacity = capacity
        self.blockSize = blockSize
        state = Mutex(State())
        preparedMemory = PreparedMappings(size: blockSize)
    }

    /// Returns the block for `key` and the tier it came from, calling `fill` to load it on a miss:
    /// the one entry point for reads, prefetch and warm-up.
    ///
    /// - Parameters:
    ///   - length: the block's expected size (`blockSize`, or less for a file's last block).
    ///   - fill: loads the block into the buffer and returns how many bytes it wrote and
    ///     where they came from (a peer or the source). It runs on the calling thread without
    ///     the cache's lock, and may hand the buffer to work that outlives the call (a source
    ///     read the caller stopped waiting for): the memory stays mapped until that work lets go.
    ///     Concurrent callers asking for the same key while it runs wait for it and share its
    ///     result, error included.
    /// - Returns: the block, and `.memory` for a hit, else the tier `fill` reported.
    /// - Throws: what `fill` threw, or `Errno` if memory could not be mapped. Failures are not cached.
    public func fetch(
        for key: BlockKey,
        length: Int,
        fill: (BlockBuffer) throws -> (count: Int, tier: ReadTier)
    ) throws -> (block: Block, tier: ReadTier) {
        precondition(length > 0 && length <= blockSize)
        var evicted: [Block] = []  // unmapped when this scope ends, outside the lock
        defer { evicted.removeAll() }
        let step: Step = state.withLock { state in
            if let block = state.lookup(key, touching: true) {
                state.counters.hits += 1
                return .hit(block)
            }
            if let pending = state.pending[key] {
                state.counters.coalescedMisses += 1
                return .wait(pending)
            }
            state.counters.misses += 1
            let pending = PendingLoad()
            state.pending[key] = pending
            // A pinned file's blocks are already paid for by its pin.
            let kept = state.isPinned(key.file) ? false : state.reserve(length, capacity: capacity, evicted: &evicted)
            return .load(pending, kept: kept)
        }

        switch step {
        case .hit(let block):
            return (block, .memory)
        case .wait(let pending):
            return try pending.wait()
        case .load(let pending, let kept):
            let outcome = Result { () throws -> (block: Block, tier: ReadTier) in
                // A file's last, shorter block is mapped to its own length.
                let buffer = length == blockSize
                    ? BlockBuffer(mapping: try preparedMemory.take(), capacity: length)
                    : try BlockBuffer(capacity: length)
                let (filled, tier) = try fill(buffer)
                return (buffer.seal(length: min(max(filled, 0), length)), tier)
            }
            state.withLock { state in
                state.pending[key] = nil
                if kept { state.reservedBytes -= length }
                switch outcome {
                case .success(let loaded):
                    state.counters.loadedBytes += UInt64(loaded.block.count)
                    state.admit(key, loaded.block, reserved: kept)
                case .failure:
                    state.counters.loadErrors += 1
                }
            }
            pending.complete(outcome)
            return try outcome.get()
        }
    }

    /// The block if it is in memory (pinned or not), marked most recently used; never loads.
    /// For serving peers, which must not make this instance read its source for them; not
    /// counted as a reader's hit.
    public func residentBlock(for key: BlockKey) -> Block? {
        state.withLock { $0.lookup(key, touching: true) }
    }

    /// Whether the block is in memory or being loaded: asking for it would not start a source read.
    public func isResidentOrLoading(_ key: BlockKey) -> Bool {
        state.withLock { $0.lookup(key, touching: false) != nil || $0.pending[key] != nil }
    }

    public var statistics: CacheStatistics {
        state.withLock { state in
            var snapshot = state.counters
            snapshot.capacity = capacity
            snapshot.blockSize = blockSize
            snapshot.residentBytes = state.residentBytes + state.pinnedResidentBytes
            snapshot.residentBlocks = state.resident.count + state.pinnedBlocks.count
            snapshot.reservedBytes = state.reservedBytes
            snapshot.pinnedBytes = state.pinnedBytes
            snapshot.pinnedFiles = state.pins.count
            snapshot.pinnedResidentBytes = state.pinnedResidentBytes
            return snapshot
        }
    }

    /// Evictable resident keys from least to most recently used (for tests and diagnostics); pinned blocks are not listed.
    public var keysByRecency: [BlockKey] {
        state.withLock { $0.resident.keysOldestFirst }
    }

    private enum Step {
        case hit(Block)
        case wait(PendingLoad)
        case load(PendingLoad, kept: Bool)
    }

    struct State: ~Copyable {
        /// Evictable blocks, and their bytes.
        var resident = LRUList<BlockKey, Block>()
        var residentBytes = 0
        var reservedBytes = 0
        var pending: [BlockKey: PendingLoad] = [:]
        var counters = CacheStatistics()
        /// Pinned file versions by identity, the sum of their sizes, and their loaded blocks.
        var pins: [FileIdentity: FileVersion] = [:]
        var pinnedBytes = 0
        var pinnedBlocks: [BlockKey: Block] = [:]
        var pinnedResidentBytes = 0

        func isPinned(_ file: FileVersion) -> Bool {
            !pins.isEmpty && pins[file.identity] == file
        }

        /// The one residency lookup every entry point goes through: pinned blocks, then the LRU list.
        mutating func lookup(_ key: BlockKey, touching: Bool) -> Block? {
            if !pinnedBlocks.isEmpty, let block = pinnedBlocks[key] { return block }
            return touching ? resident.touch(key) : resident.peek(key)
        }

        /// Keeps a freshly loaded block with its pinned file, or in the room reserved for it.
        /// A block with neither (no room, or its file was unpinned while it loaded) is not kept.
        mutating func admit(_ key: BlockKey, _ block: Block, reserved: Bool) {
            if isPinned(key.file) {
                pinnedBlocks[key] = block
                pinnedResidentBytes += block.count
            } else if reserved {
                resident.insert(key, block)
                residentBytes += block.count
            }
        }

        /// Makes room for `length` bytes by evicting least recently used blocks.
        /// Returns false if loads in flight hold too much of the capacity to make room.
        mutating func reserve(_ length: Int, capacity: Int, evicted: inout [Block]) -> Bool {
            while residentBytes + reservedBytes + pinnedBytes + length > capacity {
                guard let (_, block) = resident.removeOldest() else { return false }
                evicted.append(block)
                residentBytes -= block.count
                counters.evictions += 1
                counters.evictedBytes += UInt64(block.count)
            }
            reservedBytes += length
            return true
        }
    }
}

/// A load in flight, which concurrent missers of the same block wait for.
final class PendingLoad: Sendable {
    private let finished = DispatchGroup()
    private let outcome = Mutex<Result<(block: Block, tier: ReadTier), any Error>?>(nil)

    init() { finished.enter() }

    func complete(_ result: Result<(block: Block, tier: ReadTier), any Error>) {
        outcome.withLock { $0 = result }
        finished.leave()
    }

    func wait() throws -> (block: Block, tier: ReadTier) {
        finished.wait()
        return try outcome.withLock { $0! }.get()
    }
}

/// Counters of a cache since it was created, and its current occupancy.
public struct CacheStatistics: Sendable, Equatable {
    public var capacity = 0
    public var blockSize = 0
    public var residentBytes = 0
    public var residentBlocks = 0
    public var reservedBytes = 0
    /// Lookups answered from memory.
    public var hits: UInt64 = 0
    /// Lookups that loaded the block from the source.
    public var misses: UInt64 = 0
    /// Lookups that found the block loading and waited for that load instead of starting another.
    public var coalescedMisses: UInt64 = 0
    public var loadedBytes: UInt64 = 0
    public var loadErrors: UInt64 = 0
    public var evictions: UInt64 = 0
    public var evictedBytes: UInt64 = 0
    /// Capacity held by pinned files (their full sizes), how many they are, and how much of them is loaded.
    public var pinnedBytes = 0
    public var pinnedFiles = 0
    public var pinnedResidentBytes = 0

    public init() {}
}

// Conveniences for tests (internal: production code goes through `fetch`).
extension BlockCache {
    /// `fetch` with a loader that fills the block's memory from the source.
    func block(for key: BlockKey, length: Int, load: (UnsafeMutableRawBufferPointer) throws -> Int) throws -> Block {
        try fetch(for: key, length: length) { buffer in (try load(buffer.memory), .source) }.block
    }

    /// Whether the block is in memory, without touching its recency or the counters.
    func contains(_ key: BlockKey) -> Bool {
        state.withLock { $0.lookup(key, touching: false) != nil }
    }
}
