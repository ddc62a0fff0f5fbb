/// A wholly cached file version held in memory for the kernel to read directly: while
/// any hold on it lives, none of its blocks is evicted or punched out of its memory
/// file, so a reader the kernel serves from that file never sees a hole.
public final class VersionHold: Sendable {
    public let version: FileVersion
    public let memory: VersionMemory

    init(version: FileVersion, memory: VersionMemory) {
        self.version = version
        self.memory = memory
    }

    /// The memory file holding the version's bytes at the file's own offsets.
    public var descriptor: Int32 { memory.descriptor }
}

// Holding: a version the kernel reads straight from its memory file (FUSE passthrough)
// must stay whole until the last reader is gone. A hold is granted only for a version
// that is wholly resident in its memory file; its bytes, already counted, stay counted
// (as held bytes, or as pinned if it is pinned too) until the last hold is released.
extension BlockCache {
    /// Whether every block of `version` is in memory now (a moment later one may be evicted).
    public func isWhollyResident(_ version: FileVersion) -> Bool {
        state.withLock { state in
            (0..<blockCount(version, blockSize: blockSize)).allSatisfy {
                state.lookup(BlockKey(file: version, index: $0), touching: false) != nil
            }
        }
    }

    /// Holds `version` if every one of its blocks is in memory, in its memory file; nil otherwise.
    public func hold(_ version: FileVersion) -> VersionHold? {
        state.withLock { state -> VersionHold? in
            let count = blockCount(version, blockSize: blockSize)
            guard version.size >= Int64(blockSize) else { return nil }
            var memory: VersionMemory?
            for index in 0..<count {
                guard let block = state.lookup(BlockKey(file: version, index: index), touching: false),
                    case .file(let owner, _) = block.backing, memory == nil || memory === owner
                else { return nil }
                memory = owner
                block.markUsed() // a reader opened it; the kernel's reads from here on are not seen
            }
            guard let memory else { return nil }
            if let holds = state.holds[version] {
                state.holds[version] = holds + 1
            } else {
                state.holds[version] = 1
                if !state.isPinned(version) {
                    state.fix(version, blockSize: blockSize)
                    state.heldBytes += Int(version.size)
                }
            }
            memory.ledger?.addHolds(1) // before the kernel is handed the file: never punched while it may read it
            return VersionHold(version: version, memory: memory)
        }
    }

    /// Ends a hold; after the last one the version's blocks are evictable again (unless pinned).
    public func release(_ hold: VersionHold) {
        hold.memory.ledger?.addHolds(-1) // the kernel has let go of the file (its backing id is closed)
        state.withLock { state in
            guard let holds = state.holds[hold.version] else { preconditionFailure("a hold released twice") }
            guard holds == 1 else {
                state.holds[hold.version] = holds - 1
                return
            }
            state.holds[hold.version] = nil
            guard !state.isPinned(hold.version) else { return }
            state.heldBytes -= Int(hold.version.size)
            _ = state.unfix(hold.version, keepBlocks: true)
        }
    }
}
