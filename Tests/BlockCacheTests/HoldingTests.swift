import SystemPackage
import Testing

@testable import BlockCache

#if canImport(Glibc)
import Glibc
#endif

/// The whole content of a memory file, read through its descriptor as the kernel would.
private func contents(of descriptor: Int32, size: Int) -> [UInt8] {
    var result = [UInt8](repeating: 0, count: size)
    let count = result.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, size, 0) }
    return Array(result.prefix(max(count, 0)))
}

@Suite("Block memory in memory files, and holds for passthrough", .serialized)
struct HoldingTests {
    @Test("A wholly cached version's blocks sit in one memory file at the file's own offsets")
    func blocksLiveInTheVersionsMemoryFile() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(1, blocks: 4, extra: 100) // a shorter last block
        try load(cache, file)
        let hold = try #require(cache.hold(file))
        defer { cache.release(hold) }
        let expected = (0..<5).flatMap { bytes(file, Int64($0), count: $0 == 4 ? 100 : blockSize) }
        #expect(contents(of: hold.descriptor, size: Int(file.size)) == expected)
    }

    @Test("A hold is refused for a version not wholly in memory, and for a file smaller than a block")
    func holdNeedsTheWholeVersion() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let partial = version(2, blocks: 4)
        try load(cache, partial, 0..<3)
        #expect(cache.hold(partial) == nil)
        let small = version(3, blocks: 0, extra: 1000)
        try load(cache, small)
        #expect(cache.hold(small) == nil, "a file smaller than a block has no memory file")
        #expect(cache.statistics.heldFiles == 0)
    }

    @Test("A held version survives any eviction pressure; after its last release it is evictable again")
    func heldBlocksAreNotEvicted() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let held = version(4, blocks: 4)
        try load(cache, held)
        let first = try #require(cache.hold(held))
        let second = try #require(cache.hold(held))
        #expect(cache.statistics.heldFiles == 1 && cache.statistics.heldBytes == 4 * blockSize)
        try load(cache, version(5, blocks: 20)) // five times the room left
        #expect(try load(cache, held) == 0, "a held block was evicted")
        #expect(contents(of: first.descriptor, size: 4 * blockSize) == (0..<4).flatMap { bytes(held, Int64($0), count: blockSize) })
        #expect(cache.statistics.residentBytes <= cache.capacity)

        cache.release(first)
        try load(cache, version(6, blocks: 20))
        #expect(try load(cache, held) == 0, "still held by the second hold")
        cache.release(second)
        #expect(cache.statistics.heldFiles == 0 && cache.statistics.heldBytes == 0)
        try load(cache, version(7, blocks: 20))
        #expect(try load(cache, held) > 0, "released, the version's blocks are evictable again")
    }

    @Test("Evicted blocks give their memory back: the memory file holds only what is cached")
    func evictionPunchesTheMemoryFile() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let file = version(8, blocks: 8)
        let block = try cache.block(for: BlockKey(file: file, index: 0), length: blockSize) { buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 1)
            return blockSize
        }
        guard case .file(let memory, _) = block.backing else { Issue.record("a file of 8 blocks should use a memory file"); return }
        try load(cache, file, 1..<8)
        #expect(memory.allocatedBytes == 8 * blockSize)
        try load(cache, version(9, blocks: 6)) // evicts six of the eight
        // Block 0 is still referenced here: its range stays until this reference goes.
        #expect(memory.allocatedBytes == 3 * blockSize, "\(memory.allocatedBytes) bytes allocated")
        _ = block
    }

    @Test("A block evicted while a reader holds it is taken back by the next lookup, never loaded over")
    func evictedBlockHeldByAReaderIsTakenBack() throws {
        let cache = BlockCache(capacity: 4 * blockSize, blockSize: blockSize)
        let file = version(10, blocks: 4)
        let key = BlockKey(file: file, index: 2)
        let held = try cache.block(for: key, length: blockSize) { buffer in
            bytes(file, 2, count: blockSize).withUnsafeBytes { buffer.copyMemory(from: $0) }
            return blockSize
        }
        try load(cache, version(11, blocks: 8)) // evicts it; the reader still holds it
        #expect(!cache.contains(key))
        let again = try cache.block(for: key, length: blockSize) { buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 0xEE) // would corrupt the held block's range
            return blockSize
        }
        #expect(again === held)
        #expect(withExtendedLifetime(held) { Array(held.bytes) } == bytes(file, 2, count: blockSize))
        #expect(cache.statistics.reclaimedBlocks == 1)
    }

    @Test("Pinned and held at once: unpinning keeps the blocks while held, releasing makes them evictable")
    func pinAndHoldTogether() throws {
        let cache = BlockCache(capacity: 8 * blockSize, blockSize: blockSize)
        let file = version(12, blocks: 4)
        try cache.pin([file])
        try load(cache, file)
        let hold = try #require(cache.hold(file))
        #expect(cache.statistics.pinnedBytes == 4 * blockSize && cache.statistics.heldBytes == 0, "charged once, as pinned")
        cache.unpin([file.identity])
        #expect(cache.statistics.pinnedBytes == 0 && cache.statistics.heldBytes == 4 * blockSize, "the charge moves to the hold")
        try load(cache, version(13, blocks: 20))
        #expect(try load(cache, file) == 0, "held blocks were evicted after the unpin")
        cache.release(hold)
        try load(cache, version(14, blocks: 20))
        #expect(try load(cache, file) > 0)
        #expect(cache.statistics.heldBytes == 0 && cache.statistics.pinnedBytes == 0)
    }
}

@Suite("Runs of adjacent blocks loaded with one fill", .serialized)
struct RunTests {
    @Test("A run of missing blocks is one fill over memory laid side by side; it stops at a block already in memory")
    func oneFillPerRun() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(20, blocks: 8, extra: 300)
        try load(cache, file, 5..<6) // resident in the middle: the run from 2 must stop before it
        var fills: [(start: Int64, bytes: Int)] = []
        let loaded = try cache.loadRun(of: file, from: 2, count: 6) { start, buffers in
            fills.append((start, buffers.count * blockSize))
            for (offset, buffer) in buffers.enumerated() {
                #expect(buffer.memory.baseAddress == buffers[0].memory.baseAddress! + offset * blockSize, "side by side")
                bytes(file, start + Int64(offset), count: blockSize).withUnsafeBytes { buffer.memory.copyMemory(from: $0) }
            }
            return (buffers.count * blockSize, .source)
        }
        #expect(loaded == 3 && fills.count == 1 && fills[0].start == 2 && fills[0].bytes == 3 * blockSize)
        for index: Int64 in 2...4 {
            let block = try #require(cache.residentBlock(for: BlockKey(file: file, index: index)))
            #expect(withExtendedLifetime(block) { Array(block.bytes) } == bytes(file, index, count: blockSize))
        }
        #expect(
            try cache.loadRun(of: file, from: 5, count: 3) { _, buffers in (buffers.count * blockSize, .source) } == 0,
            "a resident first block makes no run")
        // The last, shorter block ends the file: the run is cut to the bytes the file has.
        let last = try cache.loadRun(of: file, from: 6, count: 10) { start, buffers in
            #expect(start == 6 && buffers.map(\.memory.count) == [blockSize, blockSize, 300])
            for buffer in buffers { buffer.memory.initializeMemory(as: UInt8.self, repeating: 7) }
            return (2 * blockSize + 300, .source)
        }
        #expect(last == 3 && cache.residentBlock(for: BlockKey(file: file, index: 8))?.count == 300)
    }

    @Test("A failing fill fails every block of the run, caches none, and the blocks load again later")
    func failingRun() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(21, blocks: 4)
        #expect(throws: Errno.ioError) {
            _ = try cache.loadRun(of: file, from: 0, count: 4) { _, _ in throw Errno.ioError }
        }
        #expect(cache.statistics.residentBlocks == 0 && cache.statistics.reservedBytes == 0)
        #expect(try load(cache, file) == 4)
    }

    @Test("A run filled through staging buffers lands at the blocks' offsets of the memory file; a short read fills only its bytes")
    func stagedRun() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let staging = StagingBuffers()
        let file = version(22, blocks: 4)
        let expected = (0..<4).flatMap { bytes(file, Int64($0), count: blockSize) }
        let loaded = try cache.loadRun(of: file, from: 0, count: 4) { _, buffers in
            let count = try staging.fill(buffers) { (target) throws(Errno) in
                expected.withUnsafeBytes { target.memory.copyMemory(from: $0) }
                return expected.count
            }
            return (count, .source)
        }
        #expect(loaded == 4)
        let hold = try #require(cache.hold(file))
        let memoryFileMatches = contents(of: hold.descriptor, size: Int(file.size)) == expected // a Bool: a failure prints no bytes
        #expect(memoryFileMatches)
        cache.release(hold)
        for index in 0..<4 {
            let block = try #require(cache.residentBlock(for: BlockKey(file: file, index: Int64(index))))
            withExtendedLifetime(block) { #expect(Array(block.bytes) == bytes(file, Int64(index), count: blockSize)) }
        }

        // A short read: the first block whole, the second half, the third nothing.
        let short = version(23, blocks: 3)
        let half = bytes(short, 0, count: blockSize + blockSize / 2)
        _ = try cache.loadRun(of: short, from: 0, count: 3) { _, buffers in
            let count = try staging.fill(buffers) { (target) throws(Errno) in
                half.withUnsafeBytes { target.memory.copyMemory(from: $0) }
                return half.count
            }
            return (count, .source)
        }
        let first = try #require(cache.residentBlock(for: BlockKey(file: short, index: 0)))
        let second = try #require(cache.residentBlock(for: BlockKey(file: short, index: 1)))
        withExtendedLifetime((first, second)) {
            #expect(Array(first.bytes) + Array(second.bytes) == half)
        }
    }

    @Test("A staged load computes each block's digest over the staged bytes, and the block answers with it without another pass")
    func stagedDigests() throws {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let staging = StagingBuffers()
        let file = version(24, blocks: 3)
        let half = bytes(file, 0, count: 2 * blockSize + blockSize / 2)
        let sum: @Sendable (UnsafeRawBufferPointer) -> UInt32 = { bytes in bytes.reduce(UInt32(7)) { $0 &* 31 &+ UInt32($1) } }
        _ = try cache.loadRun(of: file, from: 0, count: 3) { _, buffers in
            (
                try staging.fill(buffers, digest: sum) { (target) throws(Errno) in
                    half.withUnsafeBytes { target.memory.copyMemory(from: $0) }
                    return half.count
                }, .source
            )
        }
        for index in 0..<3 {
            let block = try #require(cache.residentBlock(for: BlockKey(file: file, index: Int64(index))))
            withExtendedLifetime(block) {
                let expected = sum(block.bytes)
                #expect(block.digest { _ in expected &+ 1 } == expected, "block \(index): the noted digest, not a new one")
            }
        }
    }
}
