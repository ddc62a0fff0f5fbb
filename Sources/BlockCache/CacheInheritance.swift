import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A version's memory file and its ledger, as one daemon hands them to the next.
public struct MemoryFilePair: Sendable {
    public var memory: Int32
    public var ledger: Int32
    /// The name they are kept under outside the process (systemd's store), if they are.
    public var name: String?

    public init(memory: Int32, ledger: Int32, name: String?) {
        self.memory = memory
        self.ledger = ledger
        self.name = name
    }
}

/// The memory files a cache has handed over, kept open (by their owners) for as long as this
/// value lives, so that their descriptors can be sent.
public struct SurrenderedMemory: @unchecked Sendable {
    // @unchecked: the memories are only kept alive here, never used.
    private let memories: [VersionMemory]

    init(_ memories: [VersionMemory]) { self.memories = memories }

    public var files: [MemoryFilePair] {
        memories.compactMap { memory in
            memory.ledger.map { MemoryFilePair(memory: memory.descriptor, ledger: $0.descriptor, name: memory.name) }
        }
    }
}

/// What a cache took of the memory files it inherited.
public struct AdoptionReport: Sendable, Equatable {
    public var files = 0
    public var blocks = 0
    public var bytes = 0
    /// Files the kernel may still be reading (passthrough), adopted whole and held.
    public var heldFiles = 0
    /// Files not used, each with why: a torn or altered ledger, another format or block size.
    public var dropped: [String] = []
    /// Complete blocks let go because the capacity had no room for them.
    public var blocksOverCapacity = 0

    public init() {}
}

// Inheritance: a daemon hands its cache to the next (a hand-over, or a restart after a crash with
// the files kept by systemd). Only what a ledger marks complete is taken; a ledger that does not
// check out drops its file whole. A file with passthrough holds is taken whole and stays held,
// since the kernel may be reading it; every other file's blocks are taken while the capacity has
// room, and the rest is given back.
extension BlockCache {
    /// Stops loads (waiting until `deadline` for those running), then gives up the memory files: from
    /// now on this cache never writes, punches or unmarks a byte of them, since the next daemon's
    /// blocks live there. Nil if loads did not stop in time (nothing changed then).
    public func surrender(waitingUntil deadline: ContinuousClock.Instant) -> SurrenderedMemory? {
        guard loads.close(waitingUntil: deadline) else {
            loads.open()
            return nil
        }
        custody.setHandedOver(true)
        return SurrenderedMemory(state.withLock { $0.memories.values.compactMap(\.memory) })
    }

    /// The hand-over did not happen: the memory files are this cache's again, and loads resume.
    public func resumeCustody() {
        custody.setHandedOver(false)
        loads.open()
    }

    /// Takes the inherited memory files (their descriptors are the cache's from now on, or closed).
    /// Call before the cache serves anything.
    public func adopt(_ files: [MemoryFilePair]) -> AdoptionReport {
        var report = AdoptionReport()
        var adopted: [VersionMemory] = []
        for file in files {
            let ledger: VersionLedger, version: FileVersion
            do {
                (ledger, version) = try VersionLedger.adopt(file.ledger, blockSize: blockSize)
            } catch {
                close(file.memory)
                report.dropped.append("\(file.name ?? "a memory file"): \(error)")
                continue
            }
            guard !adopted.contains(where: { $0.version == version }), state.withLock({ $0.memories[version]?.memory == nil }) else {
                close(file.memory)
                report.dropped.append("\(file.name ?? "a memory file"): a second file of \(version)")
                continue
            }
            let name = file.name ?? custody.registry?.nameForNewFile()
            do {
                adopted.append(
                    try VersionMemory(
                        adopting: file.memory, ledger: ledger, version: version, blockSize: blockSize,
                        name: name, custody: custody, unreturned: unreturned))
            } catch {
                report.dropped.append("\(file.name ?? "a memory file"): its size is not its version's (\(version))")
                continue
            }
            if file.name == nil, let name, let registry = custody.registry {
                registry.didCreate(name: name, memory: adopted.last!.descriptor, ledger: ledger.descriptor)
            }
        }
        // Held files first: they are taken whatever the capacity.
        let ordered = adopted.filter { $0.ledger!.holds > 0 } + adopted.filter { $0.ledger!.holds <= 0 }
        var charged = state.withLock { $0.residentBytes + $0.reservedBytes + $0.pinnedBytes + $0.heldBytes }
        for memory in ordered {
            let ledger = memory.ledger!, version = memory.version
            let holds = Int(max(0, ledger.holds))
            var blocks: [Int64: Block] = [:]
            var unmarked: [Range<Int64>] = []
            for index in 0..<blockCount(version, blockSize: blockSize) {
                let length = Int(min(Int64(blockSize), version.size - index * Int64(blockSize)))
                if !ledger.isResident(index) {
                    if let last = unmarked.last, last.upperBound == index {
                        unmarked[unmarked.count - 1] = last.lowerBound..<(index + 1)
                    } else {
                        unmarked.append(index..<(index + 1))
                    }
                } else if holds > 0 || charged + length <= usableCapacity {
                    blocks[index] = memory.adoptResident(index, length: length)
                    if holds == 0 { charged += length }
                } else {
                    memory.discard(index, length: length)
                    report.blocksOverCapacity += 1
                }
            }
            if holds > 0 {
                charged += Int(version.size)
            } else {
                // Pages of loads cut short (a crash mid-load) are given back; a held file is never punched.
                for range in unmarked { memory.discardUnmarked(range) }
            }
            state.withLock { state in
                state.memories[version] = WeakMemory(memory: memory)
                if holds > 0 {
                    state.holds[version] = holds
                    state.inheritedHolds[version] = holds
                    state.heldBytes += Int(version.size)
                    state.fixed[version] = blocks
                    state.fixedResidentBytes += blocks.values.reduce(0) { $0 + $1.count }
                } else {
                    for (index, block) in blocks.sorted(by: { $0.key < $1.key }) {
                        state.resident.insert(BlockKey(file: version, index: index), block)
                        state.residentBytes += block.count
                    }
                }
            }
            report.files += 1
            report.blocks += blocks.count
            report.bytes += blocks.values.reduce(0) { $0 + $1.count }
            if holds > 0 { report.heldFiles += 1 }
        }
        return report
    }

    /// One of the passthrough holds an inherited file came with, for the open the kernel still has
    /// of it (nil if it came with none left): released like any hold, when that open is released.
    public func claimInheritedHold(_ version: FileVersion) -> VersionHold? {
        state.withLock { state -> VersionHold? in
            guard let left = state.inheritedHolds[version], left > 0, let memory = state.memories[version]?.memory else { return nil }
            state.inheritedHolds[version] = left > 1 ? left - 1 : nil
            return VersionHold(version: version, memory: memory)
        }
    }

    /// Inherited holds no open claimed: the kernel may hold the file open through them (an open
    /// whose record was torn), so their files stay held for the daemon's life.
    public var unclaimedInheritedHolds: Int {
        state.withLock { $0.inheritedHolds.values.reduce(0, +) }
    }
}
