#if canImport(Glibc)
import Glibc
#endif
import SystemPackage
import Testing
@testable import BlockCache

@Suite("Block cache: memory prepared ahead")
struct PreparedMappingsTests {
    @Test("a take refills the reserve in the background, up to its depth; every mapping is writable")
    func refillsUpToDepth() throws {
        let prepared = PreparedMappings(size: 1 << 20)
        #expect(prepared.depth == 2)
        #expect(prepared.readyCount == 0, "nothing is prepared before the first load")
        let first = try prepared.take()
        first.storeBytes(of: 0xAB, as: UInt8.self)
        munmap(first, 1 << 20)
        var waited = 0
        while prepared.readyCount < prepared.depth, waited < 500 {
            usleep(10_000)
            waited += 1
        }
        #expect(prepared.readyCount == prepared.depth)
        for _ in 0..<(prepared.depth + 2) {
            let mapping = try prepared.take()
            // Fresh anonymous memory reads as zeros and takes writes to its last byte.
            #expect(mapping.load(fromByteOffset: 12345, as: UInt8.self) == 0)
            mapping.storeBytes(of: 1, toByteOffset: (1 << 20) - 1, as: UInt8.self)
            munmap(mapping, 1 << 20)
        }
        #expect(prepared.readyCount <= prepared.depth)
    }

    @Test("blocks larger than the reserve's budget are never prepared")
    func largeBlocksAreNotPrepared() throws {
        let prepared = PreparedMappings(size: 4 << 20)
        #expect(prepared.depth == 0)
        let mapping = try prepared.take()
        munmap(mapping, 4 << 20)
        usleep(50_000)
        #expect(prepared.readyCount == 0)
    }

    @Test("whole blocks and a file's shorter last block load through the cache with the right bytes")
    func cacheLoadsUsePreparedMemory() throws {
        let cache = BlockCache(capacity: 64 << 20, blockSize: 1 << 20)
        let file = FileVersion(identity: .inode(device: 1, inode: 1), size: (5 << 20) + 100, modified: .init(seconds: 0, nanoseconds: 0), changed: .init(seconds: 0, nanoseconds: 0))
        for index in 0..<6 {
            let length = index == 5 ? 100 : 1 << 20
            let block = try cache.block(for: BlockKey(file: file, index: Int64(index)), length: length) { buffer in
                for offset in stride(from: 0, to: buffer.count, by: 4096) { buffer[offset] = UInt8(index + 1) }
                return buffer.count
            }
            #expect(block.count == length)
            withExtendedLifetime(block) {
                #expect(block.bytes[0] == UInt8(index + 1) && block.bytes[(length - 1) / 4096 * 4096] == UInt8(index + 1))
            }
        }
    }
}
