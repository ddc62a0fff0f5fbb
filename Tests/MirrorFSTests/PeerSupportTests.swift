import BlockCache
import CRC32C
import PeerTransport
import Synchronization
import Testing

@testable import MirrorFS

#if canImport(Glibc)
import Glibc
#endif

/// Two mirrors of one source, the second asking the first before its source, as peers do (without HTTP).
@Suite struct PeerSupportTests {
    /// A fleet of one other mirror in this process: its blocks in memory first (a holder), then, if
    /// `asOwner`, blocks it loads from its own source for the asker (an owner).
    final class InProcessFleet: BlockFleet {
        let peer = Mutex<MirrorFilesystem?>(nil)
        let asked = Atomic<Int>(0)
        let asOwner: Bool

        init(asOwner: Bool = false) { self.asOwner = asOwner }

        func segment(of range: PeerBlockRange) -> Int { range.count }

        func load(_ range: PeerBlockRange, into targets: ArraySlice<ReceiveTarget>) -> FleetAnswer {
            asked.add(1, ordering: .relaxed)
            guard let peer = peer.withLock({ $0 }) else { return .readSource(blocks: range.count) }
            var blocks: [Block] = []
            if case .current(let resident) = peer.residentBlocks(range, checkingSource: true) { blocks = resident }
            if blocks.isEmpty, asOwner, case .blocks(let loaded, _) = peer.loadForPeer(range) { blocks = loaded }
            guard !blocks.isEmpty else { return .readSource(blocks: range.count) }
            let checksums = zip(blocks, targets).map { block, target in
                withExtendedLifetime(block) {
                    target.memory.copyMemory(from: block.bytes)
                    return cachefs_crc32c(0, block.bytes.baseAddress, block.count)
                }
            }
            return .received(blocks: blocks.count, checksums: checksums)
        }
    }

    func name(_ fixture: SourceFixture, _ path: String, blockSize: Int = 64 << 10) throws -> PeerFile {
        let attributes = try fixture.status(path)
        return PeerFile(
            path: Array(path.utf8), size: Int64(attributes.st_size),
            modifiedNanoseconds: Int64(attributes.st_mtim.tv_sec) * 1_000_000_000 + Int64(attributes.st_mtim.tv_nsec),
            blockSize: blockSize)
    }

    func resident(_ fixture: SourceFixture, _ range: PeerBlockRange) -> [Block]? {
        guard case .current(let blocks) = fixture.filesystem.residentBlocks(range, checkingSource: true) else { return nil }
        return blocks
    }

    @Test func secondMirrorReadsFromTheFirstInsteadOfTheSource() throws {
        let a = try SourceFixture()
        let fleet = InProcessFleet()
        let b = try SourceFixture(sharing: a, fleet: fleet)
        fleet.peer.withLock { $0 = a.filesystem }
        let content = randomBytes(5 * (64 << 10) + 1000, seed: 3)
        try a.makeDirectory("models")
        try a.write("models/weights.bin", content)

        let directory = try a.lookup("models")
        let fileA = try a.filesystem.open(node: try a.lookup("weights.bin", in: directory), flags: O_RDONLY)
        #expect(try a.read(fileA, at: 0, count: content.count) == content)
        #expect(a.filesystem.figures[.bytesFromSource] == UInt64(content.count))

        let fileB = try b.filesystem.open(node: try b.lookup("weights.bin", in: try b.lookup("models")), flags: O_RDONLY)
        #expect(try b.read(fileB, at: 0, count: content.count) == content)
        let figures = b.filesystem.figures
        #expect(figures[.bytesFromPeers] == UInt64(content.count) && figures[.bytesFromSource] == 0)
        var tier = ReadTier.memory
        _ = try b.filesystem.read(fileB, at: 0, count: content.count, tier: &tier)
        #expect(tier == .memory, "the second read is from memory")
        #expect(b.filesystem.figures[.bytesFromPeers] == UInt64(content.count))
    }

    /// Pinned blocks live apart from the LRU list; the peer lookup must find them too.
    @Test func pinnedBlocksAreServedToPeers() throws {
        let a = try SourceFixture()
        let fleet = InProcessFleet()
        let b = try SourceFixture(sharing: a, fleet: fleet)
        fleet.peer.withLock { $0 = a.filesystem }
        let content = randomBytes(6 * (64 << 10), seed: 4)
        try a.write("pinned.bin", content)
        let files = try a.filesystem.warmCandidates(atRelativePath: "pinned.bin")
        try a.filesystem.pin(files)
        _ = try a.filesystem.warm(relativePath: "pinned.bin", offset: 0, length: Int64(content.count))
        #expect(a.filesystem.cache.statistics.pinnedResidentBytes == content.count)

        let fileB = try b.filesystem.open(node: try b.lookup("pinned.bin"), flags: O_RDONLY)
        #expect(try b.read(fileB, at: 0, count: content.count) == content)
        #expect(b.filesystem.figures[.bytesFromPeers] == UInt64(content.count))
        #expect(b.filesystem.figures[.bytesFromSource] == 0, "B read a pinned file from the source instead of A's memory")
    }

    @Test func aChangedFileIsNotTakenFromAPeer() throws {
        let a = try SourceFixture()
        let fleet = InProcessFleet()
        let b = try SourceFixture(sharing: a, fleet: fleet)
        fleet.peer.withLock { $0 = a.filesystem }
        try a.write("f", randomBytes(100_000, seed: 1))
        let fileA = try a.filesystem.open(node: try a.lookup("f"), flags: O_RDONLY)
        _ = try a.read(fileA, at: 0, count: 100_000)

        let newer = randomBytes(100_000, seed: 2) // same size; a later mtime
        try a.write("f", newer)
        try a.setTimes("f", modified: timespec(tv_sec: time(nil) + 10, tv_nsec: 5))
        let fileB = try b.filesystem.open(node: try b.lookup("f"), flags: O_RDONLY)
        #expect(try b.read(fileB, at: 0, count: 100_000) == newer)
        #expect(b.filesystem.figures[.bytesFromPeers] == 0)
        #expect(fleet.asked.load(ordering: .relaxed) > 0, "the peer was asked, and had only the old version")
    }

    /// An owner loads what it lacks from its own source for the asker, once: a second asker of the same
    /// blocks gets them from the owner's memory.
    @Test func anOwnerLoadsForItsAskersOnce() throws {
        let owner = try SourceFixture()
        let content = randomBytes(4 * (64 << 10) + 500, seed: 9)
        try owner.write("model.bin", content)
        var askers: [SourceFixture] = []
        for _ in 0..<2 {
            let fleet = InProcessFleet(asOwner: true)
            fleet.peer.withLock { $0 = owner.filesystem }
            askers.append(try SourceFixture(sharing: owner, fleet: fleet))
        }
        for asker in askers {
            let file = try asker.filesystem.open(node: try asker.lookup("model.bin"), flags: O_RDONLY)
            #expect(try asker.read(file, at: 0, count: content.count) == content)
            #expect(asker.filesystem.figures[.bytesFromSource] == 0 && asker.filesystem.figures[.bytesFromPeers] == UInt64(content.count))
        }
        #expect(owner.filesystem.figures[.bytesFromSource] == UInt64(content.count), "the owner read each block from its source once")
        #expect(owner.filesystem.cache.statistics.residentBytes == content.count, "and keeps them, counted against its capacity")
    }

    @Test func residentBlocksNeverLoadAndRefuseEscapes() throws {
        let fixture = try SourceFixture()
        try fixture.makeDirectory("d")
        try fixture.write("d/f", randomBytes(200_000))
        try fixture.symlink("link", to: "d/f")
        let file = try name(fixture, "d/f")
        #expect(resident(fixture, file.blocks(1, count: 2))?.isEmpty == true, "not resident yet")
        #expect(
            fixture.filesystem.cache.statistics.misses == 0 && fixture.filesystem.cache.statistics.residentBlocks == 0,
            "and not loaded for the peer")
        guard case .current(let none) = fixture.filesystem.holdings(of: file, checkingSource: true) else {
            Issue.record("no holdings"); return
        }
        #expect(none.isEmpty)

        let opened = try fixture.filesystem.open(node: try fixture.lookup("f", in: try fixture.lookup("d")), flags: O_RDONLY)
        _ = try fixture.read(opened, at: 0, count: 150_000) // blocks 0, 1 and 2
        let run = try #require(resident(fixture, file.blocks(1, count: 3)))
        #expect(run.map(\.count) == [64 << 10, 64 << 10], "blocks 1 and 2 in a row; block 3 is not resident")
        guard case .current(let held) = fixture.filesystem.holdings(of: file, checkingSource: true) else {
            Issue.record("no holdings"); return
        }
        #expect((0..<4).map { held[$0] } == [true, true, true, false])

        var otherVersion = file
        otherVersion.size += 1
        #expect(resident(fixture, otherVersion.blocks(1, count: 1)) == nil)
        var otherBlockSize = file
        otherBlockSize.blockSize = 128 << 10
        #expect(resident(fixture, otherBlockSize.blocks(0, count: 1)) == nil)
        // Out of the root through "..", absolute, through a symlink, not a regular file.
        for path in ["../\(fixture.root.split(separator: "/").last!)/d/f", fixture.root + "/d/f", "link", "d"] {
            var escape = file
            escape.path = Array(path.utf8)
            #expect(resident(fixture, escape.blocks(0, count: 1)) == nil, "\(path)")
            if case .blocks = fixture.filesystem.loadForPeer(escape.blocks(0, count: 1)) { Issue.record("loaded \(path) for a peer") }
        }
    }

    /// The source is checked once per file and second for a streaming peer, and again
    /// as soon as a request names a version other than the one remembered.
    @Test func checkedVersionsAreRememberedBrieflyAndRecheckedOnMismatch() throws {
        let fixture = try SourceFixture()
        try fixture.write("f", randomBytes(200_000))
        let file = try fixture.filesystem.open(node: try fixture.lookup("f"), flags: O_RDONLY)
        _ = try fixture.read(file, at: 0, count: 200_000)
        let old = try name(fixture, "f")
        guard case .undetermined = fixture.filesystem.residentBlocks(old.blocks(0, count: 1), checkingSource: false) else {
            Issue.record("answered without any check of the source")
            return
        }
        #expect(resident(fixture, old.blocks(0, count: 1))?.count == 1)
        // Now checked: the event loop's lookup answers without I/O, for that version only.
        guard case .current(let found) = fixture.filesystem.residentBlocks(old.blocks(0, count: 1), checkingSource: false), found.count == 1
        else {
            Issue.record("a just-checked version was not answered from memory")
            return
        }
        guard case .current = fixture.filesystem.holdings(of: old, checkingSource: false) else {
            Issue.record("holdings of a just-checked version needed the source")
            return
        }
        var otherMtime = old
        otherMtime.modifiedNanoseconds += 1
        guard case .undetermined = fixture.filesystem.residentBlocks(otherMtime.blocks(0, count: 1), checkingSource: false) else {
            Issue.record("a version other than the checked one was answered without checking")
            return
        }

        try fixture.write("f", randomBytes(300_000))
        let new = try name(fixture, "f")
        #expect(new.size == 300_000)
        #expect(resident(fixture, new.blocks(0, count: 1))?.isEmpty == true, "the new version is checked at the source and is not resident")
        #expect(resident(fixture, old.blocks(0, count: 1)) == nil, "the source now says the old version is gone")

        let versions = RecentlyCheckedVersions(freshness: .milliseconds(100), capacity: 2)
        let version = FileVersion(
            identity: .inode(device: 1, inode: 2), size: 3, modified: .init(seconds: 4, nanoseconds: 5),
            changed: .init(seconds: 6, nanoseconds: 7))
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
