import BlockCache
import Dispatch
import Foundation
import MirrorFS
import Synchronization
import SystemPackage
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Mirror: lookups and nodes")
struct LookupTests {
    /// file, dir/, dir/inner, link -> file, dangling -> nowhere, dirlink -> dir
    private func makeTree() throws -> (SourceFixture, file: [UInt8], inner: [UInt8]) {
        let fixture = try SourceFixture()
        let file = randomBytes(1234, seed: 1)
        let inner = randomBytes(77, seed: 2)
        try fixture.write("file", file)
        try fixture.makeDirectory("dir")
        try fixture.write("dir/inner", inner)
        try fixture.symlink("link", to: "file")
        try fixture.symlink("dangling", to: "nowhere")
        try fixture.symlink("dirlink", to: "dir")
        return (fixture, file, inner)
    }

    @Test("Files, directories and symlinks are found with their source attributes; symlinks are not followed")
    func lookups() throws {
        let (fixture, file, inner) = try makeTree()
        let filesystem = fixture.filesystem

        let (fileNode, fileAttributes) = try fixture.lookupWithAttributes("file")
        #expect(fileType(fileAttributes) == S_IFREG)
        #expect(fileAttributes.st_size == file.count)
        #expect(fileAttributes.st_ino == (try fixture.status("file")).st_ino)
        #expect(try filesystem.attributes(of: fileNode).st_ino == fileAttributes.st_ino)

        let (dirNode, dirAttributes) = try fixture.lookupWithAttributes("dir")
        #expect(fileType(dirAttributes) == S_IFDIR)
        #expect(dirNode != fileNode)
        let (innerNode, innerAttributes) = try fixture.lookupWithAttributes("inner", in: dirNode)
        #expect(fileType(innerAttributes) == S_IFREG)
        #expect(innerAttributes.st_size == inner.count)
        #expect(innerAttributes.st_ino == (try fixture.status("dir/inner")).st_ino)
        let innerFile = try filesystem.open(node: innerNode, flags: O_RDONLY)
        #expect(try fixture.read(innerFile, at: 0, count: 4096) == inner)

        let (linkNode, linkAttributes) = try fixture.lookupWithAttributes("link")
        #expect(fileType(linkAttributes) == S_IFLNK, "lookup followed a symlink")
        #expect(linkAttributes.st_ino == (try fixture.status("link")).st_ino)
        #expect(linkNode != fileNode)
        #expect(try filesystem.linkTarget(of: linkNode) == Array("file".utf8))
        #expect(fileType(try filesystem.attributes(of: linkNode)) == S_IFLNK)

        let (danglingNode, danglingAttributes) = try fixture.lookupWithAttributes("dangling")
        #expect(fileType(danglingAttributes) == S_IFLNK)
        #expect(try filesystem.linkTarget(of: danglingNode) == Array("nowhere".utf8))

        // A symlink to a directory is not a directory to look names up in.
        let dirLinkNode = try fixture.lookup("dirlink")
        #expect(throws: Errno.notDirectory) { _ = try fixture.lookup("inner", in: dirLinkNode) }
        #expect(throws: Errno.notDirectory) { _ = try fixture.lookup("inner", in: fileNode) }
    }

    @Test("A missing name is ENOENT and counts no node")
    func missingNames() throws {
        let (fixture, _, _) = try makeTree()
        let baseline = fixture.filesystem.knownNodeCount
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try fixture.lookup("absent") }
        let dirNode = try fixture.lookup("dir")
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try fixture.lookup("absent", in: dirNode) }
        do {
            _ = try fixture.lookup("nowhere")
            Issue.record("a missing name was found")
        } catch let error as Errno {
            #expect(error == .noSuchFileOrDirectory)
        }
        #expect(fixture.filesystem.knownNodeCount == baseline + 1, "only dir was counted")
    }

    @Test("Hard links share a node; lookups are counted and forget releases the node")
    func hardLinksAndForget() throws {
        let fixture = try SourceFixture()
        try fixture.write("a", [1, 2, 3])
        try fixture.hardLink("b", to: "a")
        try fixture.write("c", [4])
        let filesystem = fixture.filesystem
        let baseline = filesystem.knownNodeCount
        #expect(baseline == 1, "only the root is known")

        let a = try fixture.lookup("a")
        #expect(try fixture.lookup("b") == a, "hard links got different nodes")
        let c = try fixture.lookup("c")
        #expect(c != a)
        #expect(filesystem.knownNodeCount == baseline + 2)

        filesystem.forget(node: a, lookups: 1) // one of its two lookups
        #expect(filesystem.knownNodeCount == baseline + 2)
        #expect(try filesystem.attributes(of: a).st_size == 3)
        filesystem.forget(node: a, lookups: 1)
        #expect(filesystem.knownNodeCount == baseline + 1)
        #expect(throws: Errno.staleNFSFileHandle) { _ = try filesystem.attributes(of: a) }

        let again = try fixture.lookup("b")
        #expect(again != a && again != c, "node IDs are never reused")
        filesystem.forget(node: again, lookups: 5) // more than counted: clamps
        filesystem.forget(node: c, lookups: 1)
        #expect(filesystem.knownNodeCount == baseline)

        filesystem.forget(node: MirrorFilesystem.rootNode, lookups: 1)
        #expect(filesystem.knownNodeCount == baseline, "the root is never forgotten")
        #expect(try fixture.lookup("a") != 0)
    }
}

@Suite("Mirror: reads through the cache")
struct ReadTests {
    @Test("Reads return the source's bytes at any offset, across block boundaries and at the end of file")
    func readsAtOffsets() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        let content = randomBytes(300_001, seed: 7) // five blocks, the last one short
        try fixture.write("model.bin", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        let block = 65_536
        let cases: [(Int, Int)] = [
            (0, 1), (0, 4096), (block - 1, 1), (block - 1, 2), (block, block), (block - 10, block + 20),
            (65_000, 2_000), (131_071, 70_000), (2 * block, 3 * block), (200_000, 200_000),
            (299_990, 4096), (300_000, 1), (300_001, 10), (400_000, 10), (0, 0), (1000, 0),
        ]
        for (offset, count) in cases {
            #expect(
                try fixture.read(file, at: Int64(offset), count: count) == expectedRead(content, at: offset, count: count),
                "offset \(offset) count \(count)")
        }
        var random = SplitMix64(seed: 99)
        var mismatches: [(Int, Int)] = []
        for _ in 0..<200 {
            let offset = Int.random(in: 0...content.count + 100, using: &random)
            let count = Int.random(in: 1...3 * block, using: &random)
            if try fixture.read(file, at: Int64(offset), count: count) != expectedRead(content, at: offset, count: count) {
                mismatches.append((offset, count))
            }
        }
        #expect(mismatches.isEmpty, "wrong bytes at \(mismatches.prefix(5))")
        #expect(try fixture.read(file, at: 0, count: 1 << 20) == content)
        #expect(fixture.filesystem.cache.statistics.loadedBytes == UInt64(content.count), "each block loaded once")
        #expect(fixture.filesystem.figures[.sourceErrors] == 0)
    }

    @Test("A second read of the same range is a cache hit")
    func rereadIsAHit() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        let content = randomBytes(300_001, seed: 8)
        try fixture.write("model.bin", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)

        #expect(try fixture.read(file, at: 100_000, count: 50_000) == expectedRead(content, at: 100_000, count: 50_000))
        let afterFirst = fixture.filesystem.cache.statistics
        #expect(afterFirst.misses == 2 && afterFirst.hits == 0) // blocks 1 and 2
        #expect(afterFirst.loadedBytes == 2 * 65_536)

        #expect(try fixture.read(file, at: 100_000, count: 50_000) == expectedRead(content, at: 100_000, count: 50_000))
        let afterSecond = fixture.filesystem.cache.statistics
        #expect(afterSecond.hits == afterFirst.hits + 2)
        #expect(afterSecond.misses == afterFirst.misses)
        #expect(afterSecond.loadedBytes == afterFirst.loadedBytes, "a re-read went to the source")

        // Another open of the same, unchanged file shares the cached blocks.
        let other = try fixture.filesystem.open(node: file.node, flags: O_RDONLY)
        #expect(try fixture.read(other, at: 120_000, count: 1000) == expectedRead(content, at: 120_000, count: 1000))
        #expect(fixture.filesystem.cache.statistics.loadedBytes == afterFirst.loadedBytes)
        #expect(fixture.filesystem.figures[.readRequests] == 3)
    }

    @Test("Empty files and files of whole blocks end where they should")
    func fileEnds() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10)
        try fixture.write("empty", [])
        let whole = randomBytes(2 * 65_536, seed: 9)
        try fixture.write("whole", whole)
        let empty = try fixture.filesystem.open(node: try fixture.lookup("empty"), flags: O_RDONLY)
        #expect(try fixture.read(empty, at: 0, count: 4096).isEmpty)
        let file = try fixture.filesystem.open(node: try fixture.lookup("whole"), flags: O_RDONLY)
        #expect(try fixture.read(file, at: 131_062, count: 100) == Array(whole[131_062...]))
        #expect(try fixture.read(file, at: 131_072, count: 1).isEmpty)
        #expect(fixture.filesystem.cache.statistics.misses == 1, "nothing was loaded past the end")
    }

    @Test("A cache smaller than one read still returns every byte; blocks evicted mid-read stay valid")
    func readLargerThanCache() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10, cacheBlocks: 2)
        let content = randomBytes(300_001, seed: 10)
        try fixture.write("big", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("big"), flags: O_RDONLY)
        let slices = try fixture.filesystem.read(file, at: 0, count: content.count)
        #expect(fixture.filesystem.cache.statistics.evictions >= 3)
        var joined: [UInt8] = []
        for slice in slices { withExtendedLifetime(slice) { joined.append(contentsOf: slice.bytes) } }
        #expect(joined == content)
        #expect(try fixture.read(file, at: 0, count: content.count) == content)
        #expect(fixture.filesystem.cache.statistics.residentBytes <= 2 * 65_536)
    }

    @Test("Eight threads reading one open file through a small cache all get the source's bytes")
    func concurrentReads() throws {
        let fixture = try SourceFixture(blockSize: 64 << 10, cacheBlocks: 3)
        let content = randomBytes(300_001, seed: 11)
        try fixture.write("shared", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("shared"), flags: O_RDONLY)
        let filesystem = fixture.filesystem
        let wrong = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let done = DispatchGroup()
        for thread in 0..<8 {
            done.enter()
            Thread {
                defer { done.leave() }
                var random = SplitMix64(seed: UInt64(thread) + 100)
                for _ in 0..<60 {
                    let offset = Int.random(in: 0..<content.count, using: &random)
                    let count = Int.random(in: 1...150_000, using: &random)
                    do {
                        let slices = try filesystem.read(file, at: Int64(offset), count: count)
                        var bytes: [UInt8] = []
                        for slice in slices { withExtendedLifetime(slice) { bytes.append(contentsOf: slice.bytes) } }
                        if bytes != expectedRead(content, at: offset, count: count) { wrong.add(1, ordering: .relaxed) }
                    } catch {
                        failed.add(1, ordering: .relaxed)
                    }
                }
            }.start()
        }
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(wrong.load(ordering: .relaxed) == 0)
        #expect(failed.load(ordering: .relaxed) == 0)
        #expect(filesystem.cache.statistics.residentBytes <= 3 * 65_536)
    }
}

@Suite("Mirror: opening files")
struct OpenTests {
    @Test("An unchanged file keeps the kernel cache; a file rewritten in place drops it and reads the new bytes")
    func versionsAtOpen() throws {
        let fixture = try SourceFixture()
        let original = randomBytes(10_000, seed: 20)
        try fixture.write("weights", original)
        try fixture.setTimes("weights", modified: timespec(tv_sec: 1_000_000, tv_nsec: 0))
        let node = try fixture.lookup("weights")

        let first = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!first.keepKernelCache, "nothing was opened before")
        #expect(!first.versionChanged)
        #expect(try fixture.read(first, at: 0, count: 10_000) == original)
        let second = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(second.keepKernelCache)
        #expect(!second.versionChanged)
        #expect(second.version == first.version)

        // Same size, new bytes, new mtime.
        let replacement = randomBytes(10_000, seed: 21)
        try fixture.overwrite("weights", with: replacement)
        try fixture.setTimes("weights", modified: timespec(tv_sec: 1_000_100, tv_nsec: 0))
        let third = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!third.keepKernelCache)
        #expect(third.versionChanged)
        #expect(third.version != first.version)
        #expect(third.version.modified == Timestamp(seconds: 1_000_100, nanoseconds: 0))
        #expect(try fixture.read(third, at: 0, count: 20_000) == replacement)

        let fourth = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(fourth.keepKernelCache && !fourth.versionChanged)
        // The file opened first stays pinned to its version: it sees what it cached, never a mix.
        #expect(try fixture.read(first, at: 0, count: 10_000) == original)
    }

    @Test("Opening for writing or truncation is refused with EROFS and leaves the source alone")
    func writeOpensRefused() throws {
        let fixture = try SourceFixture()
        try fixture.write("file", [1, 2, 3])
        let node = try fixture.lookup("file")
        for flags in [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_TRUNC, O_RDWR | O_APPEND, O_WRONLY | O_CREAT] {
            #expect(throws: Errno.readOnlyFileSystem, "flags \(flags)") {
                _ = try fixture.filesystem.open(node: node, flags: flags)
            }
        }
        #expect(try fixture.status("file").st_size == 3, "the source was truncated")
        let opened = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!opened.keepKernelCache, "a refused open counted as an open")
        #expect(try fixture.read(opened, at: 0, count: 10) == [1, 2, 3])
    }

    @Test("Opening a forgotten node is ESTALE")
    func staleNode() throws {
        let fixture = try SourceFixture()
        try fixture.write("file", [1])
        let node = try fixture.lookup("file")
        fixture.filesystem.forget(node: node, lookups: 1)
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.filesystem.open(node: node, flags: O_RDONLY) }
    }
}
