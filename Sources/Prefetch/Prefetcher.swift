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
/// Each stream loads through *lanes*: a lane reads chunks of adjacent blocks in
/// order and keeps its source handle from one chunk to the next, so a single
/// lane reads the file front to back through one handle. Object-store FUSE
/// clients (rclone, ossfs, s3fs) read ahead per handle and throw that away when
/// a handle jumps or closes, so for them one lane is fastest; a source that
/// charges a fixed latency per request instead gains from several lanes at
/// once. A stream starts with one lane and doubles them while each doubling
/// raises its throughput by 10% or more, up to `maximumLanes`.
public final class Prefetcher: Sendable {
    /// Blocks kept loading ahead of a sequential reader.
    public let depth: Int
    /// Adjacent blocks one lane loads in order before the next chunk is handed out.
    public let chunkBlocks: Int
    /// Lanes one stream may use at once.
    public let maximumLanes: Int
    /// The most blocks the prefetch threads load at once: a chunk each.
    public var blocksLoadingAtMost: Int { workers * chunkBlocks }
    private let queue = Mutex<Deque<LaneJob>>([])
    private let queued = DispatchSemaphore(value: 0)
    private let workers: Int
    private let stopped = Atomic<Bool>(false)
    fileprivate let counters = Counters()

    public init(workers: Int, depth: Int, chunkBlocks: Int = 4, maximumLanes: Int? = nil) {
        precondition(workers > 0 && depth > 0 && chunkBlocks > 0)
        self.workers = workers
        self.depth = depth
        self.chunkBlocks = chunkBlocks
        self.maximumLanes = max(1, min(workers, maximumLanes ?? workers))
        for number in 0..<workers {
            let thread = Thread { [self] in work() }
            thread.name = "cachefs-prefetch-\(number)"
            thread.start()
        }
    }

    /// A prefetch stream for one open file of `blockCount` blocks.
    /// - Parameters:
    ///   - isResident: whether a block is already cached or loading (then it is skipped).
    ///   - loadRun: loads blocks from the start of the range into the cache through the lane (whose
    ///     `context` the loader may use to keep a source handle), as many as it can take in one go
    ///     (one source read for them all), at least the first; returns how many it loaded, 0 to end
    ///     the chunk. Runs on a prefetch thread; a lane's runs are loaded one at a time, in order.
    public func stream(
        blockSize: Int,
        blockCount: Int64,
        isResident: @escaping @Sendable (Int64) -> Bool,
        loadRun: @escaping @Sendable (Range<Int64>, PrefetchLane) -> Int
    ) -> PrefetchStream {
        PrefetchStream(prefetcher: self, blockSize: blockSize, blockCount: blockCount, isResident: isResident, load: loadRun)
    }

    public var statistics: PrefetchStatistics {
        PrefetchStatistics(
            queuedBlocks: counters.queued.load(ordering: .relaxed),
            loadedBlocks: counters.loaded.load(ordering: .relaxed),
            cancelledBlocks: counters.cancelled.load(ordering: .relaxed)
        )
    }

    /// Ends the prefetch threads once their current chunks are done; queued chunks are dropped
    /// and later reads queue nothing. Readers waiting for a lane stop waiting at their deadline.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        let dropped = queue.withLock { queue in
            defer { queue.removeAll() }
            return queue
        }
        for job in dropped { job.stream.cancel() }
        for _ in 0..<workers { queued.signal() }
    }

    public var isStopped: Bool { stopped.load(ordering: .relaxed) }

    fileprivate func submit(_ jobs: [LaneJob]) {
        guard !jobs.isEmpty, !isStopped else { return }
        queue.withLock { queue in queue.append(contentsOf: jobs) }
        for _ in jobs { queued.signal() }
    }

    private func work() {
        while true {
            queued.wait()
            if isStopped { return }
            guard let job = queue.withLock({ $0.popFirst() }) else { continue }
            job.stream.run(job)
        }
    }

    fileprivate final class Counters: Sendable {
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

/// One lane of a stream: loads its chunks one after another, in order.
///
/// `context` belongs to the loader (MirrorFS keeps the lane's source descriptor
/// there) and is touched only by the thread running the lane's current chunk;
/// a lane runs one chunk at a time, and chunks are handed over through the
/// prefetcher's locked queue.
public final class PrefetchLane: @unchecked Sendable {
    public var context: AnyObject?
    /// The block after the last one this lane read: a chunk starting there continues its handle.
    fileprivate var nextIndex: Int64 = -1
    /// Blocks claimed by the chunk this lane is loading or is queued to load; empty when idle.
    fileprivate var claim: Range<Int64> = 0..<0
    fileprivate var busy = false
}

private struct LaneJob {
    let stream: PrefetchStream
    let lane: PrefetchLane
    let blocks: Range<Int64>
}

/// The prefetch state of one open file. Any thread may report reads; `cancel`
/// (when the file is released) drops the blocks still queued for it.
///
/// All mutable state is guarded by `condition`, which also wakes readers
/// waiting in `waitForLane(toLoad:)`.
public final class PrefetchStream: @unchecked Sendable {
    private let prefetcher: Prefetcher
    private let blockSize: Int64
    private let blockCount: Int64
    fileprivate let isResident: @Sendable (Int64) -> Bool
    fileprivate let load: @Sendable (Range<Int64>, PrefetchLane) -> Int
    private let condition = NSCondition()
    private let cancelled = Atomic<Bool>(false)

    private var detector: SequentialDetector
    /// Blocks below this index have been asked for (the end of the prefetch window).
    private var queuedUpTo: Int64 = 0
    /// Blocks below this index have been handed to lanes.
    private var scheduledUpTo: Int64 = 0
    private var lanes: [PrefetchLane] = []
    private var laneLimit = 1
    private var throughput = ThroughputProbe()

    fileprivate init(prefetcher: Prefetcher, blockSize: Int, blockCount: Int64,
                     isResident: @escaping @Sendable (Int64) -> Bool, load: @escaping @Sendable (Range<Int64>, PrefetchLane) -> Int) {
        self.prefetcher = prefetcher
        self.blockSize = Int64(blockSize)
        self.blockCount = blockCount
        self.isResident = isResident
        self.load = load
        detector = SequentialDetector(tolerance: 2 * Int64(blockSize))
        throughput.probing = prefetcher.maximumLanes > 1
    }

    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Lanes this stream may use now (1 until probing shows more pay off).
    public var currentLaneLimit: Int { condition.withLock { laneLimit } }

    /// Reports a read; while the reads are sequential, keeps `depth` blocks queued past it.
    public func didRead(offset: Int64, length: Int) {
        guard !isCancelled else { return }
        let jobs: [LaneJob] = condition.withLock {
            guard detector.record(offset: offset, length: length) else { return [] }
            let current = (offset + Int64(length) - 1) / blockSize
            let end = min(blockCount, current + 1 + Int64(prefetcher.depth))
            let start = max(queuedUpTo, current + 1)
            guard start < end else { return [] }
            // A reader that jumped past the window leaves its unscheduled blocks behind. Inside the
            // window, reads ahead of the lanes are the kernel's readahead: they wait for the lanes.
            if current >= queuedUpTo { skipUnscheduled(upTo: current + 1) }
            prefetcher.counters.queued.add(UInt64(end - start), ordering: .relaxed)
            queuedUpTo = end
            return takeJobs()
        }
        prefetcher.submit(jobs)
    }

    /// Waits while `index` lies in this stream's prefetch window and no lane has
    /// loaded it yet, so that the reader (or the kernel's readahead on its behalf)
    /// gets the block from a lane instead of reading it through another handle,
    /// which would make a read-ahead source fetch the same bytes twice.
    /// Returns at once for a block outside the window; gives up after `limit`.
    public func waitForLane(toLoad index: Int64, limit: Duration = .seconds(30)) {
        let deadline = Date(timeIntervalSinceNow: limit / .seconds(1))
        condition.lock()
        defer { condition.unlock() }
        while !isCancelled && isPending(index) {
            guard condition.wait(until: deadline) else { return }
        }
    }

    /// Queued for a lane, or claimed by one and not loaded yet. Called with the lock held.
    private func isPending(_ index: Int64) -> Bool {
        (scheduledUpTo..<queuedUpTo).contains(index) || lanes.contains { $0.claim.contains(index) }
    }

    public func cancel() {
        cancelled.store(true, ordering: .relaxed)
        condition.withLock {
            skipUnscheduled(upTo: queuedUpTo)
            condition.broadcast()
        }
    }

    /// Drops queued blocks below `index` that no lane has taken. Called with the lock held.
    private func skipUnscheduled(upTo index: Int64) {
        let skipped = min(index, queuedUpTo) - scheduledUpTo
        if skipped > 0 { prefetcher.counters.cancelled.add(UInt64(skipped), ordering: .relaxed) }
        scheduledUpTo = max(scheduledUpTo, index)
    }

    /// Blocks per chunk: the configured size, smaller when that many lanes would not all fit in the window.
    private var chunkBlocks: Int { max(1, min(prefetcher.chunkBlocks, prefetcher.depth / laneLimit)) }

    /// Hands chunks of the window to idle lanes, up to the lane limit. Called with the lock held.
    private func takeJobs() -> [LaneJob] {
        var jobs: [LaneJob] = []
        while !isCancelled && scheduledUpTo < queuedUpTo {
            let busyLanes = lanes.filter(\.busy).count
            guard busyLanes < laneLimit else { break }
            let available = queuedUpTo - scheduledUpTo
            // Wait for a whole chunk unless nothing is running, or the window ends at the file's end.
            guard available >= Int64(chunkBlocks) || busyLanes == 0 || queuedUpTo == blockCount else { break }
            let start = scheduledUpTo
            let blocks = start..<min(start + Int64(chunkBlocks), queuedUpTo)
            let idle = lanes.filter { !$0.busy }
            let lane: PrefetchLane
            if let continuing = idle.first(where: { $0.nextIndex == start }) ?? idle.first {
                lane = continuing
            } else {
                lane = PrefetchLane()
                lanes.append(lane)
            }
            lane.busy = true
            lane.claim = blocks
            scheduledUpTo = blocks.upperBound
            jobs.append(LaneJob(stream: self, lane: lane, blocks: blocks))
        }
        return jobs
    }

    /// Loads one chunk on a prefetch thread, then hands out what the window holds next.
    fileprivate func run(_ job: LaneJob) {
        var next = job.lane.nextIndex // where the lane's handle stands after this chunk
        var index = job.blocks.lowerBound
        while index < job.blocks.upperBound && !isCancelled {
            var loaded = 0
            if isResident(index) {
                prefetcher.counters.cancelled.add(1, ordering: .relaxed)
                index += 1
            } else {
                loaded = load(index..<job.blocks.upperBound, job.lane)
                guard loaded > 0 else { break }
                prefetcher.counters.loaded.add(UInt64(loaded), ordering: .relaxed)
                index += Int64(loaded)
                next = index
            }
            condition.withLock {
                job.lane.claim = index..<job.blocks.upperBound
                for _ in 0..<loaded { adapt() }
                condition.broadcast()
            }
        }
        let jobs: [LaneJob] = condition.withLock {
            let unfinished = job.lane.claim.count
            prefetcher.counters.cancelled.add(UInt64(unfinished), ordering: .relaxed)
            job.lane.claim = 0..<0
            job.lane.busy = false
            job.lane.nextIndex = next
            // A lane beyond the limit (probing found it did not pay) goes, and its handle with it.
            if lanes.count > laneLimit, let position = lanes.firstIndex(where: { $0 === job.lane }) {
                lanes.remove(at: position)
            }
            condition.broadcast()
            let jobs = takeJobs()
            // Nothing left for this lane: the reader, not the lanes, sets the pace now, and a step
            // timed across the wait would measure the reader (see `ThroughputProbe.restartStep`).
            if !job.lane.busy { throughput.restartStep() }
            return jobs
        }
        prefetcher.submit(jobs)
    }

    /// Counts a loaded block toward the current probe step and moves the lane limit. Called with the lock held.
    private func adapt() {
        let steps = max(8, 2 * chunkBlocks * laneLimit)
        guard let rate = throughput.blockLoaded(stepLength: steps) else { return }
        switch throughput.decide(rate: rate, lanes: laneLimit) {
        case .keep: break
        case .grow: laneLimit = min(prefetcher.maximumLanes, laneLimit * 2)
        case .revert(let lanes): laneLimit = lanes
        }
        if laneLimit >= prefetcher.maximumLanes { throughput.probing = false }
    }
}

/// Measures a stream's block rate in steps and decides whether more lanes paid off.
struct ThroughputProbe {
    enum Decision: Equatable { case keep, grow, revert(Int) }

    var probing = true
    /// The rate (blocks per second) with `lanesOfRate` lanes, from the last step.
    private var bestRate: Double?
    private var lanesOfRate = 1
    private var stepStart: ContinuousClock.Instant?
    private var stepBlocks = 0
    private var warmedUp = false
    /// Whether the lanes now being measured already fell short once (see `decide`).
    private var fellShort = false
    /// A step with more lanes must beat the last one by this factor to keep them.
    static let requiredGain = 1.1

    /// Counts a loaded block; returns the step's rate when a step of `stepLength` blocks ends.
    mutating func blockLoaded(stepLength: Int, now: ContinuousClock.Instant = .now) -> Double? {
        guard probing else { return nil }
        // The first block of a step starts its clock: opening a handle is not throughput.
        guard let start = stepStart else {
            stepStart = now
            stepBlocks = 0
            return nil
        }
        stepBlocks += 1
        guard stepBlocks >= stepLength else { return nil }
        let elapsed = now - start
        let seconds = elapsed / .seconds(1)
        stepStart = now
        defer { stepBlocks = 0 }
        return seconds > 0 ? Double(stepBlocks) / seconds : .infinity
    }

    /// Drops the step under way: the lanes ran out of work, so its clock would include time spent
    /// waiting for the reader to ask for more. A loader that maps the file pauses (importing its
    /// framework after reading the header, copying each tensor out); over a peer, steps timed across
    /// such pauses measured 190-520 blocks/s where the lanes had just delivered 790-1,400, so a
    /// second lane looked like a loss and half the loads kept one lane for the rest of the file.
    mutating func restartStep() {
        stepStart = nil
        stepBlocks = 0
    }

    /// After a step measured with `lanes` lanes: grow again, or go back to the last good count and stop probing.
    /// The first step only warms up: a source's first reads (opening, its own readahead starting)
    /// are slow, and a low first rate would make any second lane look like a gain. A doubling that
    /// falls short is measured once more before it is undone: the step right after growing also
    /// holds the new lanes starting one by one (over a source with both a request latency and a
    /// bandwidth cap, the demo's, a second lane judged on that step alone gained 7-14% and was as
    /// often dropped as kept), while a clear gain grows at once.
    mutating func decide(rate: Double, lanes: Int) -> Decision {
        guard probing else { return .keep }
        guard warmedUp else {
            warmedUp = true
            return .keep
        }
        if let best = bestRate, lanes > lanesOfRate, rate < best * Self.requiredGain {
            guard fellShort else {
                fellShort = true
                return .keep
            }
            probing = false
            return .revert(lanesOfRate)
        }
        bestRate = rate
        lanesOfRate = lanes
        fellShort = false
        return .grow
    }
}
