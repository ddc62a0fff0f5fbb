#if canImport(Glibc)
import Glibc
#endif
import BlockCache
@testable import MirrorFS
import Synchronization
import Testing

/// Two mirrors of one source, the second asking the first before its source, as peers do (without HTTP).
@Suite struct PeerSupportTests {
    /// Serves another mirror's resident blocks; counts what it was asked.
    final class InProcessPeer: RemoteBlockSource {
        let peer = Mutex<MirrorFilesystem?>(nil)
        let asked = Atomic<Int>(0)

        func readBlock(_ request: RemoteBlockRequest, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
            asked.add(1, ordering: .relaxed)
            guard let block = peer.withLock({ $0 })?.residentBlock(for: request) else { return nil }
            return withExtendedLifetime(block) {
                guard block.count == buffer.count else { return nil }
                buffer.copyMemory(from: block.bytes)
                return block.count
            }
        }
    }

    func request(_ fixture: SourceFixture, _ name: String, index: Int64, blockSize: Int = 64 << 10) throws -> RemoteBlockRequest {
        let attributes = try fixture.status(name)
        return RemoteBlockRequest(
            relativePath: Array(name.utf8), fileSize: Int64(attributes.st_size),
            modified: Timestamp(seconds: Int64(attributes.st_mtim.tv_sec), nanoseconds: Int64(attributes.st_mtim.tv_nsec)),
            blockSize: blockSize, index: index
        )
    }

    @Test func secondMirrorReadsFromTheFirstInsteadOfTheSource() throws {
        let a = try SourceFixture()
        let peer = InProcessPeer()
        let b = try SourceFixture(sharing: a, remote: peer)
        peer.peer.withLock { $0 = a.filesystem }
        let content = randomBytes(5 * (64 << 10) + 1000, seed: 3)
        try a.makeDirectory("models")
        try a.write("models/weights.bin", content)

        let directory = try a.lookup("models")
        let fileA = try a.filesystem.open(node: try a.lookup("weights.bin", in: directory), flags: O_RDONLY).file
        #expect(try a.read(fileA, at: 0, count: content.count) == content)
        #expect(a.filesystem.statistics.bytesFromSource == UInt64(content.count))

        let fileB = try b.filesystem.open(node: try b.lookup("weights.bin", in: try b.lookup("models")), flags: O_RDONLY).file
        #expect(try b.read(fileB, at: 0, count: content.count) == content)
        let statistics = b.filesystem.statistics
        #expect(statistics.bytesFromPeers == UInt64(content.count) && statistics.bytesFromSource == 0)
        var tier = ReadTier.memory
        _ = try b.filesystem.read(fileB, at: 0, count: content.count, tier: &tier)
        #expect(tier == .memory, "the second read is from memory")
        #expect(b.filesystem.statistics.bytesFromPeers == UInt64(content.count))
    }

    /// Pinned blocks live apart from the LRU list; the peer lookup must find them too.
    @Test func pinnedBlocksAreServedToPeers() throws {
        let a = try SourceFixture()
        let peer = InProcessPeer()
        let b = try SourceFixture(sharing: a, remote: peer)
        peer.peer.withLock { $0 = a.filesystem }
        let content = randomBytes(6 * (64 << 10), seed: 4)
        try a.write("pinned.bin", content)
        let files = try a.filesystem.warmCandidates(atRelativePath: "pinned.bin")
        try a.filesystem.pin(files)
        _ = try a.filesystem.warm(relativePath: "pinned.bin", offset: 0, length: Int64(content.count))
        #expect(a.filesystem.cache.statistics.pinnedResidentBytes == content.count)

        let fileB = try b.filesystem.open(node: try b.lookup("pinned.bin"), flags: O_RDONLY).file
        #expect(try b.read(fileB, at: 0, count: content.count) == content)
        #expect(b.filesystem.statistics.bytesFromPeers == UInt64(content.count))
        #expect(b.filesystem.statistics.bytesFromSource == 0, "B read a pinned file from the source instead of A's memory")
    }

    @Test func aChangedFileIsNotTakenFromAPeer() throws {
        let a = try SourceFixture()
        let peer = InProcessPeer()
        let b = try SourceFixture(sharing: a, remote: peer)
        peer.peer.withLock { $0 = a.filesystem }
        try a.write("f", randomBytes(100_000, seed: 1))
        let fileA = try a.filesystem.open(node: try a.lookup("f"), flags: O_RDONLY).file
        _ = try a.read(fileA, at: 0, count: 100_000)

        let newer = randomBytes(100_000, seed: 2) // same size; a later mtime
        try a.write("f", newer)
        try a.setTimes("f", modified: timespec(tv_sec: time(nil) + 10, tv_nsec: 5))
        let fileB = try b.filesystem.open(node: try b.lookup("f"), flags: O_RDONLY).file
        #expect(try b.read(fileB, at: 0, count: 100_000) == newer)
        #expect(b.filesystem.statistics.bytesFromPeers == 0)
        #expect(peer.asked.load(ordering: .relaxed) > 0, "the peer was asked, and had only the old version")
    }

    @Test func residentBlockNeverLoadsAndRefusesEscapes() throws {
        let fixture = try SourceFixture()
        try fixture.makeDirectory("d")
        try fixture.write("d/f", randomBytes(200_000))
        try fixture.symlink("link", to: "d/f")
        let wanted = try request(fixture, "d/f", index: 1)
        #expect(fixture.filesystem.residentBlock(for: wanted) == nil, "not resident yet")
        #expect(fixture.filesystem.cache.statistics.misses == 0 && fixture.filesystem.cache.statistics.residentBlocks == 0, "and not loaded for the peer")

        let file = try fixture.filesystem.open(node: try fixture.lookup("f", in: try fixture.lookup("d")), flags: O_RDONLY).file
        _ = try fixture.read(file, at: 0, count: 200_000)
        let block = try #require(fixture.filesystem.residentBlock(for: wanted))
        #expect(block.count == 64 << 10)

        var otherVersion = wanted
        otherVersion.fileSize += 1
        #expect(fixture.filesystem.residentBlock(for: otherVersion) == nil)
        var otherBlockSize = wanted
        otherBlockSize.blockSize = 128 << 10
        #expect(fixture.filesystem.residentBlock(for: otherBlockSize) == nil)
        // Out of the root through "..", absolute, through a symlink, not a regular file.
        for path in ["../\(fixture.root.split(separator: "/").last!)/d/f", fixture.root + "/d/f", "link", "d"] {
            var escape = wanted
            escape.relativePath = Array(path.utf8)
            #expect(fixture.filesystem.residentBlock(for: escape) == nil, "\(path)")
        }
    }

    /// The source is checked once per file and second for a streaming peer, and again
    /// as soon as a request names a version other than the one remembered.
    @Test func checkedVersionsAreRememberedBrieflyAndRecheckedOnMismatch() throws {
        let fixture = try SourceFixture()
        try fixture.write("f", randomBytes(200_000))
        let file = try fixture.filesystem.open(node: try fixture.lookup("f"), flags: O_RDONLY).file
        _ = try fixture.read(file, at: 0, count: 200_000)
        let old = try request(fixture, "f", index: 0)
        guard case .undetermined = fixture.filesystem.residentBlockWithoutCheckingSource(for: old) else {
            Issue.record("answered without any check of the source")
            return
        }
        #expect(fixture.filesystem.residentBlock(for: old) != nil)
        // Now checked: the event loop's lookup answers without I/O, for that version only.
        guard case .resident = fixture.filesystem.residentBlockWithoutCheckingSource(for: old) else {
            Issue.record("a just-checked version was not answered from memory")
            return
        }
        var notLoaded = old
        notLoaded.index = 10 // past the end: never resident
        guard case .absent = fixture.filesystem.residentBlockWithoutCheckingSource(for: notLoaded) else {
            Issue.record("a block not resident was not answered as absent")
            return
        }
        var otherMtime = old
        otherMtime.modified.nanoseconds += 1
        guard case .undetermined = fixture.filesystem.residentBlockWithoutCheckingSource(for: otherMtime) else {
            Issue.record("a version other than the checked one was answered without checking")
            return
        }

        try fixture.write("f", randomBytes(300_000))
        let new = try request(fixture, "f", index: 0)
        #expect(new.fileSize == 300_000)
        #expect(fixture.filesystem.residentBlock(for: new) == nil, "the new version is checked at the source and is not resident")
        #expect(fixture.filesystem.residentBlock(for: old) == nil, "the source now says the old version is gone")

        let versions = RecentlyCheckedVersions(freshness: .milliseconds(100), capacity: 2)
        let version = FileVersion(identity: .inode(device: 1, inode: 2), size: 3, modified: .init(seconds: 4, nanoseconds: 5), changed: .init(seconds: 6, nanoseconds: 7))
        versions.record(version, of: Array("a".utf8))
        #expect(versions.version(of: Array("a".utf8)) == version)
        #expect(versions.version(of: Array("b".utf8)) == nil)
        versions.record(version, of: Array("b".utf8))
        versions.record(version, of: Array("c".utf8))
        #expect(versions.version(of: Array("a".utf8)) == nil, "a full table starts over")
        usleep(200_000)
        #expect(versions.version(of: Array("c".utf8)) == nil, "an entry older than its freshness is not trusted")
    }
}
