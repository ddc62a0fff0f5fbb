import DequeModule
import Reporting
import Synchronization
import Threading

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
    /// The chunks waiting for a prefetch thread, and whether the threads are to stop. Lock order:
    /// a leaf (no other lock is taken under it; streams' locks are released before chunks are queued).
    private let queue = Condition(Queue())
    private let workers: Int
    /// The prefetch threads, joined by `join` after `stop`.
    private let threads = OwnedThreads()
    fileprivate let counters = Counters()

    private struct Queue {
        var jobs = Deque<LaneJob>()
        var stopped = false
    }

    public init(workers: Int, depth: Int, chunkBlocks: Int = 4, maximumLanes: Int? = nil) {
        precondition(workers > 0 && depth > 0 && chunkBlocks > 0)
        self.workers = workers
        self.depth = depth
        self.chunkBlocks = chunkBlocks
        self.maximumLanes = max(1, min(workers, maximumLanes ?? workers))
        for number in 0..<workers {
            threads.start(name: "prefetch-\(number)") { [self] in work() }
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

    /// Tells the prefetch threads to end once their current chunks are done; queued chunks are
    /// dropped and later reads queue nothing. Readers waiting for a lane stop waiting at their deadline.
    public func stop() {
        let dropped: Deque<LaneJob> = queue.update { queue in
            guard !queue.stopped else { return [] }
            queue.stopped = true
            defer { queue.jobs.removeAll() }
            return queue.jobs
        }
        for job in dropped { job.stream.cancel() }
    }

    /// Joins the prefetch threads (after `stop`) whose chunks end before `deadline`; returns the names
    /// of those still loading (stuck in a source read).
    @discardableResult
    public func join(until deadline: ContinuousClock.Instant? = nil) -> [String] {
        threads.join(until: deadline)
    }

    public var isStopped: Bool { queue.withLock { $0.stopped } }

    fileprivate func submit(_ jobs: [LaneJob]) {
        guard !jobs.isEmpty else { return }
        queue.update { queue in
            if !queue.stopped { queue.jobs.append(contentsOf: jobs) }
        }
    }

    private enum Next {
        case run(LaneJob)
        case stop
    }

    private func work() {
        while case .run(let job) = queue.wait(for: { queue in queue.stopped ? .stop : queue.jobs.popFirst().map(Next.run) }) {
            job.stream.run(job)
        }
    }

    /// The prefetch figures this prefetcher keeps.
    public static let figures: [Figure] = [.prefetchQueuedBlocks, .prefetchedBlocks, .prefetchSkippedBlocks]

    fileprivate final class Counters: Sendable {
        let queued = Atomic<UInt64>(0)
        let loaded = Atomic<UInt64>(0)
        let cancelled = Atomic<UInt64>(0)
    }
}

extension Prefetcher: FigureReporter {
    public func report(into figures: inout FigureValues) {
        let statistics = statistics
        figures[.prefetchQueuedBlocks] = statistics.queuedBlocks
        figures[.prefetchedBlocks] = statistics.loadedBlocks
        figures[.prefetchSkippedBlocks] = statistics.cancelledBlocks
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
/// All mutable state (the runs, the lanes and their fields, the probe) is guarded by `condition`,
/// which also wakes readers waiting in `waitForLane(toLoad:)`.
public final class PrefetchStream: @unchecked Sendable {
    private let prefetcher: Prefetcher
    private let blockSize: Int64
    private let blockCount: Int64
    fileprivate let isResident: @Sendable (Int64) -> Bool
    fileprivate let load: @Sendable (Range<Int64>, PrefetchLane) -> Int
    /// Guards the runs, the lanes (and their fields) and the probe. Lock order: a leaf: never held
    /// while a chunk loads, while the cache is asked (`isResident`) or while chunks are queued on the prefetcher.
    private let condition = Condition(())
    private let cancelled = Atomic<Bool>(false)

    /// The sequential runs this file is read in, most recently read first (see `ReadRun`).
    private var runs: [ReadRun] = []
    /// Blocks the reader has asked for so far, in all runs: the clock a run's staleness is told by.
    private var blocksRead: Int64 = 0
    private var lanes: [PrefetchLane] = []
    private var laneLimit = 1
    private var throughput = ThroughputProbe()

    /// Runs followed at once in one file. A loader that reads tensors in name order through a
    /// mapping alternates between regions of the file (the seed checkpoint: three, one of them
    /// visited for one tensor in ten); with one window, each switch left the other region
    /// unprefetched, and a fifth of the file was read block by block on demand.
    static let maximumRuns = 4

    fileprivate init(
        prefetcher: Prefetcher, blockSize: Int, blockCount: Int64,
        isResident: @escaping @Sendable (Int64) -> Bool, load: @escaping @Sendable (Range<Int64>, PrefetchLane) -> Int
    ) {
        self.prefetcher = prefetcher
        self.blockSize = Int64(blockSize)
        self.blockCount = blockCount
        self.isResident = isResident
        self.load = load
        throughput.probing = prefetcher.maximumLanes > 1
    }

    var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

    /// Lanes this stream may use now (1 until probing shows more pay off).
    public var currentLaneLimit: Int { condition.withLock { _ in laneLimit } }

    /// Reports a read; while the reads are sequential, keeps `depth` blocks queued past it.
    ///
    /// A read continues the run it starts next to, or the run last read if it lands in its window:
    /// a copy out of a mapping may fault at its far end first (glibc's memcpy touches the end of a
    /// large copy before its loop, or copies backwards), and the kernel's readahead runs ahead of
    /// the reader. A read at most a window behind a run (the rest of that copy) changes nothing.
    /// Any other read starts a new run, which queues nothing until the next read continues it.
    public func didRead(offset: Int64, length: Int) {
        guard !isCancelled else { return }
        let jobs: [LaneJob] = condition.withLock { _ in
            let block = offset / blockSize
            let depth = Int64(prefetcher.depth)
            blocksRead += (Int64(length) + blockSize - 1) / blockSize
            let position: Int
            var skippedAhead = false
            if let continued = runs.firstIndex(where: { $0.detector.continues(offset: offset) }) {
                position = continued
                // Back in a run after reading another one: this reader alternates between regions.
                if runs[..<continued].contains(where: { $0.detector.isSequential }) { runs[continued].revisited = true }
                // Not an older run's: a random read landing there is not that reader moving on.
            } else if runs.first?.windowAhead(blockSize: blockSize).contains(block) == true {
                position = 0
                skippedAhead = true
            } else if let behind = runs.firstIndex(where: { $0.trails(block, by: depth, blockSize: blockSize) }) {
                runs[behind].lastRead = blocksRead
                dropStaleWindows()
                return []
            } else {
                position = startRun()
            }
            runs.insert(runs.remove(at: position), at: 0)
            runs[0].lastRead = blocksRead
            dropStaleWindows()
            let sequential =
                skippedAhead
                ? runs[0].detector.recordSkip(offset: offset, length: length)
                : runs[0].detector.record(offset: offset, length: length)
            guard sequential else { return [] }
            dropLeftWindows()
            let current = (offset + Int64(length) - 1) / blockSize
            let end = min(blockCount, current + 1 + depth)
            let start = max(runs[0].queuedUpTo, current + 1)
            guard start < end else { return [] }
            // A run that outran its window leaves the blocks it skipped unloaded.
            if current >= runs[0].queuedUpTo { skipUnscheduled(of: &runs[0], upTo: current + 1) }
            prefetcher.counters.queued.add(UInt64(end - start), ordering: .relaxed)
            runs[0].queuedUpTo = end
            return takeJobs()
        }
        prefetcher.submit(jobs)
    }

    /// Adds a run for a read that continues none; returns its position. Only one run is on trial
    /// (not yet sequential) at a time, and the new one takes its place: with every stray read kept
    /// as a run, random 64 KiB reads of a cold 1 GiB file continued one now and then, and loaded
    /// 479 MiB for 289 MiB read on demand. When all places are taken by sequential runs, the least
    /// recently read goes, and its unscheduled blocks are dropped. Called with the lock held.
    private func startRun() -> Int {
        if let onTrial = runs.firstIndex(where: { !$0.detector.isSequential }) {
            runs.remove(at: onTrial)
        } else if runs.count >= Self.maximumRuns {
            skipUnscheduled(of: &runs[runs.count - 1], upTo: runs[runs.count - 1].queuedUpTo)
            runs.removeLast()
        }
        runs.append(ReadRun(detector: SequentialDetector(tolerance: 2 * blockSize)))
        return runs.count - 1
    }

    /// Runs the reader is not in keep their unscheduled blocks only while it is likely to come back:
    /// a reader that skips through a file (one shard's tensors) must not have the windows it left
    /// loaded behind it, which is what one window per file gave (its blocks were dropped when the
    /// reader went past it). So a run the reader has never come back to gives them up as soon as
    /// another run is read (`dropLeftWindows`), and one it has come back to (the seed checkpoint's
    /// second region, one tensor in every 25 MiB) once the reader has spent a window's worth of
    /// reads elsewhere (`dropStaleWindows`). A run read again queues anew. Called with the lock held.
    private func dropStaleWindows() {
        for position in runs.indices where blocksRead - runs[position].lastRead > Int64(prefetcher.depth) {
            withdrawUnscheduled(of: position)
        }
    }

    /// See `dropStaleWindows`; the run at the front is the one being read. Called with the lock held.
    private func dropLeftWindows() {
        for position in runs.indices.dropFirst() where !runs[position].revisited { withdrawUnscheduled(of: position) }
    }

    /// Gives up a run's queued blocks no lane has taken, as no longer asked for. Called with the lock held.
    private func withdrawUnscheduled(of position: Int) {
        let dropped = runs[position].unscheduled.count
        guard dropped > 0 else { return }
        prefetcher.counters.cancelled.add(UInt64(dropped), ordering: .relaxed)
        runs[position].queuedUpTo = runs[position].scheduledUpTo
    }

    /// Waits while `index` lies in this stream's prefetch window and no lane has
    /// loaded it yet, so that the reader (or the kernel's readahead on its behalf)
    /// gets the block from a lane instead of reading it through another handle,
    /// which would make a read-ahead source fetch the same bytes twice.
    /// Returns at once for a block outside the window; gives up after `limit`.
    public func waitForLane(toLoad index: Int64, limit: Duration = .seconds(30)) {
        _ = condition.wait(until: .now + limit) { _ in isCancelled || !isPending(index) ? true : nil }
    }

    /// Queued for a lane, or claimed by one and not loaded yet. Called with the lock held.
    private func isPending(_ index: Int64) -> Bool {
        runs.contains { $0.unscheduled.contains(index) } || lanes.contains { $0.claim.contains(index) }
    }

    public func cancel() {
        cancelled.store(true, ordering: .relaxed)
        condition.update { _ in
            for position in runs.indices { skipUnscheduled(of: &runs[position], upTo: runs[position].queuedUpTo) }
        }
    }

    /// Drops a run's queued blocks below `index` that no lane has taken. Called with the lock held.
    private func skipUnscheduled(of run: inout ReadRun, upTo index: Int64) {
        let skipped = min(index, run.queuedUpTo) - run.scheduledUpTo
        if skipped > 0 { prefetcher.counters.cancelled.add(UInt64(skipped), ordering: .relaxed) }
        run.scheduledUpTo = max(run.scheduledUpTo, index)
    }

    /// Blocks per chunk: the configured size, smaller when that many lanes would not all fit in the window.
    private var chunkBlocks: Int { max(1, min(prefetcher.chunkBlocks, prefetcher.depth / laneLimit)) }

    /// Hands chunks of the windows to idle lanes, up to the lane limit, the most recently read
    /// run's first. Called with the lock held.
    private func takeJobs() -> [LaneJob] {
        var jobs: [LaneJob] = []
        for position in runs.indices {
            while !isCancelled && !runs[position].unscheduled.isEmpty {
                let busyLanes = lanes.filter(\.busy).count
                guard busyLanes < laneLimit else { return jobs }
                let run = runs[position]
                // Wait for a whole chunk unless nothing is running, or the window ends at the file's end.
                guard run.unscheduled.count >= chunkBlocks || busyLanes == 0 || run.queuedUpTo == blockCount else { break }
                let start = run.scheduledUpTo
                let blocks = start..<min(start + Int64(chunkBlocks), run.queuedUpTo)
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
                runs[position].scheduledUpTo = blocks.upperBound
                jobs.append(LaneJob(stream: self, lane: lane, blocks: blocks))
            }
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
            condition.update { _ in
                job.lane.claim = index..<job.blocks.upperBound
                for _ in 0..<loaded { adapt() }
            }
        }
        let jobs: [LaneJob] = condition.update { _ in
            let unfinished = job.lane.claim.count
            prefetcher.counters.cancelled.add(UInt64(unfinished), ordering: .relaxed)
            job.lane.claim = 0..<0
            job.lane.busy = false
            job.lane.nextIndex = next
            // A lane beyond the limit (probing found it did not pay) goes, and its handle with it.
            if lanes.count > laneLimit, let position = lanes.firstIndex(where: { $0 === job.lane }) {
                lanes.remove(at: position)
            }
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

/// One sequential run of reads in a file, and the window of blocks queued ahead of it.
private struct ReadRun {
    var detector: SequentialDetector
    /// Blocks below this index have been asked for (the end of the window).
    var queuedUpTo: Int64 = 0
    /// Blocks below this index have been handed to lanes (or given up).
    var scheduledUpTo: Int64 = 0
    /// The stream's `blocksRead` when the reader last read in this run.
    var lastRead: Int64 = 0
    /// Whether the reader has come back to this run after reading another.
    var revisited = false

    /// Queued blocks no lane has taken yet.
    var unscheduled: Range<Int64> { scheduledUpTo..<max(scheduledUpTo, queuedUpTo) }

    /// The blocks between the furthest read and the end of the window (none before the run is sequential).
    func windowAhead(blockSize: Int64) -> Range<Int64> {
        let reached = detector.nextOffset / blockSize
        return reached..<max(reached, queuedUpTo)
    }

    /// Whether `block` lies at most `depth` blocks behind the furthest read of a sequential run.
    func trails(_ block: Int64, by depth: Int64, blockSize: Int64) -> Bool {
        let reached = detector.nextOffset / blockSize
        return queuedUpTo > 0 && block < reached && block >= reached - depth
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
