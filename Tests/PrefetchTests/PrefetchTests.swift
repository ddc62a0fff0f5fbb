import Dispatch
import Foundation
@testable import Prefetch
import Synchronization
import Testing

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
        stream.didRead(offset: 0, length: 100)      // block 0 → 1, 2, 3
        #expect(waitFor { loads.indices == [1, 2, 3] })
        stream.didRead(offset: 100, length: 100)    // block 1 → up to 4
        #expect(waitFor { loads.indices == [1, 2, 3, 4] })
        stream.didRead(offset: 100, length: 100)    // the same read again queues nothing new
        usleep(50_000)
        #expect(loads.indices == [1, 2, 3, 4])
    }

    @Test("Random reads queue nothing; the end of the file bounds the depth")
    func randomAndEndOfFile() {
        let prefetcher = Prefetcher(workers: 2, depth: 8)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 10, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 500, length: 10)
        stream.didRead(offset: 200, length: 10)
        usleep(50_000)
        #expect(loads.indices.isEmpty)
        stream.didRead(offset: 210, length: 90)     // continues from 210: sequential, block 2 → 3…9
        #expect(waitFor { loads.indices == Array(3...9) })
    }

    @Test("One lane reads the window front to back through one kept context")
    func oneLaneInOrder() {
        let prefetcher = Prefetcher(workers: 3, depth: 10, chunkBlocks: 4, maximumLanes: 1)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)
        #expect(waitFor { loads.indices == Array(1...10) })
        for offset in stride(from: Int64(100), to: 1000, by: 100) { stream.didRead(offset: offset, length: 100) }
        #expect(waitFor { loads.indices == Array(1...19) })
        #expect(loads.order == Array(1...19), "three workers, but one lane: strictly in order")
        #expect(Set(loads.lanes.withLock { $0 }).count == 1)
        #expect(loads.opened.load(ordering: .relaxed) == 1, "the lane keeps its context from chunk to chunk")
        #expect(stream.currentLaneLimit == 1)
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
        stream.didRead(offset: 0, length: 100)      // the lane blocks in load(1)
        #expect(waitFor { prefetcher.statistics.queuedBlocks == 10 && loads.started.load(ordering: .relaxed) == 1 })
        stream.cancel()
        loads.gate.signal()                         // let load(1) finish
        // Block 1 was being loaded and completes; the other nine are dropped.
        #expect(waitFor { prefetcher.statistics.cancelledBlocks == 9 })
        #expect(loads.indices == [1])
        stream.didRead(offset: 100, length: 100)    // a cancelled stream queues nothing
        usleep(50_000)
        #expect(prefetcher.statistics.queuedBlocks == 10)
    }

    @Test("Reads ahead inside the window (the kernel's readahead) leave its blocks to the lane")
    func readaheadInsideTheWindow() {
        let prefetcher = Prefetcher(workers: 1, depth: 8, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)      // window 1…8; the lane holds in load(1)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })
        stream.didRead(offset: 100, length: 100)
        stream.didRead(offset: 500, length: 100)    // readahead of block 5, ahead of the lane
        #expect(prefetcher.statistics.cancelledBlocks == 0, "nothing in the window is given up")
        for _ in 0..<20 { loads.gate.signal() }
        #expect(waitFor { loads.indices == Array(1...9) }) // 500 is past the detector's tolerance: no new window
        #expect(loads.order == Array(1...9), "the lane loaded block 5 in its turn")
    }

    @Test("A reader waits for a block a lane will load, and not for one outside the window")
    func readerWaitsForLane() {
        let prefetcher = Prefetcher(workers: 1, depth: 4, maximumLanes: 1)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)      // window 1…4; the lane holds in load(1)
        #expect(waitFor { loads.started.load(ordering: .relaxed) == 1 })

        let start = ContinuousClock.now
        stream.waitForLane(toLoad: 50)              // outside the window: at once
        stream.waitForLane(toLoad: 0)               // the reader's own block: at once
        #expect(ContinuousClock.now - start < .milliseconds(500))

        let waited = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            stream.waitForLane(toLoad: 2)
            waited.store(true, ordering: .relaxed)
            done.signal()
        }
        usleep(100_000)
        let waitedEarly = waited.load(ordering: .relaxed)
        #expect(!waitedEarly, "block 2 is still to come from the lane")
        loads.gate.signal()                         // block 1 done; the lane goes on to 2
        loads.gate.signal()                         // block 2 done
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(loads.indices.contains(2))
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

    @Test("Lanes double while each doubling raises the rate by a quarter, and go back when one does not")
    func growsThenReverts() throws {
        var probe = ThroughputProbe()
        var now = ContinuousClock.now
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil) // the first block only starts the clock
        let warmUp = try #require(step(&probe, blocks: 8, seconds: 2, from: &now)) // a slow start decides nothing
        #expect(probe.decide(rate: warmUp, lanes: 1) == .keep)
        let one = try #require(step(&probe, blocks: 8, seconds: 0.8, from: &now))
        #expect(probe.decide(rate: one, lanes: 1) == .grow)
        let two = try #require(step(&probe, blocks: 8, seconds: 0.4, from: &now)) // twice as fast
        #expect(probe.decide(rate: two, lanes: 2) == .grow)
        let four = try #require(step(&probe, blocks: 8, seconds: 0.38, from: &now)) // barely faster
        #expect(probe.decide(rate: four, lanes: 4) == .revert(2))
        #expect(!probe.probing)
        #expect(probe.blockLoaded(stepLength: 8, now: now) == nil)
        #expect(probe.decide(rate: 1_000, lanes: 2) == .keep)
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
        let two = try #require(step(&probe, blocks: 8, seconds: 0.12, from: &now)) // slower: the source was the limit
        #expect(probe.decide(rate: two, lanes: 2) == .revert(1))
    }
}
