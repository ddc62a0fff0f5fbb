#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Synchronization
import SystemPackage

/// Block-sized mappings, mapped and populated ahead of need on a background queue.
///
/// A cold sequential read loads its blocks one after another on a prefetch lane. Mapping
/// and populating each fresh 1 MiB block (256 zeroed, charged pages) took 0.4-0.9 ms of
/// a 3.3 ms block cycle over an rclone mount, on the lane's critical path (strace of the
/// lane, Docs/BENCHMARKS.md, 3). Preparing the next mappings on another core takes that off it.
///
/// At most `depth` mappings wait here, which is memory held beyond the cache's capacity:
/// `depth` is chosen so that they total `preparedBytes` at most (two 1 MiB blocks; 8 MiB
/// measured no faster), and is 0 (nothing is prepared) for larger blocks. A `take` that
/// finds none ready maps one itself.
///
/// Threads: `take` from any loading thread; refills run on this object's serial queue,
/// one at a time, started by the `take` that finds fewer than `depth` ready.
final class PreparedMappings: Sendable {
    static let preparedBytes = 2 << 20

    let size: Int
    let depth: Int
    private let ready = Mutex<[UInt]>([])
    private let refilling = Atomic<Bool>(false)
    private let queue = DispatchQueue(label: "cachefs.prepared-block-memory")

    init(size: Int) {
        precondition(size > 0)
        self.size = size
        depth = Self.preparedBytes / size
    }

    /// A populated mapping of `size` bytes, owned by the caller from now on.
    func take() throws(Errno) -> UnsafeMutableRawPointer {
        let prepared = ready.withLock { $0.popLast() }
        refill()
        if let prepared { return UnsafeMutableRawPointer(bitPattern: prepared)! }
        return try BlockBuffer.map(size)
    }

    /// How many mappings are ready now (for tests).
    var readyCount: Int { ready.withLock { $0.count } }

    private func refill() {
        guard depth > 0, !refilling.exchange(true, ordering: .acquiring) else { return }
        queue.async { [self] in
            while ready.withLock({ $0.count }) < depth, let mapping = try? BlockBuffer.map(size) {
                ready.withLock { $0.append(UInt(bitPattern: mapping)) }
            }
            refilling.store(false, ordering: .releasing)
        }
    }

    deinit {
        for address in ready.withLock({ $0 }) { munmap(UnsafeMutableRawPointer(bitPattern: address), size) }
    }
}
