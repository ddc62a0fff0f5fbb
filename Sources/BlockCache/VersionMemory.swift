import CLinux
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The memory of one file version's cached blocks: a memory file (memfd) as large as the
/// file, sparse, each block at its own offset, and one shared mapping of it all through
/// which the daemon fills and reads blocks. Because the bytes sit in a file at the file's
/// own offsets, the kernel can serve a wholly cached version straight from it (FUSE
/// passthrough), and a peer server can send blocks from it with sendfile(2).
///
/// Memory is given back block by block: a block's range is punched out of the file when
/// the last reference to the block goes. A range belongs to one block at a time, so that
/// no block's bytes can change or vanish while a reader holds it: a load that finds the
/// range's block still alive (evicted, but still being copied to a reader) takes that
/// block back instead of loading again; otherwise it claims the range (a new generation),
/// and a block whose last reference goes after its range was claimed again leaves it alone.
///
/// A range whose punch fails keeps its memory: it is counted as unreturned (`UnreturnedMemory`)
/// until a new load claims the range again, or the memory file closes.
///
/// Lives as long as any block of the version (and any passthrough hold of it): the blocks
/// retain it. Threads: any.
public final class VersionMemory: @unchecked Sendable {
    // @unchecked: `base` is set once; the memory behind it is written only by the load that claimed a range.
    let descriptor: Int32
    let base: UnsafeMutableRawPointer
    private let mappedLength: Int
    private let blockSize: Int
    /// The version whose bytes these are.
    let version: FileVersion
    /// Which blocks are complete, for the next daemon (see `VersionLedger`); nil if it could not be made.
    let ledger: VersionLedger?
    /// The name the file is kept under outside this process (see `MemoryFileRegistry`), if it is.
    let name: String?
    private let custody: MemoryCustody
    /// Each block index's owner (the generation that claimed the range, and the block it became),
    /// and the ranges whose memory could not be given back. Lock order: last; taken under the
    /// cache's lock when a block is dropped there, and never held while another lock is taken or a
    /// block is dropped. Held across a range's hole punch, so that a new claim waits for it.
    private let slots = Mutex(Slots())
    private let unreturned: UnreturnedMemory

    private struct Slots {
        var next: UInt64 = 1
        var byIndex: [Int64: Slot] = [:]
        /// Ranges evicted whose hole punch failed: their bytes, by block index.
        var unreturned: [Int64: Int] = [:]
    }

    private struct Slot {
        var generation: UInt64
        weak var block: Block?
    }

    /// What a load finds for a block's range.
    enum Claim {
        /// The range's block is still alive: its bytes are this version's, ready.
        case live(Block)
        /// The range is the caller's to fill.
        case fresh(BlockBuffer)
    }

    convenience init(version: FileVersion, blockSize: Int, custody: MemoryCustody, unreturned: UnreturnedMemory) throws(Errno) {
        precondition(version.size > 0)
        let fd = try makeMemoryFile(named: "cachefs-block-memory", size: Int(version.size))
        try self.init(
            descriptor: fd, version: version, blockSize: blockSize, ledger: try? VersionLedger(version: version, blockSize: blockSize),
            name: custody.registry?.nameForNewFile(), custody: custody, unreturned: unreturned)
    }

    /// Takes over an inherited memory file (closed on failure) whose ledger checked out.
    convenience init(
        adopting fd: Int32, ledger: VersionLedger, version: FileVersion, blockSize: Int, name: String?, custody: MemoryCustody,
        unreturned: UnreturnedMemory
    ) throws(Errno) {
        var attributes = stat()
        guard fstat(fd, &attributes) == 0, Int64(attributes.st_size) == version.size, version.size > 0 else {
            close(fd)
            throw .invalidArgument
        }
        try self.init(
            descriptor: fd, version: version, blockSize: blockSize, ledger: ledger, name: name, custody: custody, unreturned: unreturned)
    }

    private init(
        descriptor fd: Int32, version: FileVersion, blockSize: Int, ledger: VersionLedger?, name: String?, custody: MemoryCustody,
        unreturned: UnreturnedMemory
    ) throws(Errno) {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = (Int(version.size) + pageSize - 1) / pageSize * pageSize
        guard let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0), mapped != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        descriptor = fd
        base = mapped
        mappedLength = length
        self.blockSize = blockSize
        self.unreturned = unreturned
        self.version = version
        self.ledger = ledger
        self.name = ledger == nil ? nil : name
        self.custody = custody
    }

    deinit {
        munmap(base, mappedLength)
        close(descriptor)
        // Closed and unmapped: the pages whose punch failed are the system's again.
        unreturned.returned(slots.withLock { $0.unreturned.values.reduce(0, +) })
        if let name, !custody.isHandedOver { custody.registry?.didRelease(name: name) }
    }

    /// The range of block `index` (`length` bytes) for the caller's load, or the block still
    /// alive in it. A fresh range has no pages yet: a load writes them with pwrite(2) (see
    /// `StagingBuffers`); writing through the mapping would fault them in one by one.
    func claim(_ index: Int64, length: Int) -> Claim {
        // The range's block, if it lives, held by a strong reference declared outside the lock: if that
        // becomes its last reference, the block's deinit gives its range back, which takes this lock, so
        // it must run after the lock is released (under it, it would trap as a recursive lock).
        var found: Block?
        let generation: UInt64? = slots.withLock { slots in
            found = slots.byIndex[index]?.block
            if let alive = found, alive.count == length { return nil }
            defer { slots.next += 1 }
            slots.byIndex[index] = Slot(generation: slots.next, block: nil)
            // The range's unreturned pages are the new block's now, counted by its reservation.
            if let bytes = slots.unreturned.removeValue(forKey: index) { unreturned.returned(bytes) }
            ledger?.clearResident(index) // the range is about to be written: no longer to be trusted
            return slots.next
        }
        if generation == nil, let alive = found { return .live(alive) }
        found = nil // released here, outside the lock
        guard let generation else { return claim(index, length: length) }
        let start = base + Int(index) * blockSize
        return .fresh(
            BlockBuffer(memory: UnsafeMutableRawBufferPointer(start: start, count: length), backing: .file(self, generation: generation)))
    }

    /// Records the block a claimed range became, so that a later load can take it back while it lives,
    /// and, if the block fills its range, that the range's bytes are complete (for the next daemon).
    func adopt(_ block: Block, generation: UInt64, at memory: UnsafeRawPointer, complete: Bool) {
        let index = Int64((memory - UnsafeRawPointer(base)) / blockSize)
        slots.withLock { slots in
            guard slots.byIndex[index]?.generation == generation else { return }
            slots.byIndex[index]?.block = block
            if complete { ledger?.markResident(index) }
        }
    }

    /// Block `index` of an inherited file whose ledger marks it complete, as a block of this process.
    func adoptResident(_ index: Int64, length: Int) -> Block {
        let generation = slots.withLock { slots in
            defer { slots.next += 1 }
            slots.byIndex[index] = Slot(generation: slots.next, block: nil)
            return slots.next
        }
        let buffer = BlockBuffer(
            memory: UnsafeMutableRawBufferPointer(start: base + Int(index) * blockSize, count: length),
            backing: .file(self, generation: generation))
        return buffer.seal(length: length)
    }

    /// Gives back the range of a block the ledger marks complete but that is not kept (no room):
    /// unmarked first, then punched. Only for an inherited file no kernel reader holds.
    func discard(_ index: Int64, length: Int) {
        ledger?.clearResident(index)
        let offset = Int64(Int(index) * blockSize)
        let failure = slots.withLock { slots in punch(index, at: offset, length: length, in: &slots) }
        if let failure { unreturned.log(failure, bytes: length, at: offset) }
    }

    /// Gives back the pages of inherited blocks the ledger does not mark complete (a load cut short by
    /// a crash; most such ranges are holes already). The cache never counted their memory, so a punch
    /// that fails is told, not counted. Only for an inherited file no kernel reader holds.
    func discardUnmarked(_ blocks: Range<Int64>) {
        let offset = blocks.lowerBound * Int64(blockSize)
        let length = min(version.size, blocks.upperBound * Int64(blockSize)) - offset
        if let failure = unreturned.punchHole(descriptor, offset, length) {
            unreturned.log(failure, bytes: Int(length), at: offset, counted: false)
        }
    }

    /// Gives a block's range back to the system, unless it has been claimed again since.
    func release(_ memory: UnsafeMutableRawBufferPointer, generation: UInt64) {
        let offset = memory.baseAddress! - base
        let index = Int64(offset / blockSize)
        // Handed to another daemon: the range may be its block now, which this process must not touch.
        guard !custody.isHandedOver else { return }
        let failure: Errno? = slots.withLock { slots in
            guard slots.byIndex[index]?.generation == generation else { return nil }
            slots.byIndex[index] = nil
            ledger?.clearResident(index) // unmarked before the bytes go
            // Under the lock: a new claim of this range waits until the punch is done.
            return punch(index, at: Int64(offset), length: memory.count, in: &slots)
        }
        if let failure { unreturned.log(failure, bytes: memory.count, at: Int64(offset)) } // outside the lock
    }

    /// Punches block `index`'s range out of the memory file, with `slots` locked; if that fails, the
    /// range's memory stays in use and is counted as unreturned. Returns the failure, for the caller to
    /// log once the lock is released.
    private func punch(_ index: Int64, at offset: Int64, length: Int, in slots: inout Slots) -> Errno? {
        guard let error = unreturned.punchHole(descriptor, offset, Int64(length)) else { return nil }
        slots.unreturned[index] = length
        unreturned.kept(length)
        return error
    }

    /// Bytes of the file that hold memory now (for tests and diagnostics).
    var allocatedBytes: Int {
        var attributes = stat()
        guard fstat(descriptor, &attributes) == 0 else { return 0 }
        return Int(attributes.st_blocks) * 512
    }
}

/// Memory of evicted blocks that could not be given back to the system: a hole punch that failed
/// leaves the range's pages in its memory file. They still take memory, so the cache counts them
/// against its capacity (`BlockCache.usableCapacity`) and reports them, until a load claims the
/// range again or the memory file closes. One per cache, shared by its memory files.
final class UnreturnedMemory: Sendable {
    private let unreturnedBytes = Atomic<Int>(0)
    private let punchFailures = Atomic<UInt64>(0)
    private let logger: Logger
    /// fallocate(PUNCH_HOLE) of a range of a memory file; nil, or the reason it failed. Tests put a failing one here.
    let punchHole: @Sendable (_ descriptor: Int32, _ offset: Int64, _ length: Int64) -> Errno?

    init(logger: Logger, punchHole: @escaping @Sendable (Int32, Int64, Int64) -> Errno? = UnreturnedMemory.punch) {
        self.logger = logger
        self.punchHole = punchHole
    }

    @Sendable static func punch(_ descriptor: Int32, offset: Int64, length: Int64) -> Errno? {
        cachefs_punch_hole(descriptor, off_t(offset), off_t(length)) == 0 ? nil : Errno(rawValue: errno)
    }

    var bytes: Int { unreturnedBytes.load(ordering: .relaxed) }
    var failures: UInt64 { punchFailures.load(ordering: .relaxed) }

    /// A range's punch failed: its bytes stay in use.
    func kept(_ bytes: Int) {
        unreturnedBytes.add(bytes, ordering: .relaxed)
        punchFailures.add(1, ordering: .relaxed)
    }

    /// Bytes counted as kept are in use again by a new block, or back with the system.
    func returned(_ bytes: Int) {
        guard bytes > 0 else { return }
        unreturnedBytes.subtract(bytes, ordering: .relaxed)
    }

    /// - Parameter counted: whether the memory is counted as unreturned (a block's), or was never
    ///   counted (pages a load cut short may have left).
    func log(_ error: Errno, bytes: Int, at offset: Int64, counted: Bool = true) {
        logger.error(
            counted
                ? "an evicted block's memory could not be given back; it stays counted against the capacity"
                : "the pages of an inherited load cut short could not be given back",
            metadata: ["error": "\(error)", "bytes": "\(bytes)", "offset": "\(offset)", "unreturned bytes": "\(self.bytes)"])
    }
}

/// Who may change the bytes of this cache's memory files: this process, until it hands them to
/// another daemon, after which it must neither punch nor unmark anything (the successor's blocks
/// live in those ranges now), and where the files are also kept outside the process.
final class MemoryCustody: Sendable {
    let registry: (any MemoryFileRegistry)?
    private let handedOver = Atomic<Bool>(false)

    init(registry: (any MemoryFileRegistry)?) { self.registry = registry }

    var isHandedOver: Bool { handedOver.load(ordering: .acquiring) }

    func setHandedOver(_ value: Bool) { handedOver.store(value, ordering: .releasing) }
}

/// A new memory file (memfd, close-on-exec) of `size` bytes, sparse: what a daemon keeps its cache and
/// its state in, and can hand to its successor. `name` is what /proc/PID/fd shows it as.
public func makeMemoryFile(named name: String, size: Int) throws(Errno) -> Int32 {
    let fd = cachefs_memfd_create(name, UInt32(CACHEFS_MFD_CLOEXEC))
    guard fd >= 0 else { throw Errno(rawValue: errno) }
    guard ftruncate(fd, off_t(size)) == 0 else {
        let error = Errno(rawValue: errno)
        close(fd)
        throw error
    }
    return fd
}

/// Keeps each memory file and its ledger somewhere that outlives the daemon (systemd's file
/// descriptor store), so that a daemon started after a crash finds the cache still in memory.
public protocol MemoryFileRegistry: Sendable {
    /// A name for a new memory file, unique across daemons (the store's FDNAME).
    func nameForNewFile() -> String
    /// A version's memory file and ledger exist: keep them under `name`.
    func didCreate(name: String, memory: Int32, ledger: Int32)
    /// They are gone: forget what is kept under `name`.
    func didRelease(name: String)
}
