import BlockCache
import Continuity
import Foundation
import Logging
import MirrorFS
import SourceTree
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

private let blockSize = 64 << 10

/// The kernel's side of passthrough, recorded.
private final class FakeBackingFiles: KernelFeatures {
    private let state = Mutex<(next: Int32, live: Set<Int32>)>((1, []))
    let passthroughAvailable = true
    let directIOMayBeMapped = false
    func register(_ descriptor: Int32) throws(Errno) -> Int32 {
        state.withLock { state in
            defer { state.next += 1 }
            state.live.insert(state.next)
            return state.next
        }
    }
    func unregister(_ id: Int32) { _ = state.withLock { $0.live.remove(id) } }
    var live: Set<Int32> { state.withLock { $0.live } }
}

private func bytes(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed)) } }

/// A source tree, and mirrors of it that take over from one another as daemons would:
/// they share the state journal and the kernel's backing files.
private final class Source {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("continuity-\(UUID().uuidString)").path
    let a = bytes(3 * blockSize, seed: 1), b = bytes(2 * blockSize, seed: 2)
    let journal: StateJournal
    let backing = FakeBackingFiles()

    init() throws {
        journal = try StateJournal.create(slots: 64)
        try FileManager.default.createDirectory(atPath: root + "/models", withIntermediateDirectories: true)
        try Data(a).write(to: URL(fileURLWithPath: root + "/models/a"))
        try Data(b).write(to: URL(fileURLWithPath: root + "/models/b"))
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func mirror(cache: BlockCache) throws -> MirrorFilesystem {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try MirrorFilesystem(
            sourceRoot: try PathHandle.openRoot(root), cache: cache, kernelFeatures: backing, journal: journal, logger: logger)
    }

    /// A first daemon: a cache of its own and a mirror over it.
    func daemon() throws -> (cache: BlockCache, mirror: MirrorFilesystem) {
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        return (cache, try mirror(cache: cache))
    }

    /// A successor to the daemon whose cache is `predecessor`: that cache surrenders its memory, a new cache adopts
    /// copies of the files, a new mirror goes over it, and the journal's open handles are read (for `inherit`).
    /// Keep `surrendered` alive (`withExtendedLifetime`) for as long as the successor is used.
    func successor(of predecessor: BlockCache) throws -> (
        cache: BlockCache, mirror: MirrorFilesystem, adopted: AdoptionReport, surrendered: SurrenderedMemory,
        handles: (records: [OpenHandleRecord], generations: [Int: UInt32], torn: Int)
    ) {
        let surrendered = try #require(predecessor.surrender(waitingUntil: .now + .seconds(5)))
        let cache = BlockCache(capacity: 64 * blockSize, blockSize: blockSize)
        let adopted = cache.adopt(copies(surrendered))
        return (cache, try mirror(cache: cache), adopted, surrendered, journal.openHandles())
    }
}

private func lookup(_ mirror: MirrorFilesystem, _ name: String, in parent: UInt64 = MirrorFilesystem.rootNode) throws -> UInt64 {
    try name.withCString { try mirror.lookup(parent: parent, name: $0).node }
}

private func read(_ mirror: MirrorFilesystem, _ file: OpenFile, at offset: Int64, count: Int) throws -> [UInt8] {
    let slices = try mirror.read(file, at: offset, count: count)
    return slices.flatMap { slice in withExtendedLifetime(slice) { Array(slice.bytes) } }
}

private func names(_ mirror: MirrorFilesystem, _ directory: OpenDirectory, parent: UInt64) throws -> [String] {
    var names: [String] = []
    try mirror.readDirectory(directory, from: 0, withAttributes: false, parent: parent) { entry in
        names.append(String(cString: entry.name))
        return true
    }
    return names.filter { $0 != "." && $0 != ".." }.sorted()
}

/// The successor's copy of the surrendered memory files, as a hand-over passes them.
private func copies(_ surrendered: SurrenderedMemory) -> [MemoryFilePair] {
    surrendered.files.map { MemoryFilePair(memory: dup($0.memory), ledger: dup($0.ledger), name: $0.name) }
}

@Suite("Handing the mirror to another daemon: handles, nodes, the journal")
struct MirrorInheritanceTests {
    @Test(
        "A successor given the node table answers the same node IDs and handles: a daemon-served open reads on, a passthrough open keeps its backing id and hold, a listing goes on"
    )
    func handOverWithNodes() throws {
        let source = try Source()
        let (firstCache, first) = try source.daemon()
        let models = try lookup(first, "models"), a = try lookup(first, "a", in: models), b = try lookup(first, "b", in: models)
        let (_, handleA) = try first.openHandle(node: a, flags: O_RDONLY)
        let readBefore = try read(first, first.file(forHandle: handleA), at: 0, count: blockSize) == Array(source.a.prefix(blockSize))
        #expect(readBefore)
        let (_, handleB0) = try first.openHandle(node: b, flags: O_RDONLY) // loads b whole, then b opens in passthrough
        _ = try read(first, first.file(forHandle: handleB0), at: 0, count: 2 * blockSize)
        first.releaseHandle(handleB0)
        let (openedB, handleB) = try first.openHandle(node: b, flags: O_RDONLY)
        guard let backingID = openedB.backingID else { Issue.record("b did not open in passthrough"); return }
        let directory = try first.openDirectoryHandle(node: models)
        #expect(source.journal.openHandles().records.map(\.handle).sorted() == [handleA, handleB, directory].sorted())

        let (nodes, nextID) = first.exportNodes()
        let snapshot = try NodeSnapshot.decode(NodeSnapshot.encode(nodes, nextID: nextID))
        #expect(snapshot.nodes == nodes && snapshot.nextID == nextID)
        let (secondCache, second, adopted, surrendered, handles) = try source.successor(of: firstCache)
        #expect(adopted.heldFiles == 1)
        let report = second.inherit(
            nodes: snapshot.nodes, nextNodeID: snapshot.nextID, handles: handles.records, generations: handles.generations)
        #expect(report.handles == 3 && report.filesUnavailable == 0 && report.passthroughWithoutMemory == 0, "\(report)")

        let readAfter =
            try read(second, second.file(forHandle: handleA), at: Int64(blockSize), count: 2 * blockSize)
            == Array(source.a.suffix(2 * blockSize))
        #expect(readAfter, "the inherited open did not read on")
        #expect(try second.file(forHandle: handleA).node == a)
        #expect(try names(second, second.directory(forHandle: directory), parent: models) == ["a", "b"])
        #expect(try lookup(second, "models") == models && lookup(second, "a", in: models) == a)
        try Data([1]).write(to: URL(fileURLWithPath: source.root + "/models/c"))
        #expect(try lookup(second, "c", in: models) >= nextID, "a new node reused an ID the kernel may hold")
        // A second passthrough open shares the inherited backing id; the last release closes it and the hold.
        let (again, handleB2) = try second.openHandle(node: b, flags: O_RDONLY)
        guard let sharedID = again.backingID else { Issue.record("b's second open was not passthrough"); return }
        #expect(sharedID == backingID)
        second.releaseHandle(handleB)
        second.releaseHandle(handleB) // sent again after a crash: ignored
        #expect(source.backing.live.contains(backingID))
        second.releaseHandle(handleB2)
        #expect(!source.backing.live.contains(backingID) && secondCache.statistics.heldFiles == 0)
        #expect(throws: Errno.badFileDescriptor) { try second.file(forHandle: handleB) }
        withExtendedLifetime(surrendered) {}
    }

    @Test(
        "After a crash (no node table), open handles bring their nodes back from their recorded paths, other nodes are ESTALE, and new node IDs start above the reservation"
    )
    func crashKeepsOpenHandles() throws {
        let source = try Source()
        let (firstCache, first) = try source.daemon()
        let models = try lookup(first, "models"), a = try lookup(first, "a", in: models), b = try lookup(first, "b", in: models)
        let (_, handleA) = try first.openHandle(node: a, flags: O_RDONLY)
        _ = try read(first, first.file(forHandle: handleA), at: 0, count: blockSize)
        #expect(source.journal.nodeIDsReserved >= b)

        let (_, second, _, surrendered, handles) = try source.successor(of: firstCache)
        let reserved = source.journal.nodeIDsReserved
        let report = second.inherit(nodes: nil, nextNodeID: reserved + 1, handles: handles.records, generations: handles.generations)
        #expect(report.handles == 1 && report.nodes == 1, "\(report)")
        let readAfter = try read(second, second.file(forHandle: handleA), at: 0, count: 3 * blockSize) == source.a
        #expect(readAfter, "the inherited open did not read the right bytes")
        #expect(try second.attributes(of: a).st_size == off_t(source.a.count))
        #expect(throws: Errno.staleNFSFileHandle) { try second.attributes(of: b) }
        #expect(try lookup(second, "models") == reserved + 1, "the first new node ID is not the one after the reservation")
        #expect(try lookup(second, "b", in: lookup(second, "models")) > reserved)
        withExtendedLifetime(surrendered) {}
    }

    @Test(
        "An open file changed or removed at the source since: what was cached of its version is served, a miss is ESTALE, never the new bytes"
    )
    func changedSourceIsStale() throws {
        for change in ["rewrite", "remove"] {
            let source = try Source()
            let (firstCache, first) = try source.daemon()
            let a = try lookup(first, "a", in: lookup(first, "models"))
            let (_, handleA) = try first.openHandle(node: a, flags: O_RDONLY)
            _ = try read(first, first.file(forHandle: handleA), at: 0, count: blockSize)
            if change == "rewrite" {
                try Data(bytes(source.a.count, seed: 99)).write(to: URL(fileURLWithPath: source.root + "/models/a"))
            } else {
                unlink(source.root + "/models/a")
            }
            let (_, second, _, surrendered, handles) = try source.successor(of: firstCache)
            let report = second.inherit(
                nodes: nil, nextNodeID: source.journal.nodeIDsReserved + 1, handles: handles.records, generations: handles.generations)
            #expect(report.filesUnavailable == (change == "remove" ? 1 : 0), "\(change): \(report)")
            let file = try second.file(forHandle: handleA)
            let cached = try read(second, file, at: 0, count: blockSize) == Array(source.a.prefix(blockSize))
            #expect(cached, "\(change): the cached block of the opened version was not served")
            #expect(throws: Errno.staleNFSFileHandle, "\(change)") {
                _ = try read(second, file, at: Int64(blockSize), count: blockSize).count
            }
            withExtendedLifetime(surrendered) {}
        }
    }

    @Test("A handle slot altered after it was written is skipped; a torn newer mount record leaves the older one")
    func tornRecordsAreSkipped() throws {
        let journal = try StateJournal.create(slots: 8)
        let record = OpenHandleRecord(
            handle: 1 << 32 | 3, kind: .daemonServedFile, node: 9, nodeType: UInt32(S_IFREG),
            identity: .inode(device: 1, inode: 2), path: Array("models/a".utf8),
            version: FileVersion(
                identity: .inode(device: 1, inode: 2), size: 10, modified: Timestamp(seconds: 3, nanoseconds: 4),
                changed: Timestamp(seconds: 5, nanoseconds: 6)), backingID: 0)
        #expect(journal.recordHandle(record))
        #expect(journal.openHandles().records == [record])
        let offset = 4096 + 2 * (64 << 10) + 2 * (16 << 20) + 3 * 4608 + 20 // a byte of slot 3's body
        _ = [UInt8(0x5A)].withUnsafeBytes { pwrite(journal.descriptor, $0.baseAddress, 1, off_t(offset)) }
        let read = journal.openHandles()
        #expect(read.records.isEmpty && read.torn == 1 && read.generations[3] == 1)

        #expect(journal.writeMountRecord([1, 2, 3]) && journal.writeMountRecord([4, 5, 6, 7]))
        #expect(journal.mountRecord() == [4, 5, 6, 7])
        // The newer record went into the second half (4096 + 64 KiB): a byte of it altered.
        _ = [UInt8(0xFF)].withUnsafeBytes { pwrite(journal.descriptor, $0.baseAddress, 1, off_t(4096 + (64 << 10) + 17)) }
        #expect(journal.mountRecord() == [1, 2, 3])

        let adopted = try StateJournal.adopt(dup(journal.descriptor))
        #expect(adopted.mountRecord() == [1, 2, 3])
        _ = withUnsafeBytes(of: UInt32(2).littleEndian) { pwrite(journal.descriptor, $0.baseAddress, 4, 8) }
        #expect(throws: StateJournal.Refused.self) { try StateJournal.adopt(dup(journal.descriptor)) }
    }

    @Test("A node snapshot altered in transit, or of another format, is refused whole")
    func nodeSnapshotChecksItself() throws {
        let nodes = [
            NodeRecord(
                id: 2, parent: 1, name: Array("models".utf8), identity: .inode(device: 1, inode: 5), type: UInt32(S_IFDIR),
                lookups: 3, superseded: false, lastVersion: nil)
        ]
        var encoded = NodeSnapshot.encode(nodes, nextID: 3)
        #expect(try NodeSnapshot.decode(encoded).nodes == nodes)
        encoded[encoded.count - 3] ^= 1
        #expect(throws: NodeSnapshot.Refused.self) { try NodeSnapshot.decode(encoded) }
    }
}
