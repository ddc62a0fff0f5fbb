import DequeModule
import Dispatch
import Foundation
import Synchronization

/// Loads blocks ahead of sequential readers on a fixed pool of threads.
///
/// The pool is separate from FUSE's workers so that prefetching never takes a
/// thread a reader is waiting for, and fixed so that many sequential readers
/// cannot multiply the load on the source: at most `workers` prefetch loads run at once.
///
/// Work is handed out in chunks of adjacent blocks, each loaded in order by one
/// worker: object-store FUSE clients (rclone, ossfs, s3fs) stream a handle
/// sequentially and stall on out-of-order reads, so parallelism comes from
/// several chunks at once, each read front to back through its own handle.
public final class Prefetcher: Sendable {
    /// Blocks kept loading ahead of a sequential reader.
    public let depth: Int
    /// Adjacent blocks one worker loads in order.
    public let chunkBlocks: Int
    private let queue = Mutex<Deque<Job>>([])
    private let queued = DispatchSemaphore(value: 0)
    private let counters = Counters()

    public init(workers: Int, depth: Int, chunkBlocks: Int = 4) {
        precondition(workers > 0 && depth > 0 && chunkBlocks > 0)
        self.depth = depth
        self.chunkBlocks = chunkBlocks
        for number in 0..<workers {
            let thread = Thread { [self] in work() }
            thread.name = "cachefs-prefetch-\(number)"
            thread.start()
        }
    }

    /// A prefetch stream for one open file of `blockCount` blocks.
    /// - Parameters:
    ///   - isResident: whether a block is already cached or loading (then it is skipped).
    ///   - load: loads the given blocks, ascending and mostly adjacent, into the cache,
    ///     in order; runs on a prefetch thread.
    public func stream(
        blockSize: Int,
        blockCount: Int64,
        isResident: @escaping @Sendable (Int64) -> Bool,
        load: @escaping @Sendable ([Int64]) -> Void
    ) -> PrefetchStream {
        PrefetchStream(prefetcher: self, blockSize: blockSize, blockCount: blockCount, isResident: isResident, load: load)
    }

    public var statistics: PrefetchStatistics {
        PrefetchStatistics(
            queuedBlocks: counters.queued.load(ordering: .relaxed),
            loadedBlocks: counters.loaded.load(ordering: .relaxed),
            cancelledBlocks: counters.cancelled.load(ordering: .relaxed)
        )
    }

    fileprivate func enqueue(_ stream: PrefetchStream, blocks: Range<Int64>) {
        guard !blocks.isEmpty else { return }
        let chunks = stride(from: blocks.lowerBound, to: blocks.upperBound, by: chunkBlocks).map {
            $0..<min($0 + Int64(chunkBlocks), blocks.upperBound)
        }
        queue.withLock { queue in
            for chunk in chunks { queue.append(Job(stream: stream, blocks: chunk)) }
        }
        counters.queued.add(UInt64(blocks.count), ordering: .relaxed)
        for _ in chunks { queued.signal() }
    }

    private func work() {
        while true {
            queued.wait()
            guard let job = queue.withLock({ $0.popFirst() }) else { continue }
            let wanted = job.stream.isCancelled ? [] : job.blocks.filter { !job.stream.isResident($0) }
            counters.cancelled.add(UInt64(job.blocks.count - wanted.count), ordering: .relaxed)
            guard !wanted.isEmpty else { continue }
            job.stream.load(wanted)
            counters.loaded.add(UInt64(wanted.count), ordering: .relaxed)
        }
    }

    private struct Job {
        let stream: PrefetchStream
        let blocks: Range<Int64>
    }

    private final class Counters: Sendable {
        let queued = Atomic<UInt64>(0)
        let loaded = Atomic<UInt64>(0)
        let cancelled = Atomic<UInt64>(0)
    }
}

public struct PrefetchStatistics: Sendable, Equatable {
    public var queuedBlocks: UInt64
    public var loadedBlocks: UInt64
    /// Queued blocks skipped because their reader went away or they were already cached.
    public var cancelledBlocks: UInt64
}

/// The prefetch state of one open file. Any thread may report reads; `cancel`
/// (when the file is released) drops the blocks still queued for it.
public final class PrefetchStream: Sendable {
    private let prefetcher: Prefetcher
    private let blockSize: Int64
    private let blockCount: Int64
    fileprivate let isResident: @Sendable (Int64) -> Bool
    fileprivate let load: @Sendable ([Int64]) -> Void
    private let state: Mutex<State>
    private let cancelled = Atomic<Bool>(false)

    private struct State {
        var detector: SequentialDetector
        /// Blocks below this index have been queued already.
        var queuedUpTo: Int64 = 0
    }

    fileprivate init(prefetcher: Prefetcher, blockSize: Int, blockCount: Int64,
                     isResident: @escaping @Sendable (Int64) -> Bool, load: @escaping @Sendable ([Int64]) -> Void) {
        self.prefetcher = prefetcher
        self.blockSize = Int64(blockSize)
        self.blockCount = blockCount
        self.isResident = isResident
        self.load = load
        state = Mutex(State(detector: SequentialDetector(tolerance: 2 * Int64(blockSize))))
    }

    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Reports a read; while the reads are sequential, keeps `depth` blocks queued past it.
    public func didRead(offset: Int64, length: Int) {
        guard !isCancelled else { return }
        let blocks: Range<Int64> = state.withLock { state in
            guard state.detector.record(offset: offset, length: length) else { return 0..<0 }
            let current = (offset + Int64(length) - 1) / blockSize
            let start = max(state.queuedUpTo, current + 1)
            let end = min(blockCount, current + 1 + Int64(prefetcher.depth))
            guard start < end else { return 0..<0 }
            state.queuedUpTo = end
            return start..<end
        }
        prefetcher.enqueue(self, blocks: blocks)
    }

    public func cancel() {
        cancelled.store(true, ordering: .relaxed)
    }
}
