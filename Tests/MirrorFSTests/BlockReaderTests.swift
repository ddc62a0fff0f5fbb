import BlockCache
import Dispatch
import Foundation
import Prefetch
import SourceTree
import Synchronization
import SystemPackage
import Testing

@testable import MirrorFS

#if canImport(Glibc)
import Glibc
#endif

/// A source under the mirror with the behaviour a test wants: latency per read, reads
/// served one at a time (a bandwidth-bound source), stalls, and failures, around the
/// real descriptor reader; and a record of which descriptor each block was read through.
final class ScriptedReader: SourceBlockIO {
    private let real = DescriptorBlockIO()
    let latency: Duration
    /// Reads go one at a time, as through a source whose bandwidth is the limit.
    private let serial: Mutex<Void>
    private let isSerial: Bool
    /// Block indexes whose reads fail with EIO, and whose reads stall until `release`.
    let failing = Mutex<Set<Int64>>([])
    let stalling = Mutex<Set<Int64>>([])
    private let released = DispatchSemaphore(value: 0)
    /// When set, a stalled read answers with this byte throughout once released (a late answer
    /// that differs from what a newer read found), and signals `lateAnswered`.
    let lateAnswer = Mutex<UInt8?>(nil)
    let lateAnswered = DispatchSemaphore(value: 0)
    private let blockSize: Int64
    /// (block index, descriptor read through) for every read, in order.
    let reads = Mutex<[(index: Int64, descriptor: Int32)]>([])

    init(blockSize: Int, latency: Duration = .zero, serial: Bool = false) {
        self.blockSize = Int64(blockSize)
        self.latency = latency
        self.serial = Mutex(())
        isSerial = serial
    }

    func release() { for _ in 0..<64 { released.signal() } }

    func read(_ file: SourceFile, through reader: SourceFile, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno)
        -> Int
    {
        let index = offset / blockSize
        if stalling.withLock({ $0.contains(index) }) {
            released.wait()
            if let byte = lateAnswer.withLock({ $0 }) {
                buffer.initializeMemory(as: UInt8.self, repeating: byte)
                defer { lateAnswered.signal() }
                return buffer.count
            }
        }
        guard !failing.withLock({ $0.contains(index) }) else { throw .ioError }
        let body = { () throws(Errno) -> Int in
            // A bandwidth-bound (serial) source takes its time per block read; a latency-bound one per request.
            let blocks = self.isSerial ? Double((buffer.count + Int(self.blockSize) - 1) / Int(self.blockSize)) : 1
            if self.latency > .zero { Thread.sleep(forTimeInterval: blocks * (self.latency / .seconds(1))) }
            return try self.real.read(file, through: reader, into: buffer, at: offset)
        }
        let count = isSerial ? try serial.withLock { _ throws(Errno) in try body() } : try body()
        // One read may fill a run of adjacent blocks: each block it covers is recorded.
        let covered = index..<max(index + 1, (offset + Int64(count) + blockSize - 1) / blockSize)
        reads.withLock { reads in for block in covered { reads.append((block, reader.descriptor.rawValue)) } }
        return count
    }

    var descriptorsUsed: Set<Int32> { Set(reads.withLock { $0.map(\.descriptor) }) }

    /// The descriptors that read blocks from `first` on: the lanes in use once probing has settled.
    func descriptors(fromBlock first: Int64) -> Set<Int32> { Set(reads.withLock { $0.filter { $0.index >= first }.map(\.descriptor) }) }
    /// Blocks read from the source, counted once per read that covered them.
    var readCount: Int { reads.withLock { $0.count } }
}

@Suite("Mirror over a scripted source: block loads and prefetch lanes", .serialized)
struct BlockReaderTests {
    static let blockSize = 64 << 10

    private func fixture(blocks: Int, reader: ScriptedReader, prefetcher: Prefetcher? = nil, timeout: Duration? = nil) throws -> (
        SourceFixture, [UInt8]
    ) {
        let fixture = try SourceFixture(
            blockSize: Self.blockSize, cacheBlocks: blocks * 2, sourceCallTimeout: timeout,
            prefetcher: prefetcher, blockIO: reader)
        let bytes = randomBytes(blocks * Self.blockSize, seed: 7)
        try fixture.write("model.bin", bytes)
        return (fixture, bytes)
    }

    /// Reads the whole file front to back in block-sized requests, as the kernel does; returns the bytes.
    private func readSequentially(_ fixture: SourceFixture, _ file: OpenFile, size: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var offset = 0
        while offset < size {
            bytes += try fixture.read(file, at: Int64(offset), count: Self.blockSize)
            offset += Self.blockSize
        }
        return bytes
    }

    @Test("A sequential reader over a bandwidth-bound source is served by one lane through one descriptor, each block read once")
    func bandwidthBoundSourceKeepsOneStream() throws {
        // 20 ms a read, one at a time: a second lane cannot raise the rate by the 10% the probe asks.
        let reader = ScriptedReader(blockSize: Self.blockSize, latency: .milliseconds(20), serial: true)
        let prefetcher = Prefetcher(workers: 4, depth: 8, chunkBlocks: 2)
        defer { prefetcher.stop() }
        let (fixture, bytes) = try fixture(blocks: 64, reader: reader, prefetcher: prefetcher)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        #expect(try readSequentially(fixture, file, size: bytes.count) == bytes)
        #expect(reader.readCount == 64, "every block from the source exactly once")
        #expect(fixture.filesystem.figures[.bytesFromSource] == UInt64(bytes.count))
        // Probing tries a second lane early on; once it has found no gain, one lane reads on alone.
        let settled = reader.descriptors(fromBlock: 40)
        #expect(settled.count == 1, "more lanes than pay off on a source that serves one read at a time: \(settled)")
    }

    @Test("Over a latency-bound source the lanes grow: several descriptors read in parallel, each block once")
    func latencyBoundSourceGrowsLanes() throws {
        let reader = ScriptedReader(blockSize: Self.blockSize, latency: .milliseconds(8))
        let prefetcher = Prefetcher(workers: 8, depth: 32, chunkBlocks: 2)
        defer { prefetcher.stop() }
        let (fixture, bytes) = try fixture(blocks: 160, reader: reader, prefetcher: prefetcher)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        #expect(try readSequentially(fixture, file, size: bytes.count) == bytes)
        #expect(reader.readCount == 160, "every block from the source exactly once")
        let settled = reader.descriptors(fromBlock: 100)
        #expect(settled.count >= 2, "the lanes never grew over a latency-bound source: \(settled.count)")
    }

    @Test("A failing block is EIO to its reader, not cached, and read again once the source recovers")
    func failuresAreNotCached() throws {
        let reader = ScriptedReader(blockSize: Self.blockSize)
        let (fixture, bytes) = try fixture(blocks: 8, reader: reader)
        reader.failing.withLock { $0 = [3] }
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        #expect(try fixture.read(file, at: 0, count: 3 * Self.blockSize) == Array(bytes[..<(3 * Self.blockSize)]))
        #expect(throws: Errno.ioError) { try fixture.read(file, at: Int64(3 * Self.blockSize), count: Self.blockSize) }
        #expect(throws: Errno.ioError) { try fixture.read(file, at: Int64(3 * Self.blockSize), count: Self.blockSize) }
        #expect(fixture.filesystem.figures[.sourceErrors] == 2)
        reader.failing.withLock { $0 = [] }
        #expect(
            try fixture.read(file, at: Int64(3 * Self.blockSize), count: Self.blockSize)
                == Array(bytes[(3 * Self.blockSize)..<(4 * Self.blockSize)]))
    }

    @Test("A stalled block read gives EIO after the source timeout, counted as a timeout; the stall ending does not poison the cache")
    func stalledReadTimesOut() throws {
        let reader = ScriptedReader(blockSize: Self.blockSize)
        let (fixture, bytes) = try fixture(blocks: 4, reader: reader, timeout: .milliseconds(300))
        defer { reader.release() }
        reader.stalling.withLock { $0 = [1] }
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        let started = ContinuousClock.now
        #expect(throws: Errno.ioError) { try fixture.read(file, at: Int64(Self.blockSize), count: Self.blockSize) }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(300) && waited < .seconds(3), "waited \(waited)")
        #expect(fixture.filesystem.figures[.sourceTimeouts] == 1)
        reader.stalling.withLock { $0 = [] }
        reader.release() // the abandoned read finishes into memory nobody sees
        #expect(
            try fixture.read(file, at: Int64(Self.blockSize), count: Self.blockSize) == Array(bytes[Self.blockSize..<(2 * Self.blockSize)]))
    }

    @Test("A read that answers after its timeout writes nothing into the cache, not even into the range a newer load of its block filled")
    func lateAnswerAfterTimeoutIsDropped() throws {
        let reader = ScriptedReader(blockSize: Self.blockSize)
        let (fixture, bytes) = try fixture(blocks: 4, reader: reader, timeout: .milliseconds(200))
        defer { reader.release() }
        reader.stalling.withLock { $0 = [1] }
        reader.lateAnswer.withLock { $0 = 0xEE }
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        let second = Array(bytes[Self.blockSize..<(2 * Self.blockSize)])
        #expect(throws: Errno.ioError) { try fixture.read(file, at: Int64(Self.blockSize), count: Self.blockSize) }
        // The block loads again, into the same range of the version's memory file, while the first read still hangs.
        reader.stalling.withLock { $0 = [] }
        #expect(try fixture.read(file, at: Int64(Self.blockSize), count: Self.blockSize) == second)
        reader.release()
        #expect(reader.lateAnswered.wait(timeout: .now() + 5) == .success)
        Thread.sleep(forTimeInterval: 0.2) // what the abandoned call does after its read returns
        // A Bool: a failure prints no bytes.
        let unchanged = try fixture.read(file, at: Int64(Self.blockSize), count: Self.blockSize) == second
        #expect(unchanged, "the late answer reached the cached block")
    }

    @Test("A reader waits for the prefetch lane that claimed its block instead of reading it through its own descriptor")
    func readersWaitForLanes() throws {
        let reader = ScriptedReader(blockSize: Self.blockSize, latency: .milliseconds(20), serial: true)
        let prefetcher = Prefetcher(workers: 2, depth: 4, chunkBlocks: 4, maximumLanes: 1)
        defer { prefetcher.stop() }
        let (fixture, bytes) = try fixture(blocks: 12, reader: reader, prefetcher: prefetcher)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        #expect(try readSequentially(fixture, file, size: bytes.count) == bytes)
        let throughReader = reader.reads.withLock { $0.filter { $0.descriptor == file.source.descriptor.rawValue }.map(\.index) }
        #expect(throughReader == [0], "blocks read through the reader's own descriptor: \(throughReader)")
        #expect(reader.readCount == 12)
    }
}
