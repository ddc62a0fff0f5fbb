import BlockCache
import Foundation
import Logging
import MirrorFS
import SourceTree
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Source files that change under an open file, or end before their stated size: reads never return bytes the file did not hold.
@Suite("Mirror: sources changing under open files")
struct ChangingSourceTests {
    @Test("A file that shrinks after open: cached blocks still read, any other block is ESTALE, never zeros")
    func shrinkAfterOpen() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        let content = randomBytes(200_000, seed: 30) // blocks 0...3
        try fixture.write("shrinking", content)
        let node = try fixture.lookup("shrinking")
        let opened = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(try fixture.read(opened, at: 0, count: 1000) == Array(content[..<1000])) // caches block 0

        guard truncate(fixture.path("shrinking"), 70_000) == 0 else { throw Errno(rawValue: errno) }
        let errorsBefore = try #require(fixture.filesystem.figures[.sourceErrors])

        // Block 0 was cached for this version; its bytes are still the file's.
        #expect(try fixture.read(opened, at: 0, count: 65_536) == Array(content[..<65_536]))
        // Past the new end, in a block that now ends early, and in one now wholly gone.
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.read(opened, at: 100_000, count: 1000) }
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.read(opened, at: 150_000, count: 1000) }
        // Still inside the new size, but not cached: the file is no longer the version that was opened.
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.read(opened, at: 65_536, count: 100) }
        // A read spanning a cached block and a gone one fails whole rather than returning a part.
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.read(opened, at: 60_000, count: 10_000) }
        #expect(fixture.filesystem.figures[.sourceErrors] == errorsBefore + 4)
        #expect(fixture.filesystem.cache.statistics.residentBlocks == 1, "a block of a changed file was cached")

        // A new open sees the new size and exactly the remaining bytes.
        let reopened = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(reopened.versionChanged && !reopened.keepKernelCache)
        #expect(reopened.version.size == 70_000)
        #expect(try fixture.read(reopened, at: 0, count: 200_000) == Array(content[..<70_000]))
        #expect(try fixture.read(reopened, at: 70_000, count: 100).isEmpty)
        #expect(try fixture.read(reopened, at: 100_000, count: 100).isEmpty)
    }

    @Test("A rewrite that restores size and mtime is still caught at the next open, by the ctime")
    func rewriteRestoringMtime() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        let content = randomBytes(100_000, seed: 31)
        try fixture.write("copied", content)
        try fixture.setTimes("copied", modified: timespec(tv_sec: 1_500_000_000, tv_nsec: 123))
        let before = try fixture.status("copied")
        let node = try fixture.lookup("copied")
        let opened = try fixture.filesystem.open(node: node, flags: O_RDONLY)

        usleep(20_000) // let the clock move on, so that the ctime differs
        let replacement = randomBytes(100_000, seed: 32)
        try fixture.overwrite("copied", with: replacement)
        try fixture.setTimes("copied", modified: before.st_mtim) // as cp -p or rsync -t would
        let after = try fixture.status("copied")
        #expect(after.st_size == before.st_size && sameTime(after.st_mtim, before.st_mtim))
        try #require(!sameTime(after.st_ctim, before.st_ctim), "the ctime did not change; the test cannot tell versions apart")

        // The file already open reads its inode as it is now, as on a local file system:
        // the check after each load compares size and mtime, which this rewrite restored.
        #expect(try fixture.read(opened, at: 0, count: 1000) == Array(replacement[..<1000]))
        let reopened = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(reopened.versionChanged && !reopened.keepKernelCache)
        #expect(try fixture.read(reopened, at: 0, count: 100_000) == replacement)
    }

    @Test("A file renamed over: open files never see the new bytes; a new lookup and open read them")
    func renamedOver() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        let old = randomBytes(150_000, seed: 33)
        let new = randomBytes(150_000, seed: 34)
        try fixture.write("data", old)
        try fixture.write("data.tmp", new)
        let oldNode = try fixture.lookup("data")
        let opened = try fixture.filesystem.open(node: oldNode, flags: O_RDONLY)
        #expect(try fixture.read(opened, at: 0, count: 10) == Array(old[..<10])) // caches block 0

        guard rename(fixture.path("data.tmp"), fixture.path("data")) == 0 else { throw Errno(rawValue: errno) }
        // The cached block still answers with the old file's bytes.
        #expect(try fixture.read(opened, at: 0, count: 65_536) == Array(old[..<65_536]))
        // Other blocks: the old inode's bytes are intact. Unlinking it changed its ctime, but not
        // its size or mtime, so they load normally; the new file's bytes never appear here.
        for offset in [65_536, 140_000] {
            #expect(try fixture.read(opened, at: Int64(offset), count: 1000) == expectedRead(old, at: offset, count: 1000))
        }

        let newNode = try fixture.lookup("data")
        #expect(newNode != oldNode)
        let reopened = try fixture.filesystem.open(node: newNode, flags: O_RDONLY)
        #expect(reopened.version.identity != opened.version.identity)
        #expect(try fixture.read(reopened, at: 0, count: 150_000) == new)
        // The old node, opened again, still reaches the old inode (it is pinned by its O_PATH handle).
        let oldAgain = try fixture.filesystem.open(node: oldNode, flags: O_RDONLY)
        #expect(try fixture.read(oldAgain, at: 0, count: 150_000) == old)
    }

    @Test(
        "A source that ends before its stated size (a sysfs file) gives only its bytes and no reads past the short block",
        .enabled(if: FileManager.default.isReadableFile(atPath: "/sys/devices/system/cpu/online")))
    func sourceEndsEarly() throws {
        let expected = Array(try Data(contentsOf: URL(fileURLWithPath: "/sys/devices/system/cpu/online")))
        let filesystem = try MirrorFilesystem(
            sourceRoot: try PathHandle.openRoot("/sys/devices/system/cpu"),
            cache: BlockCache(capacity: 1 << 20, blockSize: 16),
            logger: Logger(label: "test")
        )
        let (node, attributes) = try "online".withCString { try filesystem.lookup(parent: MirrorFilesystem.rootNode, name: $0) }
        try #require(attributes.st_size > 16 && expected.count < 16, "not the short sysfs file this test expects")
        let file = try filesystem.open(node: node, flags: O_RDONLY)
        let slices = try filesystem.read(file, at: 0, count: Int(attributes.st_size))
        var bytes: [UInt8] = []
        for slice in slices { withExtendedLifetime(slice) { bytes.append(contentsOf: slice.bytes) } }
        #expect(bytes == expected)
        #expect(filesystem.cache.statistics.misses == 1, "blocks after the one where the source ended were read")
    }
}
