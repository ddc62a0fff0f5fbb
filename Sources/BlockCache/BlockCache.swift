import Logging
import Reporting
import Synchronization
import SystemPackage
import Threading

/// A bounded in-memory cache of file blocks, evicting the least recently used.
///
/// Thread safety: every method may be called from any thread (FUSE workers,
/// prefetchers). One mutex guards the index and the counters; it is never held
/// while a block loads, while memory is mapped, or while it is given back, so a
/// slow source stalls only the readers of the blocks it is loading.
///
/// Memory: the blocks of a file version live in that version's memory file
/// (`VersionMemory`), each at its own offset, so that a wholly cached version
/// can be handed to the kernel to serve directly (`hold`). A file smaller than
/// one block, and a block the cache will not keep, get anonymous memory instead.
///
/// Capacity: bytes of evictable resident blocks, plus bytes reserved by loads in
/// flight, plus the sizes of pinned files and of held files, plus memory of evicted
/// blocks that could not be given back (`UnreturnedMemory`), never exceed `capacity`.
/// A load that finds every byte reserved, pinned or held still runs, but its block
/// is handed to the caller and not kept.
///
/// Fixed versions: a pinned version (see `pin(_:)`) or a held one (see `hold(_:)`)
/// keeps its blocks outside the LRU list, so no eviction can take them.
public final class BlockCache: Sendable {
    public let capacity: Int
    public let blockSize: Int
    /// The index, the capacity's accounting and the counters. Lock order: after a node's `opens`
    /// (passthrough holds are taken under it), before a version's memory lock (a block dropped under
    /// it gives its range back); never held while a block loads, while memory is made or while a
    /// load's waiters are woken.
    let state: Mutex<State>
    /// Memory that evicted blocks could not give back, still counted against the capacity.
    let unreturned: UnreturnedMemory
    /// Who may change the memory files' bytes, and where they are kept outside the process.
    let custody: MemoryCustody
    /// Loads into memory, stopped while the cache is handed to another daemon.
    let loads = LoadGate()

    /// - Parameters:
    ///   - registry: keeps each memory file where it outlives the process (systemd's store); nil keeps none.
    ///   - logger: where a failure to give memory back is told.
    public convenience init(
        capacity: Int, blockSize: Int, registry: (any MemoryFileRegistry)? = nil,
        logger: Logger = Logger(label: "cachefs.cache")
    ) {
        self.init(capacity: capacity, blockSize: blockSize, registry: registry, unreturned: UnreturnedMemory(logger: logger))
    }

    init(capacity: Int, blockSize: Int, registry: (any MemoryFileRegistry)? = nil, unreturned: UnreturnedMemory) {
        precondition(capacity > 0 && blockSize > 0)
        self.capacity = capacity
        self.blockSize = blockSize
        self.unreturned = unreturned
        state = Mutex(State())
        custody = MemoryCustody(registry: registry)
    }

    /// The capacity left for blocks, pins and holds: memory that could not be given back still counts.
    var usableCapacity: Int { capacity - unreturned.bytes }

    /// Returns the block for `key` and the tier it came from, calling `fill` to load it on a miss:
    /// the one entry point for reads, prefetch and warm-up.
    ///
    /// - Parameters:
    ///   - length: the block's expected size (`blockSize`, or less for a file's last block).
    ///   - fill: loads the block into the buffer and returns how many bytes it wrote and
    ///     where they came from (a peer or the source). It runs on the calling thread without
    ///     the cache's lock, and may hand the buffer to work that outlives the call (a source
    ///     read the caller stopped waiting for): the memory stays valid until that work lets go.
    ///     Concurrent callers asking for the same key while it runs wait for it and share its
    ///     result, error included.
    /// - Returns: the block, and `.memory` for a hit, else the tier `fill` reported.
    /// - Throws: what `fill` threw, or `Errno` if memory could not be had. Failures are not cached.
    public func fetch(
        for key: BlockKey,
        length: Int,
        fill: (BlockBuffer) throws -> (count: Int, tier: ReadTier)
    ) throws -> (block: Block, tier: ReadTier) {
        precondition(length > 0 && length <= blockSize)
        var evicted: [Block] = [] // given back when this scope ends, outside the lock
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
            // A fixed version's blocks are already paid for by its pin or hold.
            let fixed = state.isFixed(key.file)
            let reserved = fixed ? false : state.reserve(length, capacity: usableCapacity, evicted: &evicted)
            return .load(pending, reserved: reserved, admitted: fixed || reserved)
        }

        switch step {
        case .hit(let block):
            return (block, .memory)
        case .wait(let pending):
            return try pending.wait()
        case .load(let pending, let reserved, let admitted):
            let outcome = Result { () throws -> (block: Block, tier: ReadTier) in
                try loads.enter()
                defer { loads.leave() }
                switch try memory(for: key, length: length, kept: admitted) {
                case .live(let block):
                    return (block, .memory) // evicted while a reader still held it: taken back, a hit after all
                case .fresh(let buffer):
                    let (filled, tier) = try fill(buffer)
                    return (buffer.seal(length: min(max(filled, 0), length)), tier)
                }
            }
            complete((key.index, pending, reserved), file: key.file, length: length, outcome)
            return try outcome.get()
        }
    }

    /// Loads the run of adjacent blocks of `file` from `first` that are neither in memory nor
    /// loading (at most `count`), with as few calls to `fill` as their memory allows: they sit
    /// side by side in the version's memory file, so one read of the source fills them all.
    /// For a reader that wants them in order (a prefetch lane). Blocks of other callers' runs, and
    /// evicted blocks a reader still holds (taken back), end a run early.
    ///
    /// - Parameter fill: fills `buffers`, the blocks from `start` (side by side in memory), and returns
    ///   the bytes written and where they came from. Concurrent lookups of these blocks wait for it.
    /// - Returns: how many blocks from `first` are now loaded (0 if `first` was in memory or loading).
    /// - Throws: the first error of `fill`; the blocks it was filling fail with it (failures are not cached).
    public func loadRun(
        of file: FileVersion, from first: Int64, count: Int,
        fill: (_ start: Int64, _ buffers: [BlockBuffer]) throws -> (count: Int, tier: ReadTier)
    ) throws -> Int {
        guard file.size >= Int64(blockSize) else { return 0 } // anonymous memory: one block at a time
        var evicted: [Block] = []
        defer { evicted.removeAll() }
        let end = min(first + Int64(count), blockCount(file, blockSize: blockSize))
        let run: [(index: Int64, pending: PendingLoad, reserved: Bool)] = state.withLock { state in
            var run: [(index: Int64, pending: PendingLoad, reserved: Bool)] = []
            let fixed = state.isFixed(file)
            for index in first..<max(first, end) {
                let key = BlockKey(file: file, index: index)
                guard state.lookup(key, touching: false) == nil, state.pending[key] == nil else { break }
                let reserved = fixed ? false : state.reserve(length(of: key), capacity: usableCapacity, evicted: &evicted)
                guard fixed || reserved else { break } // a block the cache would not keep is loaded on its own
                state.counters.misses += 1
                let pending = PendingLoad()
                state.pending[key] = pending
                run.append((index, pending, reserved))
            }
            return run
        }
        guard !run.isEmpty else { return 0 }
        do {
            try loads.enter()
        } catch {
            for entry in run { complete(entry, file: file, .failure(error)) }
            throw error
        }
        defer { loads.leave() }
        var position = 0
        var failure: (any Error)?
        while position < run.count {
            // Claim ranges until one holds a live block; fill the claimed ones with one call.
            var claimed: [BlockBuffer] = []
            var taken: Block?
            do {
                let memory = try memory(of: file)
                while position + claimed.count < run.count {
                    let index = run[position + claimed.count].index
                    switch memory.claim(index, length: length(of: BlockKey(file: file, index: index))) {
                    case .fresh(let buffer): claimed.append(buffer)
                    case .live(let block): taken = block
                    }
                    if taken != nil { break }
                }
                if !claimed.isEmpty {
                    let (filled, tier) = try fill(run[position].index, claimed)
                    for (offset, buffer) in claimed.enumerated() {
                        let within = filled - offset * blockSize
                        complete(
                            run[position + offset], file: file,
                            .success((buffer.seal(length: min(max(within, 0), buffer.memory.count)), tier)))
                    }
                    position += claimed.count
                }
                if let taken {
                    complete(run[position], file: file, .success((taken, .memory)))
                    position += 1
                }
            } catch {
                failure = error
                break
            }
        }
        if let failure {
            for entry in run[position...] { complete(entry, file: file, .failure(failure)) }
            guard position > 0 else { throw failure }
        }
        return position
    }

    /// Ends one block's load: admits the block (or forgets the failure) and wakes its waiters.
    private func complete(
        _ entry: (index: Int64, pending: PendingLoad, reserved: Bool), file: FileVersion,
        length: Int? = nil, _ outcome: Result<(block: Block, tier: ReadTier), any Error>
    ) {
        let key = BlockKey(file: file, index: entry.index)
        state.withLock { state in
            state.pending[key] = nil
            if entry.reserved { state.reservedBytes -= length ?? self.length(of: key) }
            switch outcome {
            case .success(let loaded):
                if loaded.tier == .memory { // an evicted block a reader still held, taken back: a hit after all
                    state.counters.misses -= 1
                    state.counters.hits += 1
                    state.counters.reclaimedBlocks += 1
                    state.counters.reclaimedBytes += UInt64(loaded.block.count)
                } else {
                    state.counters.loadedBytes += UInt64(loaded.block.count)
                }
                state.admit(key, loaded.block, reserved: entry.reserved)
            case .failure:
                break // not cached: the next lookup loads again (the loader counts the failure)
            }
        }
        entry.pending.complete(outcome)
    }

    /// A block's length: the block size, or what is left of the file for its last block.
    private func length(of key: BlockKey) -> Int {
        Int(min(Int64(blockSize), key.file.size - key.index * Int64(blockSize)))
    }

    /// Memory for a block to be loaded: its range of the version's memory file if the cache
    /// keeps it and the file spans at least a block, else an anonymous mapping of its own.
    private func memory(for key: BlockKey, length: Int, kept: Bool) throws -> VersionMemory.Claim {
        guard kept, key.file.size >= Int64(blockSize) else { return .fresh(try BlockBuffer.anonymous(length)) }
        return try memory(of: key.file).claim(key.index, length: length)
    }

    /// The version's memory file, made (outside the lock) on its first block.
    private func memory(of version: FileVersion) throws -> VersionMemory {
        if let existing = state.withLock({ $0.memories[version]?.memory }) { return existing }
        let made = try VersionMemory(version: version, blockSize: blockSize, custody: custody, unreturned: unreturned)
        let kept = state.withLock { state in
            if let raced = state.memories[version]?.memory { return raced }
            state.forgetReleasedMemories()
            state.memories[version] = WeakMemory(memory: made)
            return made
        }
        if kept === made, let name = made.name, let ledger = made.ledger {
            custody.registry?.didCreate(name: name, memory: made.descriptor, ledger: ledger.descriptor)
        }
        return kept
    }

    /// The block if it is in memory (fixed or not), marked most recently used; never loads.
    /// For serving peers, which must not make this instance read its source for them; not
    /// counted as a reader's hit.
    public func residentBlock(for key: BlockKey) -> Block? {
        state.withLock { $0.lookup(key, touching: true) }
    }

    /// The blocks of `file` in memory from `first` on, as many as lie in a row (at most `count`),
    /// marked most recently used; never loads. For serving a peer a run of blocks.
    public func residentRun(of file: FileVersion, from first: Int64, count: Int) -> [Block] {
        state.withLock { state in
            var run: [Block] = []
            var index = first
            while run.count < count, let block = state.lookup(BlockKey(file: file, index: index), touching: true) {
                run.append(block)
                index += 1
            }
            return run
        }
    }

    /// Which of the version's blocks are in memory, as the indexes `body` is called with; never
    /// loads or touches recency. For telling peers what this instance holds.
    public func forEachResidentBlock(of file: FileVersion, _ body: (Int64) -> Void) {
        let count = blockCount(file, blockSize: blockSize)
        let resident: [Int64] = state.withLock { state in
            (0..<count).filter { state.lookup(BlockKey(file: file, index: $0), touching: false) != nil }
        }
        resident.forEach(body)
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
            snapshot.residentBytes = state.residentBytes + state.fixedResidentBytes
            snapshot.residentBlocks = state.resident.count + state.fixed.values.reduce(0) { $0 + $1.count }
            snapshot.reservedBytes = state.reservedBytes
            snapshot.pinnedBytes = state.pinnedBytes
            snapshot.pinnedFiles = state.pins.count
            snapshot.pinnedResidentBytes = state.pins.values.reduce(0) { $0 + state.fixedBytes(of: $1) }
            snapshot.heldBytes = state.heldBytes
            snapshot.heldFiles = state.holds.count
            snapshot.heldTotalBytes = state.holds.keys.reduce(0) { $0 + Int($1.size) }
            snapshot.unreturnedBytes = unreturned.bytes
            snapshot.holePunchFailures = unreturned.failures
            return snapshot
        }
    }

    /// Evictable resident keys from least to most recently used (for tests and diagnostics); fixed blocks are not listed.
    var keysByRecency: [BlockKey] {
        state.withLock { $0.resident.keysOldestFirst }
    }

    private enum Step {
        case hit(Block)
        case wait(PendingLoad)
        case load(PendingLoad, reserved: Bool, admitted: Bool)
    }

    struct WeakMemory {
        weak var memory: VersionMemory?
    }

    struct State: ~Copyable {
        /// Evictable blocks, and their bytes.
        var resident = LRUList<BlockKey, Block>()
        var residentBytes = 0
        var reservedBytes = 0
        var pending: [BlockKey: PendingLoad] = [:]
        var counters = CacheStatistics()
        /// Blocks of pinned or held versions, by version, and their bytes.
        var fixed: [FileVersion: [Int64: Block]] = [:]
        var fixedResidentBytes = 0
        /// Pinned file versions by identity, and the sum of their sizes.
        var pins: [FileIdentity: FileVersion] = [:]
        var pinnedBytes = 0
        /// Held versions (`hold`) and how many holds each has; the sizes of those not also pinned.
        var holds: [FileVersion: Int] = [:]
        var heldBytes = 0
        /// Each version's memory file while any of its blocks lives.
        var memories: [FileVersion: WeakMemory] = [:]
        /// Passthrough holds inherited with a memory file and not yet claimed by an inherited open (see CacheInheritance).
        var inheritedHolds: [FileVersion: Int] = [:]

        func isPinned(_ file: FileVersion) -> Bool {
            !pins.isEmpty && pins[file.identity] == file
        }

        func isFixed(_ file: FileVersion) -> Bool {
            isPinned(file) || holds[file] != nil
        }

        /// The one residency lookup every entry point goes through: fixed blocks, then the LRU list.
        /// Touching marks the block most recently used, in the LRU list and by its time of use.
        mutating func lookup(_ key: BlockKey, touching: Bool) -> Block? {
            let block = (fixed.isEmpty ? nil : fixed[key.file]?[key.index]) ?? (touching ? resident.touch(key) : resident.peek(key))
            if touching { block?.markUsed() }
            return block
        }

        func fixedBytes(of file: FileVersion) -> Int {
            fixed[file]?.values.reduce(0) { $0 + $1.count } ?? 0
        }

        /// Keeps a freshly loaded block with its fixed version, or in the room reserved for it.
        /// A block with neither (no room, or its version was unfixed while it loaded) is not kept.
        mutating func admit(_ key: BlockKey, _ block: Block, reserved: Bool) {
            if isFixed(key.file) {
                fixed[key.file, default: [:]][key.index] = block
                fixedResidentBytes += block.count
            } else if reserved {
                resident.insert(key, block)
                residentBytes += block.count
            }
        }

        /// Makes room for `length` bytes by evicting least recently used blocks.
        /// Returns false if loads in flight and fixed versions hold too much of the capacity to make room.
        mutating func reserve(_ length: Int, capacity: Int, evicted: inout [Block]) -> Bool {
            while residentBytes + reservedBytes + pinnedBytes + heldBytes + length > capacity {
                guard let (_, block) = resident.removeOldest() else { return false }
                evicted.append(block)
                residentBytes -= block.count
                counters.evictions += 1
                counters.evictedBytes += UInt64(block.count)
            }
            reservedBytes += length
            return true
        }

        /// Moves a version's resident blocks out of the LRU list into the fixed table.
        mutating func fix(_ file: FileVersion, blockSize: Int) {
            for index in 0..<blockCount(file, blockSize: blockSize) {
                let key = BlockKey(file: file, index: index)
                guard let block = resident.remove(key) else { continue }
                residentBytes -= block.count
                fixed[file, default: [:]][index] = block
                fixedResidentBytes += block.count
            }
        }

        /// Moves a version's fixed blocks back to the LRU list (most recently used), or returns them to be dropped.
        mutating func unfix(_ file: FileVersion, keepBlocks: Bool) -> [Block] {
            guard let blocks = fixed.removeValue(forKey: file) else { return [] }
            var dropped: [Block] = []
            for (index, block) in blocks.sorted(by: { $0.key < $1.key }) {
                fixedResidentBytes -= block.count
                if keepBlocks {
                    resident.insert(BlockKey(file: file, index: index), block)
                    residentBytes += block.count
                } else {
                    dropped.append(block)
                }
            }
            return dropped
        }

        /// Drops the entries of memory files that have been released (all their blocks gone).
        mutating func forgetReleasedMemories() {
            guard memories.count >= 64 else { return }
            memories = memories.filter { $0.value.memory != nil }
        }
    }
}

func blockCount(_ file: FileVersion, blockSize: Int) -> Int64 {
    (file.size + Int64(blockSize) - 1) / Int64(blockSize)
}

/// A load in flight, which concurrent missers of the same block wait for.
final class PendingLoad: Sendable {
    /// The load's outcome once it is complete. Lock order: a leaf; completed after the cache's lock is released.
    private let outcome = Condition<Result<(block: Block, tier: ReadTier), any Error>?>(nil)

    func complete(_ result: Result<(block: Block, tier: ReadTier), any Error>) {
        outcome.update { $0 = result }
    }

    func wait() throws -> (block: Block, tier: ReadTier) {
        try outcome.wait { $0 }!.get()
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
    /// Bytes of blocks loaded (from the source or a peer) and admitted. With the two below, the
    /// cache's conservation: loaded + reclaimed = evicted + resident, which the tests check.
    public var loadedBytes: UInt64 = 0
    /// Evicted blocks taken back by a lookup while a reader still held them (counted as hits, not
    /// loads), and their bytes.
    public var reclaimedBlocks: UInt64 = 0
    public var reclaimedBytes: UInt64 = 0
    public var evictions: UInt64 = 0
    public var evictedBytes: UInt64 = 0
    /// Capacity held by pinned files (their full sizes), how many they are, and how much of them is loaded.
    public var pinnedBytes = 0
    public var pinnedFiles = 0
    public var pinnedResidentBytes = 0
    /// Files held in memory for the kernel to read directly (passthrough), and their bytes not already pinned.
    public var heldFiles = 0
    public var heldBytes = 0
    /// The sizes of all held files, pinned ones included.
    public var heldTotalBytes = 0
    /// Memory of evicted blocks that could not be given back, and how many times that happened.
    public var unreturnedBytes = 0
    public var holePunchFailures: UInt64 = 0

    public init() {}
}

extension BlockCache: FigureReporter {
    public func report(into figures: inout FigureValues) {
        let statistics = statistics
        figures[.cachedBytes] = UInt64(statistics.residentBytes)
        figures[.cachedBlocks] = UInt64(statistics.residentBlocks)
        figures[.reservedBytes] = UInt64(statistics.reservedBytes)
        figures[.hits] = statistics.hits
        figures[.misses] = statistics.misses
        figures[.coalescedMisses] = statistics.coalescedMisses
        figures[.evictions] = statistics.evictions
        figures[.evictedBytes] = statistics.evictedBytes
        figures[.pinnedBytes] = UInt64(statistics.pinnedBytes)
        figures[.pinnedFiles] = UInt64(statistics.pinnedFiles)
        figures[.pinnedCachedBytes] = UInt64(statistics.pinnedResidentBytes)
        figures[.unreturnedBytes] = UInt64(max(0, statistics.unreturnedBytes))
        figures[.holePunchFailures] = statistics.holePunchFailures
        figures[.passthroughFiles] = UInt64(statistics.heldFiles)
        figures[.passthroughBytes] = UInt64(statistics.heldTotalBytes)
    }
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
