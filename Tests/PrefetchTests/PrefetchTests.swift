import Dispatch
import Foundation
import Synchronization
import Testing

@testable import Prefetch

extension Prefetcher {
    /// A stream whose loader takes one block at a time: what most of these tests script.
    func stream(
        blockSize: Int, blockCount: Int64, isResident: @escaping @Sendable (Int64) -> Bool,
        load: @escaping @Sendable (Int64, PrefetchLane) -> Bool
    ) -> PrefetchStream {
        stream(
            blockSize: blockSize, blockCount: blockCount, isResident: isResident,
            loadRun: { blocks, lane in
                load(blocks.lowerBound, lane) ? 1 : 0
            })
    }
}

@Suite("Sequential detection")
struct SequentialDetectorTests {
    @Test("Reads from the start, and runs of adjacent reads, are sequential")
    func sequentialRuns() {
        var detector = SequentialDetector(tolerance: 4096)
        do { let sequential = detector.record(offset: 0, length: 1000); #expect(sequential) }
        do { let sequential = detector.record(offset: 1000, length: 1000); #expect(sequential) }
        do { let sequential = detector.record(offset: 2000, length: 1000); #expect(sequential) }
    }

    @Test("Random reads are not sequential; two adjacent reads start a run")
    func randomReads() {
        var detector = SequentialDetector(tolerance: 4096)
        do { let sequential = detector.record(offset: 1 << 30, length: 4096); #expect(!sequential) }
        do { let sequential = detector.record(offset: 5 << 20, length: 4096); #expect(!sequential) }
        do { let sequential = detector.record(offset: 900 << 20, length: 4096); #expect(!sequential) }
        do { let sequential = detector.record(offset: (900 << 20) + 4096, length: 4096); #expect(sequential) }
    }

    @Test("Slightly reordered requests keep the run going")
    func reorderedRequests() {
        var detector = SequentialDetector(tolerance: 1 << 20)
        do { let sequential = detector.record(offset: 0, length: 131072); #expect(sequential) }
        do { let sequential = detector.record(offset: 262144, length: 131072); #expect(sequential) } // arrived before 131072
        do { let sequential = detector.record(offset: 131072, length: 131072); #expect(sequential) }
        do { let sequential = detector.record(offset: 393216, length: 131072); #expect(sequential) }
    }
}

@Suite("Prefetcher", .serialized)
struct PrefetcherTests {
    /// Records loads; can hold them until released, to test cancellation and waiting readers.
    final class Loads: Sendable {
        let loaded = Mutex<[Int64]>([])
        /// Each load's lane, by identity, and how many lane contexts ("handles") were opened.
        let lanes = Mutex<[ObjectIdentifier]>([])
        let opened = Atomic<Int>(0)
        let started = Atomic<Int>(0)
        let gate = DispatchSemaphore(value: 0)
        let holding: Bool

        init(holding: Bool = false) { self.holding = holding }

        final class Handle {}

        func load(_ index: Int64, _ lane: PrefetchLane) -> Bool {
            if lane.context == nil {
                lane.context = Handle()
                opened.add(1, ordering: .relaxed)
            }
            started.add(1, ordering: .relaxed)
            if holding { gate.wait() }
            loaded.withLock { $0.append(index) }
            lanes.withLock { $0.append(ObjectIdentifier(lane)) }
            return true
        }

        var indices: [Int64] { loaded.withLock { $0.sorted() } }
        var order: [Int64] { loaded.withLock { $0 } }
    }

    private func waitFor(_ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while !condition() && Date() < deadline { usleep(5_000) }
        return condition()
    }

    @Test("A sequential reader gets exactly `depth` blocks queued ahead, each once")
    func boundedDepth() {
        let prefetcher = Prefetcher(workers: 4, depth: 3)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 1000, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100) // block 0 → 1, 2, 3
        #expect(waitFor { loads.indices == [1, 2, 3] })
        stream.didRead(offset: 100, length: 100) // block 1 → up to 4
        #expect(waitFor { loads.indices == [1, 2, 3, 4] })
        stream.didRead(offset: 100, length: 100) // the same read again queues nothing new
        #expect(prefetcher.statistics.queuedBlocks == 4, "queueing happens inside didRead: nothing more was queued")
        // A fence: the next read queues block 5 only; had the repeat queued anything, a block would show twice.
        stream.didRead(offset: 200, length: 100)
        #expect(waitFor { loads.indices.count >= 5 })
        #expect(loads.indices == [1, 2, 3, 4, 5])
        #expect(prefetcher.statistics.queuedBlocks == 5)
    }

    @Test("Random reads queue nothing; the end of the file bounds the depth")
    func randomAndEndOfFile() {
        let prefetcher = Prefetcher(workers: 2, depth: 8)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 10, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 500, length: 10)
        stream.didRead(offset: 200, length: 10)
        #expect(prefetcher.statistics.queuedBlocks == 0, "queueing happens inside didRead: random reads queued nothing")
        stream.didRead(offset: 210, length: 90) // continues from 210: sequential, block 2 → 3…9
        // Had a random read queued blocks (6…9 after block 5), they would show here twice.
        #expect(waitFor { loads.indices.count >= 7 })
        #expect(loads.indices == Array(3...9))
        #expect(prefetcher.statistics.queuedBlocks == 7)
    }

    /// Guards against trusting random reads: a new run is on trial until the next read continues
    /// it, and only the latest stray read is kept on trial. Keeping each as a run, random 64 KiB
    /// reads of a cold 1 GiB file continued one now and then and loaded 479 MiB for 289.
    @Test("Only the latest stray read can start a run: a read next to an older one queues nothing")
    func oneRunOnTrial() {
        let prefetcher = Prefetcher(workers: 1, depth: 8, maximumLanes: 1)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 1000, length: 50)
        stream.didRead(offset: 5000, length: 50)
        stream.didRead(offset: 1050, length: 50) // next to the first read, not to the last
        #expect(prefetcher.statistics.queuedBlocks == 0)
        stream.didRead(offset: 1100, length: 50) // next to the last: a run, 12…19
        #expect(prefetcher.statistics.queuedBlocks == 8)
    }

    /// Guards "a file starts with one lane": three workers and up to three lanes are allowed,
    /// yet the first window is read front to back by one lane through one context, and the
    /// probe adds a lane only after its warm-up step and one measured step. Loads are held until
    /// the reads are queued, so that the lane never runs out of work (which restarts a step).
    @Test("A file starts with one lane, reading front to back through one kept context, until probing adds lanes")
    func startsWithOneLaneInOrder() {
        let prefetcher = Prefetcher(workers: 3, depth: 10, chunkBlocks: 4)
        #expect(prefetcher.maximumLanes == 3)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)
        for _ in 1...10 { loads.gate.signal() }
        #expect(waitFor { loads.indices == Array(1...10) })
        #expect(loads.order == Array(1...10), "three workers, but one lane: strictly in order")
        #expect(Set(loads.lanes.withLock { $0 }).count == 1)
        #expect(loads.opened.load(ordering: .relaxed) == 1, "the lane keeps its context from chunk to chunk")
        // 10 blocks loaded: the clock's first block and the 8-block warm-up step decide nothing,
        // and the lane then ran out of work, which restarts the step under way.
        #expect(stream.currentLaneLimit == 1)
        for offset in stride(from: Int64(100), to: 1000, by: 100) { stream.didRead(offset: offset, length: 100) }
        for _ in 11...19 { loads.gate.signal() }
        #expect(waitFor { loads.indices == Array(1...19) })
        // Block 11 started the clock again and block 19 ended the first measured step, which always
        // grows (nothing to compare with yet).
        #expect(waitFor { stream.currentLaneLimit == 2 })
    }

    /// Guards the cap: with --prefetch-threads 1 (one worker) a stream never gets a second lane,
    /// whatever the probe measures.
    @Test("One worker: one lane, whatever the probe measures")
    func oneWorkerOneLane() {
        let prefetcher = Prefetcher(workers: 1, depth: 10, chunkBlocks: 4)
        #expect(prefetcher.maximumLanes == 1)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        for offset in stride(from: Int64(0), to: 3000, by: 100) { stream.didRead(offset: offset, length: 100) }
        #expect(waitFor { loads.indices == Array(1...39) })
        #expect(loads.order == Array(1...39))
        #expect(stream.currentLaneLimit == 1, "39 blocks would have grown the lanes twice with more workers")
    }

    @Test("Resident blocks are skipped")
    func residentBlocksSkipped() {
        let prefetcher = Prefetcher(workers: 2, depth: 4)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { $0 % 2 == 0 }, load: loads.load)
        stream.didRead(offset: 0, length: 100)
        #expect(waitFor { prefetcher.statistics.loadedBlocks + prefetcher.statistics.cancelledBlocks == 4 })
        #expect(loads.indices == [1, 3])
    }

    @Test("Cancelling a stream drops its queued blocks")
    func cancellation() {
        let prefetcher = Prefetcher(workers: 1, depth: 10, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100) // the lane blocks in load(1)
        #expect(waitFor { prefetcher.statistics.queuedBlocks == 10 && loads.started.load(ordering: .relaxed) == 1 })
        stream.cancel()
        loads.gate.signal() // let load(1) finish
        // Block 1 was being loaded and completes; the other nine are dropped.
        #expect(waitFor { prefetcher.statistics.cancelledBlocks == 9 })
        #expect(loads.indices == [1])
        stream.didRead(offset: 100, length: 100) // a cancelled stream queues nothing
        #expect(prefetcher.statistics.queuedBlocks == 10)
        // A fence: another stream's block goes through the single worker's FIFO queue, so once it
        // is loaded, anything the cancelled stream had submitted would have been loaded first.
        let fence = Loads()
        let other = prefetcher.stream(blockSize: 100, blockCount: 2, isResident: { _ in false }, load: fence.load)
        other.didRead(offset: 0, length: 100)
        #expect(waitFor { fence.indices == [1] })
        #expect(loads.indices == [1], "the cancelled stream loaded nothing more")
    }

    @Test("Reads ahead inside the window (the kernel's readahead) leave its blocks to the lane and move the window on")
    func readaheadInsideTheWindow() {
        let prefetcher = Prefetcher(workers: 1, depth: 8, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100) // window 1…8; the lane holds in load(1)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })
        stream.didRead(offset: 100, length: 100) // → 9
        stream.didRead(offset: 500, length: 100) // readahead of block 5, ahead of the lane: the run goes on from there
        #expect(prefetcher.statistics.cancelledBlocks == 0, "nothing in the window is given up")
        #expect(prefetcher.statistics.queuedBlocks == 13)
        for _ in 0..<20 { loads.gate.signal() }
        #expect(waitFor { loads.indices == Array(1...13) })
        #expect(loads.order == Array(1...13), "the lane loaded block 5 in its turn")
    }

    /// A loader that maps a checkpoint and reads its tensors in name order, not file order,
    /// alternates between regions of the file (the seed checkpoint: tensor 11 lies with 1…19,
    /// tensors 110…119 far behind them). Once the reader has come back to a region, it keeps its
    /// run and window while the reader is in the other: with one window, coming back to a region
    /// found it given up, and its blocks were read on demand.
    @Test("A reader alternating between two regions of a file keeps a window ahead in each once it has come back to them")
    func interleavedRuns() {
        let prefetcher = Prefetcher(workers: 1, depth: 4, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 1000, length: 100) // region A: blocks 10 and 11 → 12…15, which the lane takes
        stream.didRead(offset: 1100, length: 100)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })
        stream.didRead(offset: 5000, length: 100) // region B: blocks 50 and 51 → 52…55
        stream.didRead(offset: 5100, length: 100)
        stream.didRead(offset: 1200, length: 100) // back in A: 12 → 16; B, left for the first time, gives up 52…55
        #expect(prefetcher.statistics.cancelledBlocks == 4)
        stream.didRead(offset: 5200, length: 100) // back in B: 52 → 53…56
        stream.didRead(offset: 1300, length: 100) // A: 13 → 17
        stream.didRead(offset: 5300, length: 100) // B: 53 → 57
        #expect(prefetcher.statistics.queuedBlocks == 15, "queueing happens inside didRead")
        #expect(prefetcher.statistics.cancelledBlocks == 4, "both regions kept their windows")
        for _ in 0..<20 { loads.gate.signal() }
        #expect(waitFor { loads.indices == [12, 13, 14, 15, 16, 17, 53, 54, 55, 56, 57] })
    }

    /// safetensors copies each tensor out of the mapping with memcpy, which touches the end of a
    /// large copy first: the fault lands inside the window, far from where the run has reached.
    @Test("A read at the far end of the window (a tensor's last page, touched first) leaves the run going")
    func readAtTheWindowsFarEnd() {
        let prefetcher = Prefetcher(workers: 1, depth: 8, maximumLanes: 1)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 1000, length: 100)
        stream.didRead(offset: 1100, length: 100) // 12…19 queued
        #expect(prefetcher.statistics.queuedBlocks == 8)
        stream.didRead(offset: 1700, length: 100) // the tensor's end, block 17: the window now runs to 25
        #expect(prefetcher.statistics.queuedBlocks == 14)
        stream.didRead(offset: 1200, length: 100) // its start: behind the run, which stays where it was
        stream.didRead(offset: 1300, length: 100)
        #expect(prefetcher.statistics.queuedBlocks == 14)
        stream.didRead(offset: 1800, length: 100) // past the tensor's end: the run goes on
        #expect(prefetcher.statistics.queuedBlocks == 15)
        #expect(waitFor { loads.indices == Array(12...26) })
        #expect(prefetcher.statistics.cancelledBlocks == 0)
    }

    /// The other side of keeping several runs: a reader that skips through a file (one shard's
    /// tensors) must not have the windows it left behind loaded for nothing. A run the reader leaves
    /// gives up its unscheduled blocks at once, as one window per file did, unless the reader has
    /// come back to it before; then after a window's worth of reads elsewhere.
    @Test("A run the reader leaves gives up its queued blocks: at once, or after a window's worth of reads if it was come back to")
    func leftRunsDropTheirWindow() {
        let prefetcher = Prefetcher(workers: 1, depth: 8, chunkBlocks: 4, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 1000, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 1000, length: 100)
        stream.didRead(offset: 1100, length: 100) // 12…19 queued; the lane takes 12…15 and holds in load(12)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })
        stream.didRead(offset: 5000, length: 100)
        stream.didRead(offset: 5100, length: 100) // B: 52…59; A, never come back to, gives up 16…19
        #expect(prefetcher.statistics.cancelledBlocks == 4)
        stream.didRead(offset: 1200, length: 100) // back in A: 16…20; B gives up 52…59
        #expect(prefetcher.statistics.cancelledBlocks == 12)
        for block in Int64(52)...59 { stream.didRead(offset: block * 100, length: 100) } // 8 reads in B
        #expect(prefetcher.statistics.cancelledBlocks == 12, "a window's worth of reads elsewhere: A keeps 16…20")
        stream.didRead(offset: 6000, length: 100) // the ninth
        #expect(prefetcher.statistics.cancelledBlocks == 17, "A gave up 16…20, which no lane had taken")
        for _ in 0..<40 { loads.gate.signal() }
        #expect(waitFor { loads.indices.contains(68) })
        #expect(loads.indices.filter { $0 < 50 } == [12, 13, 14, 15])
    }

    @Test("A reader waits for a block a lane will load, and not for one outside the window")
    func readerWaitsForLane() {
        let prefetcher = Prefetcher(workers: 1, depth: 4, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100) // window 1…4; the lane holds in load(1)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })

        let start = ContinuousClock.now
        stream.waitForLane(toLoad: 50) // outside the window: at once
        stream.waitForLane(toLoad: 0) // the reader's own block: at once
        #expect(ContinuousClock.now - start < .milliseconds(500))

        // The waiter notes whether block 2 was loaded when its wait ended: it must have been.
        let entering = Atomic<Bool>(false)
        let loadedWhenReturned = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            entering.store(true, ordering: .relaxed)
            stream.waitForLane(toLoad: 2)
            loadedWhenReturned.store(loads.indices.contains(2), ordering: .relaxed)
            done.signal()
        }
        #expect(waitFor { entering.load(ordering: .relaxed) })
        #expect(loads.indices.isEmpty, "the lane is still held in load(1)")
        loads.gate.signal() // block 1 done; the lane goes on to 2
        loads.gate.signal() // block 2 done
        #expect(done.wait(timeout: .now() + 5) == .success)
        let loadedBeforeReturn = loadedWhenReturned.load(ordering: .relaxed)
        #expect(loadedBeforeReturn, "the reader stopped waiting before the lane loaded block 2")
        for _ in 0..<8 { loads.gate.signal() }

        // A waiting reader gives up after its limit rather than hanging on a stuck lane.
        let stuck = Loads(holding: true)
        let other = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: stuck.load)
        other.didRead(offset: 0, length: 100)
        #expect(waitFor { stuck.started.load(ordering: .relaxed) == 1 })
        let before = ContinuousClock.now
        other.waitForLane(toLoad: 1, limit: .milliseconds(200))
        #expect(ContinuousClock.now - before >= .milliseconds(150))
        other.cancel()
        for _ in 0..<8 { stuck.gate.signal() }
    }
}

@Suite("Lane probing")
struct ThroughputProbeTests {
    /// Feeds `blocks` block completions spread evenly over `seconds` from `start`; returns the step's rate if one ended.
    private func step(_ probe: inout ThroughputProbe, blocks: Int, seconds: Double, from start: inout ContinuousClock.Instant) -> Double? {
        var rate: Double?
        for _ in 0..<blocks {
            start = start.advanced(by: .milliseconds(Int64(seconds * 1000) / Int64(blocks)))
            rate = probe.blockLoaded(stepLength: blocks, now: start) ?? rate
        }
        return rate
    }

    @Test("Lanes double while each doubling raises the rate by 10% or more, and go back when one falls short in two steps running")
    func growsThenReverts() throws {
        var probe = ThroughputProbe()
        var now = ContinuousClock.now
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil) // the first block only starts the clock
        let warmUp = try #require(step(&probe, blocks: 8, seconds: 2, from: &now)) // a slow start decides nothing
        #expect(probe.decide(rate: warmUp, lanes: 1) == .keep)
        let one = try #require(step(&probe, blocks: 8, seconds: 0.8, from: &now))
        #expect(probe.decide(rate: one, lanes: 1) == .grow)
        // The second lane starting: no faster yet, which is measured again rather than undone.
        let starting = try #require(step(&probe, blocks: 8, seconds: 0.8, from: &now))
        #expect(probe.decide(rate: starting, lanes: 2) == .keep)
        let two = try #require(step(&probe, blocks: 8, seconds: 0.4, from: &now)) // twice as fast
        #expect(probe.decide(rate: two, lanes: 2) == .grow)
        #expect(probe.decide(rate: try #require(step(&probe, blocks: 8, seconds: 0.39, from: &now)), lanes: 4) == .keep)
        let four = try #require(step(&probe, blocks: 8, seconds: 0.38, from: &now)) // barely faster, again
        #expect(probe.decide(rate: four, lanes: 4) == .revert(2))
        #expect(!probe.probing)
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil)
        #expect(probe.decide(rate: 1_000, lanes: 2) == .keep)
    }

    /// Pins `ThroughputProbe.requiredGain` (README: "by 10% or more"): a doubling that gains 12%
    /// keeps growing, one that gains 8% goes back. Rates are exact: block completions at fixed instants.
    @Test("The gain that keeps a doubling is 10%: 12% keeps growing, 8% goes back", arguments: [(1.12, true), (1.08, false)])
    func tenPercentThreshold(gain: Double, grows: Bool) throws {
        var probe = ThroughputProbe()
        var now = ContinuousClock.now
        func step(blocksPerSecond: Double) -> Double? {
            var rate: Double?
            for _ in 0..<8 {
                now = now.advanced(by: .nanoseconds(Int64((1e9 / blocksPerSecond).rounded())))
                rate = probe.blockLoaded(stepLength: 8, now: now) ?? rate
            }
            return rate
        }
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil)
        let warmUp = try #require(step(blocksPerSecond: 100))
        #expect(probe.decide(rate: warmUp, lanes: 1) == .keep)
        let one = try #require(step(blocksPerSecond: 100))
        #expect(probe.decide(rate: one, lanes: 1) == .grow)
        let two = try #require(step(blocksPerSecond: 100 * gain))
        #expect(abs(two / one - gain) < 0.001, "measured gain \(two / one)")
        #expect(probe.decide(rate: two, lanes: 2) == (grows ? .grow : .keep), "a gain of \(gain)")
        if !grows { // falling short is measured once more before the lanes go back
            #expect(probe.decide(rate: try #require(step(blocksPerSecond: 100 * gain)), lanes: 2) == .revert(1))
        }
        #expect(probe.probing == grows)
    }

    /// The lanes ran out of work half way through a step (a loader pausing to import its framework,
    /// or to copy a tensor out): the step is dropped, not timed across the pause, which would make
    /// the second lane look like a loss.
    @Test("A step during which the lanes ran out of work is not measured")
    func dryLanesRestartTheStep() throws {
        var probe = ThroughputProbe()
        var now = ContinuousClock.now
        _ = probe.blockLoaded(stepLength: 8, now: now)
        let warmUp = try #require(step(&probe, blocks: 8, seconds: 0.1, from: &now))
        #expect(probe.decide(rate: warmUp, lanes: 1) == .keep)
        let one = try #require(step(&probe, blocks: 8, seconds: 0.1, from: &now))
        #expect(probe.decide(rate: one, lanes: 1) == .grow)
        for _ in 0..<4 { // two lanes: half a step, twice as fast as one
            now = now.advanced(by: .microseconds(6_250))
            #expect(probe.blockLoaded(stepLength: 8, now: now) == nil)
        }
        probe.restartStep() // then nothing to load for a second
        now = now.advanced(by: .seconds(1))
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil) // the first block starts the clock again
        let two = try #require(step(&probe, blocks: 8, seconds: 0.05, from: &now))
        #expect(probe.decide(rate: two, lanes: 2) == .grow, "measured \(two) blocks/s with two lanes against \(one) with one")
    }

    @Test("A source that gains nothing from a second lane stays at one")
    func bandwidthBoundStaysAtOne() throws {
        var probe = ThroughputProbe()
        var now = ContinuousClock.now
        _ = probe.blockLoaded(stepLength: 8, now: now)
        let warmUp = try #require(step(&probe, blocks: 8, seconds: 0.3, from: &now))
        #expect(probe.decide(rate: warmUp, lanes: 1) == .keep)
        let one = try #require(step(&probe, blocks: 8, seconds: 0.1, from: &now))
        #expect(probe.decide(rate: one, lanes: 1) == .grow)
        #expect(probe.decide(rate: try #require(step(&probe, blocks: 8, seconds: 0.12, from: &now)), lanes: 2) == .keep) // once more
        let two = try #require(step(&probe, blocks: 8, seconds: 0.12, from: &now)) // slower: the source was the limit
        #expect(probe.decide(rate: two, lanes: 2) == .revert(1))
    }
}
