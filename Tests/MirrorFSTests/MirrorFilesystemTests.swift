import BlockCache
import Foundation
import Logging
import MirrorFS
import SourceTree
import SystemPackage
import Testing

/// The mirror without FUSE: a temporary source tree, read through MirrorFilesystem directly.
final class SourceFixture {
    let root: String
    let filesystem: MirrorFilesystem

    init(blockSize: Int = 64 << 10) throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("mirrorfs-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        filesystem = try MirrorFilesystem(
            sourceRoot: try PathHandle.openRoot(root),
            cache: BlockCache(capacity: 64 * blockSize, blockSize: blockSize),
            logger: Logger(label: "test")
        )
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func write(_ name: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: root + "/" + name))
    }

    func lookup(_ name: String, in parent: UInt64 = MirrorFilesystem.rootNode) throws -> UInt64 {
        try name.withCString { try filesystem.lookup(parent: parent, name: $0).node }
    }

    func read(_ file: OpenFile, at offset: Int64, count: Int) throws -> [UInt8] {
        let slices = try filesystem.read(file, at: offset, count: count)
        return slices.flatMap { Array($0.bytes) }
    }
}

private func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

@Suite("Mirror filesystem without FUSE")
struct MirrorFilesystemTests {
    @Test("Reads return the source's bytes at any offset, and a re-read is a cache hit")
    func readsThroughTheCache() throws {
        let fixture = try SourceFixture()
        let content = randomBytes(300_001)
        try fixture.write("model.bin", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY).file
        for (offset, count) in [(0, 4096), (65_000, 2_000), (131_071, 70_000), (299_990, 4096), (300_001, 10), (0, 300_001)] {
            let expected = Array(content[min(offset, content.count)..<min(offset + count, content.count)])
            #expect(try fixture.read(file, at: Int64(offset), count: count) == expected, "offset \(offset) count \(count)")
        }
        let before = fixture.filesystem.statistics.cache
        _ = try fixture.read(file, at: 0, count: 300_001)
        let after = fixture.filesystem.statistics.cache
        #expect(after.loadedBytes == before.loadedBytes, "a re-read went to the source")
        #expect(after.hits == before.hits + 5)
    }

    @Test("An unchanged file keeps the kernel cache; a rewritten one drops it and reads new bytes")
    func versionsAtOpen() throws {
        let fixture = try SourceFixture()
        try fixture.write("weights", randomBytes(10_000))
        let node = try fixture.lookup("weights")
        let first = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!first.keepKernelCache && !first.versionChanged)
        _ = try fixture.read(first.file, at: 0, count: 10_000)
        let second = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(second.keepKernelCache && !second.versionChanged)

        let replacement = randomBytes(12_345)
        usleep(10_000) // a distinct mtime
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: fixture.root + "/weights"))
        try handle.write(contentsOf: Data(replacement))
        try handle.close()
        let third = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!third.keepKernelCache && third.versionChanged)
        #expect(try fixture.read(third.file, at: 0, count: 20_000) == replacement)
    }

    @Test("Opening for writing or truncation is refused with EROFS")
    func writeOpensRefused() throws {
        let fixture = try SourceFixture()
        try fixture.write("file", [1, 2, 3])
        let node = try fixture.lookup("file")
        for flags in [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC] {
            #expect(throws: Errno.readOnlyFileSystem) { _ = try fixture.filesystem.open(node: node, flags: flags) }
        }
    }

    @Test("Missing names are ENOENT; hard links share a node; forget releases it")
    func lookupsAndForget() throws {
        let fixture = try SourceFixture()
        try fixture.write("a", [1])
        #expect(link(fixture.root + "/a", fixture.root + "/b") == 0)
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try fixture.lookup("absent") }
        let baseline = fixture.filesystem.knownNodeCount
        let a = try fixture.lookup("a")
        #expect(try fixture.lookup("b") == a)
        #expect(fixture.filesystem.knownNodeCount == baseline + 1)
        fixture.filesystem.forget(node: a, lookups: 2)
        #expect(fixture.filesystem.knownNodeCount == baseline)
    }

    @Test("A listing cut short resumes at the last accepted entry, without duplicates or leaked lookups")
    func directoryResume() throws {
        let fixture = try SourceFixture()
        let names = (0..<50).map { "file-\($0)" }
        for name in names { try fixture.write(name, [0]) }
        let directory = try fixture.filesystem.openDirectory(node: MirrorFilesystem.rootNode)
        let baseline = fixture.filesystem.knownNodeCount
        var seen: [String] = []
        var offset = 0
        while true {
            var accepted = 0
            try fixture.filesystem.readDirectory(directory, from: offset, withAttributes: true, parent: MirrorFilesystem.rootNode) { entry in
                guard accepted < 7 else { return false } // a small kernel buffer
                accepted += 1
                seen.append(String(cString: entry.name))
                offset = entry.nextOffset
                return true
            }
            if accepted == 0 { break }
        }
        #expect(seen.filter { $0 != "." && $0 != ".." }.sorted() == names.sorted())
        #expect(Set(seen).count == seen.count, "an entry was listed twice")
        #expect(fixture.filesystem.knownNodeCount == baseline + 50, "each listed entry counts one lookup, refused ones none")
    }
}
