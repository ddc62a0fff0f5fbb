import Testing

@testable import BlockCache

#if canImport(Glibc)
import Glibc
#endif

@Suite("Residency: what the cache holds of a version, told without changing it")
struct ResidencyTests {
    @Test("Counts the bytes of resident blocks, pinned and held versions, and the latest use; moves no block and no counter")
    func residencyChangesNothing() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let partial = version(1, blocks: 10, extra: 100), whole = version(2, blocks: 3),
            pinned = version(3, blocks: 2), cold = version(4, blocks: 5), small = version(5, blocks: 0, extra: 10)
        let started = Int64(time(nil))
        try load(cache, partial, 0..<5)
        try load(cache, partial, 10..<11) // the short last block
        try load(cache, whole, 0..<3)
        try load(cache, small, 0..<1)
        try cache.pin([pinned])
        try load(cache, pinned, 0..<2)
        let hold = try #require(cache.hold(whole))
        defer { cache.release(hold) }

        let order = cache.keysByRecency, counters = cache.statistics
        let answers = cache.residency(of: [partial, whole, pinned, cold, small])
        #expect(cache.keysByRecency == order, "a residency lookup moved blocks in the LRU order")
        #expect(cache.statistics == counters, "a residency lookup moved a counter")

        #expect(answers.map(\.cachedBytes) == [5 * blockSize + 100, 3 * blockSize, 2 * blockSize, 0, 10])
        #expect(answers.map(\.pinned) == [false, false, true, false, false])
        #expect(answers.map(\.held) == [false, true, false, false, false])
        #expect(answers[3].lastUsed == nil)
        for answer in answers where answer.cachedBytes > 0 {
            #expect(answer.lastUsed.map { started...started + 5 ~= $0 } == true)
        }
    }
}
