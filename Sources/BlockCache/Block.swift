#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization
import SystemPackage

/// Memory for one block being filled by a load. It owns an anonymous mapping
/// until `seal(length:)` hands that mapping to an immutable `Block`.
///
/// Blocks are mapped rather than malloc'ed so that evicting a block returns its
/// memory to the system at once; malloc keeps freed large chunks in its arenas,
/// which lets the daemon's RSS drift above the cache capacity.
///
/// A reference type so that a load that outlives its caller (a source read that
/// timed out but is still running on another thread) keeps the memory it writes
/// to mapped until it returns; an unsealed buffer is unmapped by its last owner.
public final class BlockBuffer: @unchecked Sendable {
    // @unchecked: one loader writes the memory; it is read only after the loader has finished and the block is sealed.
    public let memory: UnsafeMutableRawBufferPointer
    private let sealed = Atomic<Bool>(false)

    convenience init(capacity: Int) throws(Errno) {
        self.init(mapping: try Self.map(capacity), capacity: capacity)
    }

    /// Takes ownership of a mapping of exactly `capacity` bytes made by `map(_:)`.
    init(mapping: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity > 0)
        memory = UnsafeMutableRawBufferPointer(start: mapping, count: capacity)
    }

    /// A fresh anonymous mapping, populated at once: a load writes every page anyway,
    /// and one mmap that allocates 256 pages costs far less than 256 separate page faults.
    static func map(_ capacity: Int) throws(Errno) -> UnsafeMutableRawPointer {
        guard let base = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
              base != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        return base
    }

    /// Publishes the first `length` bytes as a read-only block, which owns the mapping from now on.
    func seal(length: Int) -> Block {
        precondition(length >= 0 && length <= memory.count)
        let wasSealed = sealed.exchange(true, ordering: .acquiringAndReleasing)
        precondition(!wasSealed, "block buffer sealed twice")
        return Block(mapping: memory, length: length)
    }

    deinit {
        if !sealed.load(ordering: .acquiring) { munmap(memory.baseAddress, memory.count) }
    }
}

/// A loaded block: immutable bytes shared by every reader that holds it.
///
/// A reader keeps the block alive while the kernel copies from it, so a block
/// evicted in the middle of a reply is unmapped only when the last reader lets go.
public final class Block: @unchecked Sendable {
    // @unchecked: the memory is written only before the block is sealed, and read-only after.
    private let base: UnsafeMutableRawPointer
    private let mappedLength: Int
    /// Number of valid bytes; shorter than the block size only for a file's last block.
    public let count: Int
    /// A 32-bit digest of the bytes once computed (bit 32 set), else 0; see `digest(_:)`.
    private let memoizedDigest = Atomic<UInt64>(0)

    fileprivate init(mapping: UnsafeMutableRawBufferPointer, length: Int) {
        base = mapping.baseAddress!
        mappedLength = mapping.count
        count = length
    }

    /// The valid bytes. Valid only while `self` is alive: use inside `withExtendedLifetime`.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

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

    deinit { munmap(base, mappedLength) }
}

/// What a lookup that must not do I/O could tell about a block.
public enum ResidencyAnswer: Sendable {
    case resident(Block)
    case absent
    /// Telling needs I/O (such as checking the file's version at the source).
    case undetermined
}
