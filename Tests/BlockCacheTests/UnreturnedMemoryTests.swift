import Logging
import Reporting
import Synchronization
import SystemPackage
import Testing

@testable import BlockCache

#if canImport(Glibc)
import Glibc
#endif

/// Giving an evicted block's memory back (a hole punched in its memory file) can fail. The cache
/// must then say so, and must not count that memory as returned: it stays counted against the
/// capacity until a load takes its range again.
@Suite("Memory not given back")
struct UnreturnedMemoryTests {
    private final class Switch: Sendable {
        let on = Atomic<Bool>(false)
    }

    @Test("A failed hole punch is counted, and its memory stays counted against the capacity until its range is loaded again")
    func failedPunchIsNotReturned() throws {
        let failing = Switch()
        var logger = Logger(label: "test")
        logger.logLevel = .critical // the failure is logged as an error, on purpose here
        let unreturned = UnreturnedMemory(logger: logger) { descriptor, offset, length in
            failing.on.load(ordering: .relaxed) ? .ioError : UnreturnedMemory.punch(descriptor, offset: offset, length: length)
        }
        let cache = BlockCache(capacity: 4 * blockSize, blockSize: blockSize, unreturned: unreturned)
        let file = version(77, blocks: 8)
        try load(cache, file, 0..<4) // the capacity is full

        failing.on.store(true, ordering: .relaxed)
        try load(cache, file, 4..<5) // evicts block 0, whose punch fails
        failing.on.store(false, ordering: .relaxed)
        var statistics = cache.statistics
        #expect(statistics.holePunchFailures == 1)
        #expect(statistics.unreturnedBytes == blockSize)
        #expect(cache.figures[.unreturnedBytes] == UInt64(blockSize) && cache.figures[.holePunchFailures] == 1)
        #expect(statistics.residentBytes == cache.capacity, "the punch failed after block 4 had its room")

        // The next load makes room for itself beside the memory not given back: one block fewer is kept.
        try load(cache, file, 5..<6)
        statistics = cache.statistics
        #expect(statistics.residentBlocks == 3, "the unreturned block's memory was counted as free")
        #expect(statistics.residentBytes + statistics.unreturnedBytes <= cache.capacity)

        // Loading block 0 again takes its range, pages and all: the memory is in use by a block again.
        try load(cache, file, 0..<1)
        statistics = cache.statistics
        #expect(statistics.unreturnedBytes == 0 && statistics.holePunchFailures == 1)
        #expect(cache.figures[.unreturnedBytes] == 0)
    }

    @Test("Memory not given back is returned when its memory file closes")
    func closedMemoryFileReturnsIt() throws {
        let failing = Switch()
        let unreturned = UnreturnedMemory(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })) { _, _, _ in
            failing.on.load(ordering: .relaxed) ? .ioError : nil
        }
        let cache = BlockCache(capacity: 3 * blockSize, blockSize: blockSize, unreturned: unreturned)
        let (first, second, third) = (version(1, blocks: 2), version(2, blocks: 2), version(3, blocks: 2))
        try load(cache, first, 0..<1)
        try load(cache, first, 1..<2)
        try load(cache, second, 0..<1)
        failing.on.store(true, ordering: .relaxed)
        try load(cache, second, 1..<2) // evicts first's block 0, whose memory is not given back
        failing.on.store(false, ordering: .relaxed)
        #expect(cache.statistics.unreturnedBytes == blockSize && cache.statistics.holePunchFailures == 1)
        try load(cache, third, 0..<1) // evicts first's block 1 (and second's block 0): first's memory file closes
        #expect(cache.statistics.unreturnedBytes == 0, "the closed memory file's pages were still counted")
        #expect(cache.statistics.holePunchFailures == 1)
    }
}
