import Dispatch
import Foundation
import Prefetch
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
    /// Records loads; can hold them until released, to test cancellation.
    final class Loads: Sendable {
        let loaded = Mutex<[Int64]>([])
        let calls = Mutex<[[Int64]]>([])
        let started = Atomic<Int>(0)
        let gate = DispatchSemaphore(value: 0)
        let holding: Bool

        init(holding: Bool = false) { self.holding = holding }

        func load(_ indices: [Int64]) {
            started.add(1, ordering: .relaxed)
            if holding { gate.wait() }
            loaded.withLock { $0.append(contentsOf: indices) }
            calls.withLock { $0.append(indices) }
        }

        var indices: [Int64] { loaded.withLock { $0.sorted() } }
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

    @Test("Work goes out in chunks of adjacent blocks, each loaded in order by one worker")
    func chunks() {
        let prefetcher = Prefetcher(workers: 3, depth: 10, chunkBlocks: 4)
        let loads = Loads()
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)
        #expect(waitFor { loads.indices == Array(1...10) })
        #expect(loads.calls.withLock { $0.sorted { $0[0] < $1[0] } } == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]])
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
        let prefetcher = Prefetcher(workers: 1, depth: 10)
        let loads = Loads(holding: true)
        let stream = prefetcher.stream(blockSize: 100, blockCount: 100, isResident: { _ in false }, load: loads.load)
        stream.didRead(offset: 0, length: 100)      // the single worker blocks in load(1)
        #expect(waitFor { prefetcher.statistics.queuedBlocks == 10 && loads.started.load(ordering: .relaxed) == 1 })
        stream.cancel()
        loads.gate.signal()                         // let load(1) finish
        // Chunks of 4: the running chunk (1–4) finishes; the two queued ones (5–8, 9–10) are dropped.
        #expect(waitFor { prefetcher.statistics.cancelledBlocks == 6 })
        #expect(loads.indices == [1, 2, 3, 4])
        stream.didRead(offset: 100, length: 100)    // a cancelled stream queues nothing
        usleep(50_000)
        #expect(prefetcher.statistics.queuedBlocks == 10)
    }
}
