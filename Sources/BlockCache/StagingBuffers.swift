#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import SystemPackage

/// Buffers a load reads into before its bytes go into the blocks' memory files with pwrite(2).
///
/// Why not read straight into the memory file's mapping: every 4 KiB page of a fresh range
/// must then be faulted in (shmem allocates, clears and maps it), which cost two thirds of the
/// daemon's CPU in a cold read; pwrite(2) allocates the file's pages without mapping or
/// clearing them, and a buffer kept from one load to the next is already faulted in. On a
/// 2-core machine filling 1 GiB took 1.1 CPU-s the first way and 0.5-0.6 the second.
///
/// Idle buffers are kept up to `idleLimit` bytes in all (one run of a few lanes), so the pool
/// adds at most that to the daemon's memory. Threads: any; a buffer is one caller's at a time.
public final class StagingBuffers: Sendable {
    public static let idleLimit = 16 << 20
    /// Addresses and sizes of idle buffers (raw pointers are not Sendable).
    private let idle = Mutex<[(address: UInt, capacity: Int)]>([])

    public init() {}

    /// Fills `buffers` (a run of adjacent blocks, in order) with the bytes `read` writes into the
    /// memory it is given and returns the count of: through a staging buffer when a buffer lives
    /// in a memory file, else straight into the buffer's own (already populated) memory.
    /// A short read fills the buffers' first bytes only.
    public func fill(_ buffers: some Collection<BlockBuffer>, read: (UnsafeMutableRawBufferPointer) throws(Errno) -> Int) throws(Errno) -> Int {
        let total = buffers.reduce(0) { $0 + $1.memory.count }
        if buffers.count == 1, let only = buffers.first, !only.isInMemoryFile {
            return try read(only.memory)
        }
        return try withBuffer(capacity: total) { (staging) throws(Errno) in
            let count = try read(UnsafeMutableRawBufferPointer(rebasing: staging[..<total]))
            var offset = 0
            for buffer in buffers where offset < count {
                let length = min(buffer.memory.count, count - offset)
                try buffer.store(UnsafeRawBufferPointer(rebasing: staging[offset..<(offset + length)]))
                offset += length
            }
            return count
        }
    }

    private func withBuffer<R>(capacity: Int, _ body: (UnsafeMutableRawBufferPointer) throws(Errno) -> R) throws(Errno) -> R {
        let reused: (address: UInt, capacity: Int)? = idle.withLock { idle in
            guard let position = idle.firstIndex(where: { $0.capacity >= capacity }) else { return nil }
            return idle.remove(at: position)
        }
        let buffer: UnsafeMutableRawBufferPointer
        if let reused, let base = UnsafeMutableRawPointer(bitPattern: reused.address) {
            buffer = UnsafeMutableRawBufferPointer(start: base, count: reused.capacity)
        } else {
            // MAP_POPULATE: one call allocates every page, far cheaper than a fault per page.
            guard let base = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
                  base != MAP_FAILED
            else { throw Errno(rawValue: errno) }
            buffer = UnsafeMutableRawBufferPointer(start: base, count: capacity)
        }
        defer {
            let kept = idle.withLock { idle in
                guard idle.reduce(0, { $0 + $1.capacity }) + buffer.count <= Self.idleLimit else { return false }
                idle.append((UInt(bitPattern: buffer.baseAddress), buffer.count))
                return true
            }
            if !kept { munmap(buffer.baseAddress, buffer.count) }
        }
        return try body(buffer)
    }

    deinit {
        for buffer in idle.withLock({ $0 }) { munmap(UnsafeMutableRawPointer(bitPattern: buffer.address), buffer.capacity) }
    }
}
