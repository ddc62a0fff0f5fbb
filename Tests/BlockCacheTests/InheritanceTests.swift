import Logging
import Synchronization
import SystemPackage
import Testing

@testable import BlockCache

#if canImport(Glibc)
import Glibc
#endif

/// Reads a block through `fetch`; returns its bytes and whether it had to be loaded.
private func read(_ cache: BlockCache, _ file: FileVersion, _ index: Int64) throws -> (bytes: [UInt8], loaded: Bool) {
    let (block, loaded) = try fetchBlock(cache, file, index)
    return (withExtendedLifetime(block) { Array(block.bytes) }, loaded)
}

/// Copies of the surrendered files' descriptors, as a successor receives them (the originals stay with the old cache).
private func handOver(_ cache: BlockCache) throws -> (kept: SurrenderedMemory, files: [MemoryFilePair]) {
    let surrendered = try #require(cache.surrender(waitingUntil: .now + .seconds(5)))
    return (surrendered, surrendered.files.map { MemoryFilePair(memory: dup($0.memory), ledger: dup($0.ledger), name: $0.name) })
}

/// A load of block `index` that writes `count` bytes into its range and then fails (a crash mid-load, as a successor sees it).
private func cutLoad(_ cache: BlockCache, _ file: FileVersion, _ index: Int64, writing count: Int) throws {
    struct Cut: Error {}
    #expect(throws: Cut.self) {
        _ = try cache.fetch(for: BlockKey(file: file, index: index), length: blockSize) { buffer in
            try [UInt8](repeating: 0xAB, count: count).withUnsafeBytes { try buffer.store($0) }
            throw Cut()
        }
    }
}

private func allocatedBytes(_ descriptor: Int32) -> Int {
    var attributes = stat()
    fstat(descriptor, &attributes)
    return Int(attributes.st_blocks) * 512
}

@Suite("Handing the cache to another daemon: memory files, ledgers, holds")
struct InheritanceTests {
    @Test("A successor adopts the memory files: the blocks loaded before are hits with the same bytes, the rest load")
    func successorHitsWhatWasLoaded() throws {
        let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let whole = version(1, blocks: 3, extra: 100), partial = version(2, blocks: 6)
        try load(first, whole, 0..<4)
        try load(first, partial, 1..<4)
        let (kept, files) = try handOver(first)
        #expect(files.count == 2)

        let second = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let report = second.adopt(files)
        #expect(report.files == 2 && report.blocks == 7 && report.dropped.isEmpty, "\(report)")
        #expect(second.statistics.residentBytes == first.statistics.residentBytes)
        for index in Int64(0)..<4 {
            let got = try read(second, whole, index)
            #expect(!got.loaded && got.bytes == bytes(whole, index, count: length(whole, index)))
        }
        for index in Int64(0)..<6 {
            let got = try read(second, partial, index)
            #expect(got.loaded == !(1..<4).contains(index), "block \(index)")
            #expect(got.bytes == bytes(partial, index, count: blockSize))
        }
        withExtendedLifetime(kept) {}
    }

    @Test("Once surrendered, the old cache letting go of its blocks punches nothing the successor serves")
    func surrenderedCacheTouchesNothing() throws {
        var first: BlockCache? = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(3, blocks: 4)
        try load(first!, file, 0..<4)
        var handed: (kept: SurrenderedMemory, files: [MemoryFilePair])? = try handOver(first!)
        let second = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        #expect(second.adopt(handed!.files).blocks == 4)
        handed = nil
        first = nil // every block of the old cache is released here
        for index in Int64(0)..<4 {
            let got = try read(second, file, index)
            #expect(!got.loaded && got.bytes == bytes(file, index, count: blockSize), "block \(index) changed under the successor")
        }
    }

    @Test("A ledger altered after it was written, of another format, or of another block size drops its file and keeps the others")
    func badLedgersAreDropped() throws {
        for damage in ["record", "format", "block size"] {
            let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
            let bad = version(4, blocks: 2), good = version(5, blocks: 2)
            try load(first, bad, 0..<2)
            try load(first, good, 0..<2)
            let (kept, files) = try handOver(first)
            let badFile = try #require(files.first { isLedger($0, of: bad) })
            var successorBlockSize = blockSize
            switch damage {
            case "record": _ = [UInt8(0xEE)].withUnsafeBytes { pwrite(badFile.ledger, $0.baseAddress, 1, 64 + 20) }
            case "format": _ = withUnsafeBytes(of: UInt32(2).littleEndian) { pwrite(badFile.ledger, $0.baseAddress, 4, 8) }
            default: successorBlockSize = 2 * blockSize
            }
            let second = BlockCache(capacity: 64 * blockSize, blockSize: successorBlockSize)
            let report = second.adopt(files)
            if damage == "block size" {
                #expect(report.files == 0 && report.dropped.count == 2, "\(report)")
                #expect(report.dropped.allSatisfy { $0.contains("8192") }, "\(report.dropped)")
            } else {
                #expect(report.files == 1 && report.dropped.count == 1, "\(damage): \(report)")
                #expect(report.dropped.first?.contains(damage == "record" ? "checksum" : "format 2") == true, "\(report.dropped)")
                #expect(try read(second, bad, 0).loaded, "a block of the dropped file was served from memory")
                #expect(try read(second, good, 0).loaded == false)
            }
            withExtendedLifetime(kept) {}
        }
    }

    @Test("A block whose load failed after writing part of its range is not marked, so a successor loads it again")
    func unfinishedLoadsAreNotInherited() throws {
        let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(6, blocks: 3)
        try load(first, file, 0..<1)
        try cutLoad(first, file, 1, writing: blockSize / 2)
        // A short block (the source ended early) is served, but not as complete.
        _ = try first.fetch(for: BlockKey(file: file, index: 2), length: blockSize) { buffer in
            try [UInt8](repeating: 0xCD, count: 100).withUnsafeBytes { try buffer.store($0) }
            return (100, .source)
        }
        let (kept, files) = try handOver(first)
        let second = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        #expect(second.adopt(files).blocks == 1)
        #expect(try read(second, file, 0).loaded == false)
        let again = try read(second, file, 1)
        #expect(again.loaded && again.bytes == bytes(file, 1, count: blockSize))
        #expect(try read(second, file, 2).loaded)
        withExtendedLifetime(kept) {}
    }

    @Test(
        "The pages a load cut short left in an inherited file go back through the cache's one punch; its failure is told, not counted"
    )
    func unmarkedPagesGoThroughThePunch() throws {
        let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(8, blocks: 3)
        try load(first, file, 0..<1)
        try cutLoad(first, file, 1, writing: blockSize)
        let (kept, files) = try handOver(first)
        final class Punches: Sendable {
            let ranges = Mutex<[Range<Int64>]>([])
        }
        let punches = Punches()
        let unreturned = UnreturnedMemory(logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })) { _, offset, length in
            punches.ranges.withLock { $0.append(offset..<(offset + length)) }
            return .ioError
        }
        let second = BlockCache(capacity: 64 * blockSize, blockSize: blockSize, unreturned: unreturned)
        #expect(second.adopt(files).blocks == 1)
        #expect(punches.ranges.withLock { $0 } == [Int64(blockSize)..<Int64(3 * blockSize)], "blocks 1 and 2 in one punch")
        #expect(second.statistics.unreturnedBytes == 0 && second.statistics.holePunchFailures == 0)
        withExtendedLifetime(kept) {}
    }

    @Test("A successor with a smaller capacity keeps what fits and gives the rest of the memory back")
    func smallerCapacityKeepsWhatFits() throws {
        let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let file = version(7, blocks: 8)
        try load(first, file, 0..<8)
        let (kept, files) = try handOver(first)
        let before = allocatedBytes(files[0].memory)
        let second = BlockCache(capacity: 3 * blockSize, blockSize: blockSize)
        let report = second.adopt(files)
        #expect(report.blocks == 3 && report.blocksOverCapacity == 5, "\(report)")
        #expect(second.statistics.residentBytes <= 3 * blockSize)
        #expect(allocatedBytes(files[0].memory) <= before - 5 * blockSize, "the blocks let go still hold memory")
        withExtendedLifetime(kept) {}
    }

    @Test("A file held for passthrough readers is taken whole whatever the capacity, and its holds go to the opens that claim them")
    func heldFilesStayHeld() throws {
        let first = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let held = version(8, blocks: 4), other = version(9, blocks: 4)
        try load(first, held, 0..<4)
        try load(first, other, 0..<4)
        let hold = try #require(first.hold(held))
        let (kept, files) = try handOver(first)
        let second = BlockCache(capacity: 2 * blockSize, blockSize: blockSize)
        let report = second.adopt(files)
        #expect(report.heldFiles == 1 && report.blocks == 4, "\(report)") // the held file whole, nothing of the other
        #expect(second.statistics.heldFiles == 1)
        let claimed = try #require(second.claimInheritedHold(held))
        #expect(second.claimInheritedHold(held) == nil, "a hold was claimed twice")
        #expect(second.unclaimedInheritedHolds == 0)
        second.release(claimed)
        #expect(second.statistics.heldFiles == 0)
        withExtendedLifetime((kept, hold)) {}
    }
}

/// Whether a ledger's record names `file` (decoded as the cache does).
private func isLedger(_ file: MemoryFilePair, of version: FileVersion) -> Bool {
    var header = [UInt8](repeating: 0, count: 4096)
    let count = header.withUnsafeMutableBytes { pread(file.ledger, $0.baseAddress, 4096, 0) }
    guard count > 64 else { return false }
    return header.withUnsafeBytes { raw in
        var reader = ByteReader(UnsafeRawBufferPointer(rebasing: raw[64..<count]))
        return (try? reader.readVersion()) == version
    }
}
