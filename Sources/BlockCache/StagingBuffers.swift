import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Buffers a load reads into before its bytes go into the blocks' memory files with pwrite(2).
///
/// Why not read straight into the memory file's mapping: every 4 KiB page of a fresh range
/// must then be faulted in (shmem allocates, clears and maps it), which cost two thirds of the
/// daemon's CPU in a cold read; pwrite(2) allocates the file's pages without mapping or
/// clearing them, and a buffer kept from one load to the next is already faulted in. On a
/// 2-core machine filling 1 GiB took 1.1 CPU-s the first way and 0.5-0.6 the second.
///
/// Idle buffers are kept up to `idleLimit` bytes in all, so the pool adds at most that to the
/// daemon's memory. It should hold what the prefetch lanes stage at once, so that a cold read's
/// lanes reuse their buffers: with 8 lanes of 4-block chunks and a 16 MiB limit, one chunk in
/// thirteen of a cold read over the latency-bound testsource mapped and populated a new one.
/// Threads: any; a buffer is one load's at a time.
public final class StagingBuffers: Sendable {
    /// The limit when no prefetcher sets a larger one: the default lanes' chunks (8 of 4 MiB).
    public static let defaultIdleLimit = 32 << 20
    public let idleLimit: Int
    /// Addresses and sizes of idle buffers (raw pointers are not Sendable). Lock order: a leaf; buffers
    /// are mapped and unmapped outside it.
    private let idle = Mutex<[(address: UInt, capacity: Int)]>([])

    public init(idleLimit: Int = StagingBuffers.defaultIdleLimit) { self.idleLimit = idleLimit }

    /// Fills `buffers` (a run of adjacent blocks, in order) with the bytes `read` writes into the
    /// target it is given and returns the count of. A short read fills the buffers' first bytes only.
    ///
    /// `read` may hand the target to work that outlives it (a source read that times out): the
    /// target keeps its memory until that work lets go of it, and the bytes reach the blocks only
    /// here, after `read` has returned. So a late read never writes into a block's range, which a
    /// new load may have claimed and filled meanwhile.
    ///
    /// With `digest`, each block's digest is computed over its bytes in the staging buffer, where they
    /// are still in the CPU's cache, and kept with the block (`BlockBuffer.noteDigest`): a peer server
    /// then sends the block without a pass of its own over memory the load left long ago.
    public func fill(
        _ buffers: some Collection<BlockBuffer>, digest: ((UnsafeRawBufferPointer) -> UInt32)? = nil,
        read: (StagingTarget) throws(Errno) -> Int
    ) throws(Errno) -> Int {
        if buffers.count == 1, let only = buffers.first, !only.isInMemoryFile {
            // A block in anonymous memory of its own: nobody else can claim it, and it is already populated.
            let count = try read(StagingTarget(block: only))
            if let digest { only.noteDigest(digest(UnsafeRawBufferPointer(rebasing: only.memory[..<count]))) }
            return count
        }
        let total = buffers.reduce(0) { $0 + $1.memory.count }
        let target = try StagingTarget(capacity: total, from: self)
        let count = try read(target)
        precondition(count <= total)
        var offset = 0
        for buffer in buffers where offset < count {
            let length = min(buffer.memory.count, count - offset)
            let bytes = UnsafeRawBufferPointer(rebasing: target.memory[offset..<(offset + length)])
            if let digest { buffer.noteDigest(digest(bytes)) }
            try buffer.store(bytes)
            offset += length
        }
        return count
    }

    /// An idle buffer of at least `capacity` bytes, or a new one.
    fileprivate func take(capacity: Int) throws(Errno) -> UnsafeMutableRawBufferPointer {
        let reused: (address: UInt, capacity: Int)? = idle.withLock { idle in
            guard let position = idle.firstIndex(where: { $0.capacity >= capacity }) else { return nil }
            return idle.remove(at: position)
        }
        if let reused, let base = UnsafeMutableRawPointer(bitPattern: reused.address) {
            return UnsafeMutableRawBufferPointer(start: base, count: reused.capacity)
        }
        // MAP_POPULATE: one call allocates every page, far cheaper than a fault per page.
        guard let base = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
            base != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        return UnsafeMutableRawBufferPointer(start: base, count: capacity)
    }

    /// Keeps `buffer` for the next load, or unmaps it when the idle ones already fill `idleLimit`.
    fileprivate func giveBack(_ buffer: UnsafeMutableRawBufferPointer) {
        let kept = idle.withLock { idle in
            guard idle.reduce(0, { $0 + $1.capacity }) + buffer.count <= idleLimit else { return false }
            idle.append((UInt(bitPattern: buffer.baseAddress), buffer.count))
            return true
        }
        if !kept { munmap(buffer.baseAddress, buffer.count) }
    }

    deinit {
        for buffer in idle.withLock({ $0 }) { munmap(UnsafeMutableRawPointer(bitPattern: buffer.address), buffer.capacity) }
    }
}

/// The memory one load reads into: a staging buffer, given back to its pool when the last
/// holder lets go (the load, or a read still running after its load gave up on it), or a
/// block's own anonymous memory, kept alive as long.
public final class StagingTarget: @unchecked Sendable {
    // @unchecked: one read writes the memory, and it is read only after that read has returned.
    public let memory: UnsafeMutableRawBufferPointer
    private let owner: Owner

    private enum Owner {
        case pool(StagingBuffers, whole: UnsafeMutableRawBufferPointer)
        case block(BlockBuffer)
    }

    fileprivate init(capacity: Int, from pool: StagingBuffers) throws(Errno) {
        let whole = try pool.take(capacity: capacity)
        memory = UnsafeMutableRawBufferPointer(rebasing: whole[..<capacity])
        owner = .pool(pool, whole: whole)
    }

    fileprivate init(block: BlockBuffer) {
        memory = block.memory
        owner = .block(block)
    }

    deinit {
        if case .pool(let pool, let whole) = owner { pool.giveBack(whole) }
    }
}
