import BlockCache
import Synchronization
import SystemPackage

/// An open file or directory as the kernel holds it: the handle (`fh`) it sends with each request.
///
/// A handle is a slot of a table and that slot's generation (`generation << 32 | slot`), never a
/// pointer, so that a daemon taking over from another can answer the handles the kernel already
/// holds, and a request the kernel sends again after a crash (a RELEASE answered by nobody) can
/// never reach an open that reused its slot since.
public struct OpenHandleRecord: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case daemonServedFile = 1, passthroughFile = 2, directory = 3
    }

    public var handle: UInt64
    public var kind: Kind
    /// The node the kernel opened, as it was known then: its ID, type bits, identity and path below the source root.
    public var node: UInt64
    public var nodeType: UInt32
    public var identity: FileIdentity
    public var path: [UInt8]
    /// The version the file was opened at; nil for a directory.
    public var version: FileVersion?
    /// The kernel's backing id of a passthrough open; 0 otherwise.
    public var backingID: Int32

    public init(
        handle: UInt64, kind: Kind, node: UInt64, nodeType: UInt32, identity: FileIdentity, path: [UInt8],
        version: FileVersion?, backingID: Int32
    ) {
        self.handle = handle
        self.kind = kind
        self.node = node
        self.nodeType = nodeType
        self.identity = identity
        self.path = path
        self.version = version
        self.backingID = backingID
    }

    public var slot: Int { Self.slot(of: handle) }
    public var generation: UInt32 { Self.generation(of: handle) }

    /// The handle of a slot at a generation, and its two parts back: the one place the layout is written.
    public static func handle(slot: Int, generation: UInt32) -> UInt64 { UInt64(generation) << 32 | UInt64(slot) }
    public static func slot(of handle: UInt64) -> Int { Int(handle & 0xFFFF_FFFF) }
    public static func generation(of handle: UInt64) -> UInt32 { UInt32(handle >> 32) }
}

/// Where the mirror records what the kernel holds, as it changes, for the daemon that takes over
/// after this one (a hand-over, or a restart after a crash): open handles, and how far node IDs
/// have gone. Each call is a few stores into shared memory; a handle is recorded before the kernel
/// is told of it and cleared after the kernel released it.
public protocol KernelStateJournal: Sendable {
    /// How many handles can be open at once (slots of the journal).
    var handleCapacity: Int { get }
    /// Records an open handle; false if it cannot be (its path too long for a slot): the open then fails.
    func recordHandle(_ record: OpenHandleRecord) -> Bool
    func clearHandle(slot: Int, generation: UInt32)
    /// Node IDs up to `id` may be handed to the kernel: a successor must start above it.
    func reserveNodeIDs(through id: UInt64)
    /// The versions pinned now (after each pin or unpin).
    func recordPins(_ versions: [FileVersion])
}

/// What a handle opens.
enum HandleTarget: Sendable {
    case file(OpenFile)
    case directory(OpenDirectory)
    /// An inherited directory handle whose directory could not be opened again: listing it is ESTALE.
    case unavailableDirectory
}

/// The table of open handles. Threads: any; one lock guards the table, held for lookups and
/// slot changes only (the journal is written outside it, the slot being the caller's then).
final class OpenHandles: Sendable {
    private struct Slot {
        var generation: UInt32 = 0
        var target: HandleTarget?
        /// Taken by an insert whose journal record is being written, or by a release clearing it.
        var busy = false
    }

    private struct Table {
        var slots: [Slot] = []
        var free: [Int] = []
    }

    /// The slots; guards only the table. Lock order: after a node's `opens` (admit/release); a leaf
    /// (the journal's record of a handle is written between two holds of it, not under it).
    private let table = Mutex(Table())
    let journal: (any KernelStateJournal)?
    private let capacity: Int

    init(journal: (any KernelStateJournal)?) {
        self.journal = journal
        capacity = min(journal?.handleCapacity ?? Int(Int32.max), Int(Int32.max))
    }

    /// Gives `target` a handle, recording it in the journal (made by `record` from the handle) before returning it.
    func insert(_ target: HandleTarget, record: (UInt64) -> OpenHandleRecord) throws(Errno) -> UInt64 {
        let handle: UInt64 = try table.withLock { (table) throws(Errno) -> UInt64 in
            let slot: Int
            if let reused = table.free.popLast() {
                slot = reused
            } else {
                guard table.slots.count < capacity else { throw .tooManyOpenFilesInSystem }
                slot = table.slots.count
                table.slots.append(Slot())
            }
            table.slots[slot].generation &+= 1
            if table.slots[slot].generation == 0 { table.slots[slot].generation = 1 }
            table.slots[slot].target = target
            table.slots[slot].busy = true
            return OpenHandleRecord.handle(slot: slot, generation: table.slots[slot].generation)
        }
        let recorded = journal?.recordHandle(record(handle)) ?? true
        table.withLock { table in
            let slot = OpenHandleRecord.slot(of: handle)
            table.slots[slot].busy = false
            if !recorded {
                table.slots[slot].target = nil
                table.free.append(slot)
            }
        }
        guard recorded else { throw .fileNameTooLong }
        return handle
    }

    func target(_ handle: UInt64) throws(Errno) -> HandleTarget {
        let slot = OpenHandleRecord.slot(of: handle), generation = OpenHandleRecord.generation(of: handle)
        return try table.withLock { (table) throws(Errno) -> HandleTarget in
            guard slot < table.slots.count, table.slots[slot].generation == generation, let target = table.slots[slot].target else {
                throw .badFileDescriptor
            }
            return target
        }
    }

    /// Ends a handle: its target is returned for the caller to release, the journal record cleared, and the slot freed.
    func remove(_ handle: UInt64) -> HandleTarget? {
        let slot = OpenHandleRecord.slot(of: handle), generation = OpenHandleRecord.generation(of: handle)
        let target: HandleTarget? = table.withLock { table in
            guard slot < table.slots.count, table.slots[slot].generation == generation, !table.slots[slot].busy,
                let target = table.slots[slot].target
            else { return nil }
            table.slots[slot].target = nil
            table.slots[slot].busy = true
            return target
        }
        guard target != nil else { return nil } // unknown: a RELEASE sent again after a crash, already done
        journal?.clearHandle(slot: slot, generation: generation)
        table.withLock { table in
            table.slots[slot].busy = false
            table.free.append(slot)
        }
        return target
    }

    /// Puts inherited handles back where they were, with the generations of the slots the journal
    /// has seen used (so a new handle never repeats one the kernel may still send).
    func restore(_ restored: [(handle: UInt64, target: HandleTarget)], generations: [Int: UInt32]) {
        table.withLock { table in
            let highest = max(restored.map { OpenHandleRecord.slot(of: $0.handle) }.max() ?? -1, generations.keys.max() ?? -1)
            if highest >= table.slots.count { table.slots += Array(repeating: Slot(), count: highest + 1 - table.slots.count) }
            for (slot, generation) in generations { table.slots[slot].generation = max(table.slots[slot].generation, generation) }
            for (handle, target) in restored {
                let slot = OpenHandleRecord.slot(of: handle)
                table.slots[slot].generation = OpenHandleRecord.generation(of: handle)
                table.slots[slot].target = target
            }
            table.free = table.slots.indices.filter { table.slots[$0].target == nil }.reversed()
        }
    }

    /// Every open handle and its target (for a hand-over's checks and diagnostics).
    var all: [(handle: UInt64, target: HandleTarget)] {
        table.withLock { table in
            table.slots.indices.compactMap { slot in
                table.slots[slot].target.map { (OpenHandleRecord.handle(slot: slot, generation: table.slots[slot].generation), $0) }
            }
        }
    }
}
