import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a block's bytes live: a range of its file version's memory file, or (for a
/// file smaller than one block) an anonymous mapping of its own.
enum BlockMemory: Sendable {
    case file(VersionMemory, generation: UInt64)
    case anonymous
}

/// Memory for one block being filled by a load, until `seal(length:)` hands it to an
/// immutable `Block`.
///
/// A reference type so that a load that outlives its caller (a source read that timed
/// out but is still running on another thread) keeps the memory it writes to valid
/// until it returns; an unsealed buffer gives its memory back with its last owner.
public final class BlockBuffer: @unchecked Sendable {
    // @unchecked: one loader writes the memory; it is read only after the loader has finished and the block is sealed.
    public let memory: UnsafeMutableRawBufferPointer
    let backing: BlockMemory
    private let sealed = Atomic<Bool>(false)
    /// A digest of the bytes the load already has (see `noteDigest`), in `Block.memoizedDigest`'s form.
    private let knownDigest = Atomic<UInt64>(0)

    init(memory: UnsafeMutableRawBufferPointer, backing: BlockMemory) {
        self.memory = memory
        self.backing = backing
    }

    /// A fresh anonymous mapping of `capacity` bytes, populated at once: a load writes every
    /// page anyway, and one mmap that allocates the pages costs far less than a fault per page.
    static func anonymous(_ capacity: Int) throws(Errno) -> BlockBuffer {
        precondition(capacity > 0)
        guard let base = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
            base != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        return BlockBuffer(memory: UnsafeMutableRawBufferPointer(start: base, count: capacity), backing: .anonymous)
    }

    /// Whether the memory is a range of a version's memory file (see `StagingBuffers`).
    var isInMemoryFile: Bool {
        if case .file = backing { return true }
        return false
    }

    /// The memory file and offset of the buffer's range, for a load that writes it without the
    /// mapping (a peer's answer spliced from the socket); nil for anonymous memory.
    public var fileRange: (descriptor: Int32, offset: Int64)? {
        guard case .file(let version, _) = backing else { return nil }
        return (version.descriptor, Int64(memory.baseAddress! - version.base))
    }

    /// Records the digest of the bytes the load wrote (a peer's CRC-32C, checked on arrival), which
    /// the block then answers `digest(_:)` with instead of computing it again.
    public func noteDigest(_ value: UInt32) {
        knownDigest.store(1 << 32 | UInt64(value), ordering: .relaxed)
    }

    /// Writes `bytes` at the start of the buffer: with pwrite(2) into the memory file, which
    /// allocates the range's pages without faulting them into the mapping, or with a copy.
    func store(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        precondition(bytes.count <= memory.count)
        guard case .file(let version, _) = backing else {
            memory.copyMemory(from: bytes)
            return
        }
        do {
            try FileDescriptor(rawValue: version.descriptor).writeAll(toAbsoluteOffset: Int64(memory.baseAddress! - version.base), bytes)
        } catch {
            throw error as? Errno ?? .ioError // swift-system throws only Errno, untyped
        }
    }

    /// Publishes the first `length` bytes as a read-only block, which owns the memory from now on.
    func seal(length: Int) -> Block {
        precondition(length >= 0 && length <= memory.count)
        let wasSealed = sealed.exchange(true, ordering: .acquiringAndReleasing)
        precondition(!wasSealed, "block buffer sealed twice")
        let block = Block(memory: memory, length: length, backing: backing, digest: knownDigest.load(ordering: .relaxed))
        if case .file(let version, let generation) = backing {
            version.adopt(block, generation: generation, at: memory.baseAddress!, complete: length == memory.count)
        }
        return block
    }

    deinit {
        if !sealed.load(ordering: .acquiring) { Block.release(memory, backing) }
    }
}

/// A loaded block: immutable bytes shared by every reader that holds it.
///
/// A reader keeps the block alive while the kernel copies from it, so a block evicted
/// in the middle of a reply gives its memory back only when the last reader lets go:
/// an anonymous block is unmapped, a block in a version's memory file has its range
/// punched out of the file (unless a newer block of the same range took it meanwhile).
public final class Block: @unchecked Sendable {
    // @unchecked: the memory is written only before the block is sealed, and read-only after.
    private let memory: UnsafeMutableRawBufferPointer
    let backing: BlockMemory
    /// Number of valid bytes; shorter than the block size only for a file's last block.
    public let count: Int
    /// A 32-bit digest of the bytes once computed (bit 32 set), else 0; see `digest(_:)`.
    private let memoizedDigest: Atomic<UInt64>
    /// When the block was loaded or last looked up by a user of the cache (seconds since the epoch); see Residency.swift.
    let lastUsed = Atomic<Int64>(Int64(time(nil)))

    fileprivate init(memory: UnsafeMutableRawBufferPointer, length: Int, backing: BlockMemory, digest: UInt64) {
        self.memory = memory
        self.backing = backing
        count = length
        memoizedDigest = Atomic(digest)
    }

    /// The valid bytes. Valid only while `self` is alive: use inside `withExtendedLifetime`.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: memory.baseAddress, count: count) }

    /// The memory file holding the block and the block's offset in it, for sending it
    /// with sendfile(2); nil for a block in anonymous memory. Valid while `self` is alive.
    public var fileRange: (descriptor: Int32, offset: Int64)? {
        guard case .file(let version, _) = backing else { return nil }
        return (version.descriptor, Int64(memory.baseAddress! - version.base))
    }

    /// A digest of the bytes (a peer server's checksum), computed by the first
    /// caller and remembered: the bytes never change once sealed. Concurrent first
    /// callers may both compute it; `compute` must be a pure function of the bytes.
    public func digest(_ compute: (UnsafeRawBufferPointer) -> UInt32) -> UInt32 {
        let known = memoizedDigest.load(ordering: .relaxed)
        if known != 0 { return UInt32(truncatingIfNeeded: known) }
        let value = compute(bytes)
        memoizedDigest.store(1 << 32 | UInt64(value), ordering: .relaxed)
        return value
    }

    deinit { Self.release(memory, backing) }

    static func release(_ memory: UnsafeMutableRawBufferPointer, _ backing: BlockMemory) {
        switch backing {
        case .anonymous: munmap(memory.baseAddress, memory.count)
        case .file(let version, let generation): version.release(memory, generation: generation)
        }
    }
}

/// What a lookup that must not do I/O could tell about a block.
public enum ResidencyAnswer: Sendable {
    case resident(Block)
    case absent
    /// Telling needs I/O (such as checking the file's version at the source).
    case undetermined
}
