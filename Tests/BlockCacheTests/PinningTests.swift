import Dispatch
import Testing

@testable import BlockCache

private func file(_ inode: UInt64, blocks: Int64, mtime: Int64 = 100) -> FileVersion {
    FileVersion(
        identity: .inode(device: 7, inode: inode), size: blocks * Int64(blockSize),
        modified: Timestamp(seconds: mtime, nanoseconds: 0), changed: Timestamp(seconds: mtime, nanoseconds: 0)
    )
}

/// Loads every block of `file` through the cache; returns how many reached the loader.
@discardableResult
private func readAll(_ cache: BlockCache, _ file: FileVersion) throws -> Int {
    var loads = 0
    for index in 0..<(file.size / Int64(blockSize)) {
        _ = try cache.block(for: BlockKey(file: file, index: index), length: blockSize) { buffer in
            loads += 1
            buffer.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: index))
            return buffer.count
        }
    }
    return loads
}

private func isFullyResident(_ cache: BlockCache, _ file: FileVersion) -> Bool {
    (0..<(file.size / Int64(blockSize))).allSatisfy { cache.contains(BlockKey(file: file, index: $0)) }
}

@Suite("Pinning")
struct PinningTests {
    @Test("Pinned blocks survive reading several times the capacity of other files")
    func pinnedBlocksAreNotEvicted() throws {
        let cache = BlockCache(capacity: 16 * blockSize, blockSize: blockSize)
        let base = file(1, blocks: 6)
        try cache.pin([base])
        #expect(try readAll(cache, base) == 6)
        for inode in 2...9 { try readAll(cache, file(UInt64(inode), blocks: 8)) }
        #expect(isFullyResident(cache, base))
        #expect(try readAll(cache, base) == 0, "a pinned block went back to the source")
        let stats = cache.statistics
        #expect(stats.pinnedBytes == 6 * blockSize && stats.pinnedFiles == 1 && stats.pinnedResidentBytes == 6 * blockSize)
        #expect(stats.evictions > 0)
    }

    @Test("Resident, reserved and pinned bytes never exceed the capacity")
    func capacityBoundHoldsWithPins() throws {
        let cache = BlockCache(capacity: 10 * blockSize, blockSize: blockSize)
        try readAll(cache, file(1, blocks: 10))
        #expect(cache.statistics.residentBytes == 10 * blockSize)
        // Pinning 4 blocks of a file not yet read evicts 4 LRU blocks straight away.
        let pinned = file(2, blocks: 4)
        try cache.pin([pinned])
        var stats = cache.statistics
        #expect(stats.residentBytes + stats.pinnedBytes - stats.pinnedResidentBytes <= stats.capacity)
        #expect(stats.residentBytes == 6 * blockSize)
        try readAll(cache, pinned)
        try readAll(cache, file(3, blocks: 20))
        stats = cache.statistics
        #expect(stats.residentBytes - stats.pinnedResidentBytes + stats.pinnedBytes <= stats.capacity)
        #expect(stats.residentBytes == 10 * blockSize) // 4 pinned + 6 evictable
    }

    @Test("Already-resident blocks of a file being pinned are kept, not loaded again")
    func pinningAdoptsResidentBlocks() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let model = file(1, blocks: 4)
        try readAll(cache, model)
        try cache.pin([model])
        #expect(cache.keysByRecency.isEmpty, "pinned blocks must leave the LRU list")
        #expect(cache.statistics.pinnedResidentBytes == 4 * blockSize)
        #expect(try readAll(cache, model) == 0)
    }

    @Test("A pin larger than the capacity left is refused whole, and changes nothing")
    func oversizedPinIsRefused() throws {
        let cache = BlockCache(capacity: 10 * blockSize, blockSize: blockSize)
        try cache.pin([file(1, blocks: 6)])
        let before = cache.statistics
        #expect(throws: PinRefused.self) { try cache.pin([file(2, blocks: 2), file(3, blocks: 3)]) }
        #expect(throws: PinRefused.self) { try cache.pin([file(4, blocks: 11)]) }
        #expect(cache.statistics == before)
        #expect(!cache.isPinned(file(2, blocks: 2)))
        do {
            try cache.pin([file(5, blocks: 5)])
            Issue.record("pinning beyond the capacity succeeded")
        } catch {
            #expect(error.requestedBytes == 5 * blockSize && error.pinnedBytes == 6 * blockSize)
            #expect(error.description.contains("capacity"))
        }
        try cache.pin([file(6, blocks: 4)]) // exactly fills it
        #expect(cache.statistics.pinnedBytes == cache.capacity)
        // With every byte pinned, other reads are still served, just not kept.
        #expect(try readAll(cache, file(7, blocks: 3)) == 3)
        #expect(try readAll(cache, file(7, blocks: 3)) == 3)
        #expect(cache.statistics.residentBytes == 0)
    }

    @Test("Pinning the same file twice counts it once")
    func repeatedPinIsIdempotent() throws {
        let cache = BlockCache(capacity: 10 * blockSize, blockSize: blockSize)
        try cache.pin([file(1, blocks: 6)])
        try cache.pin([file(1, blocks: 6), file(1, blocks: 6)])
        #expect(cache.statistics.pinnedBytes == 6 * blockSize && cache.statistics.pinnedFiles == 1)
    }

    @Test("Unpinning releases the bytes; the blocks become ordinary, evictable blocks")
    func unpinReleases() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let model = file(1, blocks: 4)
        try cache.pin([model])
        try readAll(cache, model)
        #expect(cache.unpin([model.identity]) == (1, 4 * blockSize))
        var stats = cache.statistics
        #expect(stats.pinnedBytes == 0 && stats.pinnedFiles == 0 && stats.pinnedResidentBytes == 0)
        #expect(stats.residentBytes == 4 * blockSize)
        #expect(cache.keysByRecency.count == 4)
        #expect(cache.unpin([model.identity]) == (0, 0), "a second unpin finds nothing")
        try readAll(cache, file(2, blocks: 8))
        stats = cache.statistics
        #expect(!isFullyResident(cache, model) && stats.residentBytes == 8 * blockSize)
    }

    @Test("Pinning a new version of a file replaces the old version's pin and drops its blocks")
    func newVersionReplacesPin() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let old = file(1, blocks: 4, mtime: 100)
        let new = file(1, blocks: 6, mtime: 200)
        try cache.pin([old])
        try readAll(cache, old)
        try cache.pin([new]) // 6 fits only because the old pin's 4 are given back
        let stats = cache.statistics
        #expect(stats.pinnedBytes == 6 * blockSize && stats.pinnedFiles == 1 && stats.pinnedResidentBytes == 0)
        #expect(!cache.isPinned(old) && cache.isPinned(new))
        #expect(cache.unpinAll() == (1, 6 * blockSize))
    }

    @Test("A block loading while its file is pinned or unpinned lands in the right place")
    func pinChangesDuringALoad() throws {
        let cache = BlockCache(capacity: 4 * blockSize, blockSize: blockSize)
        let model = file(1, blocks: 2)
        let loading = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = try? cache.block(for: BlockKey(file: model, index: 0), length: blockSize) { buffer in
                loading.signal()
                release.wait()
                return buffer.count
            }
            done.signal()
        }
        loading.wait()
        try cache.pin([model]) // pinned while its block 0 loads with an LRU reservation
        release.signal()
        done.wait()
        var stats = cache.statistics
        #expect(stats.pinnedResidentBytes == blockSize && stats.reservedBytes == 0)
        #expect(cache.keysByRecency.isEmpty)

        cache.unpin([model.identity])
        stats = cache.statistics
        #expect(stats.residentBytes == blockSize && stats.pinnedBytes == 0 && cache.keysByRecency.count == 1)
    }
}
