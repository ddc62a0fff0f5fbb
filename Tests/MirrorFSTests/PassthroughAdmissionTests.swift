import BlockCache
import MirrorFS
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The kernel's side of passthrough, recorded: which memory files were registered and released.
final class RecordingBackingFiles: KernelFeatures {
    private let state = Mutex<(next: Int32, live: Set<Int32>, registered: Int)>((1, [], 0))
    let passthroughAvailable: Bool
    let directIOMayBeMapped: Bool
    init(passthrough: Bool = true, directIOMayBeMapped: Bool = false) {
        passthroughAvailable = passthrough
        self.directIOMayBeMapped = directIOMayBeMapped
    }
    func register(_ descriptor: Int32) throws(Errno) -> Int32 {
        guard fcntl(descriptor, F_GETFD) >= 0 else { throw .badFileDescriptor }
        return state.withLock { state in
            defer { state.next += 1 }
            state.live.insert(state.next)
            state.registered += 1
            return state.next
        }
    }
    func unregister(_ id: Int32) { _ = state.withLock { $0.live.remove(id) } }
    var live: Set<Int32> { state.withLock { $0.live } }
    var registered: Int { state.withLock { $0.registered } }
}

/// Which opens MirrorFS hands to the kernel (FUSE passthrough) and which it serves itself,
/// without mounting anything: the rules of Docs/ARCHITECTURE.md's "(b) FUSE passthrough" as seen from the cache.
@Suite("Mirror: passthrough opens")
struct PassthroughAdmissionTests {
    private let blockSize = 64 << 10

    /// A mirror with a recording kernel side, over a source holding "model": two blocks, mtime 1,000,000.
    private func twoBlockModel(seed: UInt64) throws -> (SourceFixture, RecordingBackingFiles, node: UInt64) {
        let backing = RecordingBackingFiles()
        let fixture = try SourceFixture(blockSize: blockSize, kernelFeatures: backing)
        try fixture.write("model", randomBytes(2 * blockSize, seed: seed))
        try fixture.setTimes("model", modified: timespec(tv_sec: 1_000_000, tv_nsec: 0))
        return (fixture, backing, try fixture.lookup("model"))
    }

    private func backingID(_ opened: OpenFile) -> Int32? { opened.backingID }

    @Test("A cold open is daemon-served; once the version is wholly cached, opens share one backing file, held until the last release")
    func residentVersionsArePassedThrough() throws {
        let backing = RecordingBackingFiles()
        let fixture = try SourceFixture(blockSize: blockSize, kernelFeatures: backing)
        let bytes = randomBytes(4 * blockSize, seed: 40)
        try fixture.write("model", bytes)
        let node = try fixture.lookup("model")

        let cold = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(backingID(cold) == nil, "nothing was cached yet")
        #expect(try fixture.read(cold, at: 0, count: bytes.count) == bytes)
        // A daemon-served open is still there: the node must not mix the two kinds.
        let whileServed = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(backingID(whileServed) == nil, "a passthrough open beside a daemon-served one")
        fixture.filesystem.release(cold)
        fixture.filesystem.release(whileServed)

        let first = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        let second = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        let id = try #require(backingID(first), "a wholly cached version was not passed through")
        #expect(backingID(second) == id, "one backing file per node")
        #expect(backing.registered == 1)
        #expect(fixture.filesystem.cache.statistics.heldFiles == 1)
        fixture.filesystem.release(first)
        #expect(backing.live == [id], "released while an open still reads it")
        fixture.filesystem.release(second)
        #expect(backing.live.isEmpty)
        #expect(fixture.filesystem.cache.statistics.heldFiles == 0, "the hold outlived the last release")
        #expect(fixture.filesystem.figures[.passthroughOpens] == 2)
    }

    @Test(
        "A lone open reads with direct I/O while blocks are still to load, if the kernel can map such opens; a second open beside it and a wholly cached file keep the page cache"
    )
    func directIOWhileLoading() throws {
        let kernel = RecordingBackingFiles(passthrough: false, directIOMayBeMapped: true)
        let fixture = try SourceFixture(blockSize: blockSize, kernelFeatures: kernel)
        let bytes = randomBytes(3 * blockSize + 100, seed: 41)
        try fixture.write("model", bytes)
        let node = try fixture.lookup("model")
        func openReadRelease(_ count: Int) throws -> OpenFile {
            let opened = try fixture.filesystem.open(node: node, flags: O_RDONLY)
            #expect(try fixture.read(opened, at: 0, count: count) == Array(bytes.prefix(count)))
            fixture.filesystem.release(opened)
            return opened
        }
        let cold = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(cold.directIO, "a cold open")
        let beside = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(!beside.directIO, "a second reader of the same file shares the page cache")
        #expect(try fixture.read(cold, at: 0, count: blockSize) == Array(bytes.prefix(blockSize)))
        fixture.filesystem.release(beside)
        fixture.filesystem.release(cold)
        let partial = try openReadRelease(bytes.count)
        #expect(partial.directIO, "three of four blocks were still to load")
        let warm = try openReadRelease(bytes.count)
        #expect(!warm.directIO && warm.keepKernelCache, "a wholly cached file without passthrough reads through the page cache")
        #expect(fixture.filesystem.figures[.directIOOpens] == 2)

        let unmappable = try SourceFixture(blockSize: blockSize, kernelFeatures: RecordingBackingFiles(passthrough: false))
        try unmappable.write("model", bytes)
        let opened = try unmappable.filesystem.open(node: try unmappable.lookup("model"), flags: O_RDONLY)
        #expect(!opened.directIO, "direct I/O where the kernel would refuse to map the file")
        unmappable.filesystem.release(opened)
    }

    @Test(
        "A source rewrite while passthrough readers are open: a new open is refused with ESTALE and the node superseded; the old readers keep their memory file"
    )
    func rewriteUnderPassthroughIsStale() throws {
        let (fixture, backing, node) = try twoBlockModel(seed: 41)
        let cold = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        _ = try fixture.read(cold, at: 0, count: 2 * blockSize)
        fixture.filesystem.release(cold)
        let reader = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        let id = try #require(backingID(reader))

        try fixture.overwrite("model", with: randomBytes(2 * blockSize, seed: 42))
        try fixture.setTimes("model", modified: timespec(tv_sec: 1_000_100, tv_nsec: 0))
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.filesystem.open(node: node, flags: O_RDONLY) }
        #expect(backing.live == [id], "the old reader's memory file was taken away")
        // The kernel looks the name up again and gets a new node for the new version.
        let renewed = try fixture.lookup("model")
        #expect(renewed != node)
        fixture.filesystem.release(reader)
        #expect(backing.live.isEmpty)
    }

    @Test("A passthrough open of a version other than the one opened last says so, so the kernel's attributes are dropped")
    func passthroughOfANewVersionReportsTheChange() throws {
        let (fixture, _, node) = try twoBlockModel(seed: 43)
        let old = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(backingID(old) == nil)
        fixture.filesystem.release(old)

        // The new version is larger and is warmed (cachefs warm) before anyone opens it.
        try fixture.write("model", randomBytes(3 * blockSize, seed: 44))
        try fixture.setTimes("model", modified: timespec(tv_sec: 1_000_100, tv_nsec: 0))
        _ = try fixture.filesystem.warm(relativePath: "model", offset: 0, length: Int64(3 * blockSize))
        let renewed = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(backingID(renewed) != nil, "the warmed version was not passed through")
        #expect(renewed.versionChanged, "the kernel would keep the old size")
        #expect(renewed.version.size == Int64(3 * blockSize))
        fixture.filesystem.release(renewed)
        let again = try fixture.filesystem.open(node: node, flags: O_RDONLY)
        #expect(backingID(again) != nil && !again.versionChanged)
        fixture.filesystem.release(again)
    }
}
