import BlockCache
import Logging
import PeerTransport
import Prefetch
import Reporting
import SourceTree
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The read-only mirror of a source directory, with file data served through a block cache.
///
/// It speaks in node IDs, `stat` and `Errno`, and knows nothing of FUSE: the
/// FUSE layer translates each kernel request into one call here. The work is
/// split by job: `SourceAccess` reaches the source (nodes, descriptors,
/// deadlines, reattaching), `BlockLoader` fills the cache (memory, peers,
/// source), and this type answers the filesystem operations on top of them.
///
/// Every method may be called concurrently from any thread; a call that reads
/// the source blocks its caller.
public final class MirrorFilesystem: Sendable {
    public var cache: BlockCache { loader.cache }
    let access: SourceAccess
    let loader: BlockLoader
    private let prefetcher: Prefetcher?
    /// Where wholly cached files are handed to the kernel (FUSE passthrough); nil serves every read.
    let kernelFeatures: (any KernelFeatures)?
    let counters = Counters()
    let logger: Logger
    /// The handles the kernel holds for open files and directories.
    let handles: OpenHandles
    let checkedVersions = RecentlyCheckedVersions()
    let peerLoadSources = PeerLoadSources()

    /// - Parameters:
    ///   - prefetcher: loads blocks ahead of sequential readers; nil reads only on demand.
    ///   - sourceHandleLimit: how many source descriptors of known files stay open at
    ///     once; other files are found again by name. Keep it well below RLIMIT_NOFILE.
    ///   - sourceCalls: runs opens and block reads of the source with a deadline, after
    ///     which they fail with EIO; nil waits for the source however long it takes.
    ///   - sourceRootPath: where the source root was opened; given, a source whose mount
    ///     went away (ENOTCONN) is opened again there once a file system of the same type is back.
    ///   - fleet: the other instances, asked for a missing block before the source; nil reads only the source.
    ///   - servesPeers: whether this instance sends its blocks to peers (their checksums are then made as they load).
    ///   - blockIO: how block bytes are read from the source (tests put slow or failing sources here).
    ///   - kernelFeatures: hands wholly cached files to the kernel to read directly; nil serves every read here.
    ///   - journal: records open handles and node IDs for a daemon taking over from this one; nil records nothing.
    public init(
        sourceRoot: PathHandle, cache: BlockCache, prefetcher: Prefetcher? = nil,
        sourceHandleLimit: Int = 4096, sourceCalls: SourceCallPool? = nil,
        sourceRootPath: String? = nil, fleet: (any BlockFleet)? = nil, servesPeers: Bool = false,
        blockIO: any SourceBlockIO = DescriptorBlockIO(), kernelFeatures: (any KernelFeatures)? = nil,
        journal: (any KernelStateJournal)? = nil, logger: Logger
    ) throws(Errno) {
        self.kernelFeatures = kernelFeatures
        self.logger = logger
        handles = OpenHandles(journal: journal)
        access = try SourceAccess(
            root: sourceRoot, rootPath: sourceRootPath, handleLimit: sourceHandleLimit,
            sourceCalls: sourceCalls, journal: journal, logger: logger)
        loader = BlockLoader(
            cache: cache, access: access, blockIO: blockIO, fleet: fleet, servesPeers: servesPeers,
            stagedAtOnce: (prefetcher?.blocksLoadingAtMost ?? 0) * cache.blockSize, logger: logger)
        self.prefetcher = prefetcher
    }

    public static let rootNode = NodeTable.rootID

    // MARK: Names

    /// Resolves `name` in a directory and counts one lookup of the resulting node,
    /// which the kernel later returns through `forget`. The source entry is opened, and its
    /// descriptor kept for the node: a looked-up file is usually opened or read next.
    public func lookup(parent: UInt64, name: UnsafePointer<CChar>) throws(Errno) -> (node: UInt64, attributes: stat) {
        let parent = try access.node(parent)
        let (handle, attributes) = try access.recovering { () throws(Errno) in try self.access.handle(of: parent).child(named: name) }
        return (remember(name, in: parent, parentPath: nil, attributes: attributes, handle: handle).id, presented(attributes))
    }

    /// A source file's attributes as the mount shows them: the same in every field but the preferred
    /// I/O size of regular files, which is the cache's block size. Readers size their reads by it (cat,
    /// cp, Python's buffered files): with the source's 4 KiB, each `read(2)` of a file still loading is a
    /// request to the daemon (direct I/O) for 4 or 128 KiB instead of a block.
    func presented(_ attributes: stat) -> stat {
        guard attributes.st_mode & S_IFMT == S_IFREG else { return attributes }
        var shown = attributes
        shown.st_blksize = blksize_t(cache.blockSize)
        return shown
    }

    /// A listed entry's lookup (readdirplus): its attributes only, with no descriptor opened.
    /// `ls -l` of a large tree lists thousands of files it never opens, each of which would
    /// cost an open and a close at the source (on rclone, a tenth of the walk).
    private func lookupListed(_ name: UnsafePointer<CChar>, in parent: Node, parentPath: [UInt8]?) throws(Errno) -> (
        node: UInt64, attributes: stat
    ) {
        let attributes = try access.recovering { () throws(Errno) in try self.access.handle(of: parent).childAttributes(named: name) }
        return (remember(name, in: parent, parentPath: parentPath, attributes: attributes, handle: nil).id, presented(attributes))
    }

    private func remember(_ name: UnsafePointer<CChar>, in parent: Node, parentPath: [UInt8]?, attributes: stat, handle: PathHandle?)
        -> Node
    {
        let name = Array(UnsafeBufferPointer(start: name, count: strlen(name) + 1))
        let identity = access.identityRule.identity(
            of: attributes, path: parentPath.map { Node.path(from: $0, appending: name) } ?? Node.path(of: parent, appending: name))
        var released: [PathHandle] = [] // closed when this scope ends, outside the lock
        return access.nodes.withLock {
            $0.remember(identity, type: attributes.st_mode & S_IFMT, in: parent, name: name, handle: handle, released: &released)
        }
    }

    public func forget(node id: UInt64, lookups: UInt64) {
        let released = access.nodes.withLock { $0.forget(id, count: lookups) }
        _ = released // its descriptor closes here, outside the lock
    }

    /// The node's path from the source root ("a/b/c"), as raw bytes; empty for the root.
    public func relativePath(of id: UInt64) throws(Errno) -> [UInt8] {
        try access.node(id).relativePath
    }

    public var knownNodeCount: Int { access.nodes.withLock { $0.count } }

    /// Source descriptors currently held for known nodes (bounded by `sourceHandleLimit`).
    public var cachedHandleCount: Int { access.nodes.withLock { $0.cachedHandleCount } }

    public func attributes(of id: UInt64) throws(Errno) -> stat {
        presented(try onNode(id) { (handle) throws(Errno) in try handle.attributes() })
    }

    public func linkTarget(of id: UInt64) throws(Errno) -> [UInt8] {
        try onNode(id) { (handle) throws(Errno) in try handle.linkTarget() }
    }

    public func fileSystemStatistics() throws(Errno) -> statvfs {
        var statistics = try onNode(Self.rootNode) { (handle) throws(Errno) in try handle.fileSystemStatistics() }
        statistics.f_flag |= UInt(ST_RDONLY)
        return statistics
    }

    /// The named extended attribute, passed through exactly. On a source without extended
    /// attributes this is ENOSYS, which tells the kernel to stop asking for the rest of the
    /// mount (it then answers EOPNOTSUPP itself): `ls -l` asks two per file, each a round trip.
    public func extendedAttribute(of id: UInt64, named name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno)
        -> Int
    {
        counters.extendedAttributeRequests.add(1, ordering: .relaxed)
        guard access.extendedAttributesSupported else { throw .noFunction }
        return try onNode(id) { (handle) throws(Errno) in try handle.extendedAttribute(named: name, into: buffer) }
    }

    public func extendedAttributeNames(of id: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        counters.extendedAttributeRequests.add(1, ordering: .relaxed)
        guard access.extendedAttributesSupported else { throw .noFunction }
        return try onNode(id) { (handle) throws(Errno) in try handle.extendedAttributeNames(into: buffer) }
    }

    /// Runs `body` on the node's source descriptor, looking for the source again if its mount went away.
    private func onNode<Result>(_ id: UInt64, _ body: (PathHandle) throws(Errno) -> Result) throws(Errno) -> Result {
        try access.recovering { () throws(Errno) in try body(self.access.handle(of: self.access.node(id))) }
    }

    // MARK: Files

    /// Opens a file for reading: in passthrough if its version is wholly in memory and
    /// nothing of the node is open the other way, otherwise served by the daemon (see `NodeOpens`).
    /// Each successful open is matched by one `release`.
    public func open(node id: UInt64, flags: Int32) throws(Errno) -> OpenFile {
        guard flags & O_ACCMODE == O_RDONLY, flags & O_TRUNC == 0 else { throw .readOnlyFileSystem }
        let node = try access.node(id)
        let source = try access.recovering { () throws(Errno) in
            try self.access.open(self.access.handle(of: node), relativePath: node.relativePath)
        }
        return try admit(source, on: node)
    }

    func prefetchStream(for source: SourceFile) -> PrefetchStream? {
        guard let prefetcher, source.version.size > 0 else { return nil }
        let blockSize = Int64(cache.blockSize)
        let size = source.version.size
        return prefetcher.stream(
            blockSize: cache.blockSize,
            blockCount: (size + blockSize - 1) / blockSize,
            // A block another reader is loading needs no prefetch thread to wait for it.
            isResident: { [cache] index in cache.isResidentOrLoading(BlockKey(file: source.version, index: index)) },
            loadRun: { [access, loader] blocks, lane in
                // Each lane reads through a descriptor of its own, kept from chunk to chunk, so that a
                // source that reads ahead per descriptor sees one read front to back, in long reads.
                let laneFile: SourceFile
                if let kept = lane.context as? SourceFile {
                    laneFile = kept
                } else {
                    guard let opened = try? access.open(source.handle, relativePath: source.relativePath) else { return 0 }
                    lane.context = opened
                    laneFile = opened
                }
                guard let loaded = try? loader.blockRun(from: blocks.lowerBound, count: blocks.count, of: source, through: laneFile) else {
                    return 0
                }
                if loaded > 0 { return loaded }
                // Not a run the cache can lay side by side (a small file, a block it would not keep): this block alone.
                guard let span = loader.spans(from: blocks.lowerBound * blockSize, to: blocks.lowerBound * blockSize + 1, size: size).first,
                    (try? loader.block(span, of: source, through: laneFile)) != nil
                else { return 0 }
                return 1
            }
        )
    }

    /// Reads up to `count` bytes at `offset` as slices of cached blocks, stopping at the end of file.
    ///
    /// The slices keep their blocks alive; the caller hands their bytes to the
    /// kernel and then drops them.
    public func read(_ file: OpenFile, at offset: Int64, count: Int) throws(Errno) -> [BlockSlice] {
        var tier = ReadTier.memory
        return try read(file, at: offset, count: count, tier: &tier)
    }

    /// `read(_:at:count:)`, also raising `tier` to the slowest tier any of its blocks came from.
    public func read(_ file: OpenFile, at offset: Int64, count: Int, tier: inout ReadTier) throws(Errno) -> [BlockSlice] {
        counters.readRequests.add(1, ordering: .relaxed)
        file.prefetch?.didRead(offset: offset, length: count) // before this read's own loads, to overlap them
        let source = file.source
        let end = offset + Int64(count)
        var slices: [BlockSlice] = []
        for span in loader.spans(from: offset, to: end, size: source.version.size) {
            if let prefetch = file.prefetch, !cache.isResidentOrLoading(BlockKey(file: source.version, index: span.index)) {
                prefetch.waitForLane(toLoad: span.index, limit: access.laneWaitLimit)
            }
            let (block, blockTier) = try loader.block(span, of: source)
            tier.include(blockTier)
            let lower = Int(max(offset, span.start) - span.start)
            let upper = Int(min(end - span.start, Int64(block.count)))
            if upper > lower { slices.append(BlockSlice(block: block, range: lower..<upper)) }
            if block.count < span.length { break } // the source ended early
        }
        counters.bytesRead.add(UInt64(slices.reduce(0) { $0 + $1.range.count }), ordering: .relaxed)
        return slices
    }

    // MARK: Directories

    public func openDirectory(node id: UInt64) throws(Errno) -> OpenDirectory {
        OpenDirectory(stream: try onNode(id) { (handle) throws(Errno) in try handle.openDirectory() })
    }

    /// Lists a directory from `offset`, handing each entry to `emit` until it returns false.
    ///
    /// With `withAttributes` (readdirplus), each entry other than `.` and `..`
    /// is looked up and counted like `lookup`; an entry `emit` refuses is forgotten again.
    public func readDirectory(
        _ directory: OpenDirectory,
        from offset: Int,
        withAttributes: Bool,
        parent: UInt64,
        emit: (DirectoryEntry) -> Bool
    ) throws(Errno) {
        let parentNode = withAttributes ? try access.node(parent) : nil
        // Under the path rule every entry's identity starts with the directory's path: worked out once here.
        let parentPath = parentNode.flatMap { access.identityRule == .path ? $0.relativePath : nil }
        try directory.stream.withLock { (stream: inout DirectoryStream) throws(Errno) in
            stream.seek(to: offset)
            while let entry = try stream.next() {
                var item = DirectoryEntry(name: entry.name, node: 0, attributes: stat(), nextOffset: entry.nextOffset)
                item.attributes.st_ino = ino_t(entry.inode)
                item.attributes.st_mode = mode_t(entry.type) << 12
                if let parentNode, !entry.isDotOrDotDot {
                    do throws(Errno) {
                        (item.node, item.attributes) = try lookupListed(entry.name, in: parentNode, parentPath: parentPath)
                    } catch {
                        if error == .noSuchFileOrDirectory { continue } // removed since the directory was read
                        throw error
                    }
                }
                guard emit(item) else {
                    // Unlisted: the kernel asks again from the previous entry's offset.
                    if item.node != 0 { forget(node: item.node, lookups: 1) }
                    return
                }
            }
        }
    }

    // MARK: Figures

    final class Counters: Sendable {
        let readRequests = Atomic<UInt64>(0)
        let bytesRead = Atomic<UInt64>(0)
        /// Opens answered with FOPEN_PASSTHROUGH (the kernel reads the file itself).
        let passthroughOpens = Atomic<UInt64>(0)
        /// Daemon-served opens answered with FOPEN_DIRECT_IO (blocks still to load).
        let directIOOpens = Atomic<UInt64>(0)
        let extendedAttributeRequests = Atomic<UInt64>(0)
    }
}

extension MirrorFilesystem: FigureReporter {
    /// Its own figures, and those of the parts it owns: the cache, the loader, the source, the prefetcher.
    public func report(into figures: inout FigureValues) {
        figures[.readRequests] = counters.readRequests.load(ordering: .relaxed)
        figures[.bytesRead] = counters.bytesRead.load(ordering: .relaxed)
        figures[.passthroughOpens] = counters.passthroughOpens.load(ordering: .relaxed)
        figures[.directIOOpens] = counters.directIOOpens.load(ordering: .relaxed)
        figures[.extendedAttributeRequests] = counters.extendedAttributeRequests.load(ordering: .relaxed)
        cache.report(into: &figures)
        loader.report(into: &figures)
        access.report(into: &figures)
        if let prefetcher { prefetcher.report(into: &figures) } else { figures.reportZero(Prefetcher.figures) }
    }
}

/// A contiguous range of one cached block's bytes.
public struct BlockSlice: Sendable {
    public let block: Block
    public let range: Range<Int>

    /// The bytes; valid while the slice (and so its block) is alive.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: block.bytes[range]) }
}

/// A file open for reading through the mount (an open), pinned to the version it had when opened.
public final class OpenFile: Sendable {
    /// The node opened: held, so that its release finds it whatever the node table did meanwhile.
    let opened: Node
    let source: SourceFile
    let prefetch: PrefetchStream?
    /// How the open is served: by the daemon, or by the kernel from memory (passthrough).
    public let mode: OpenMode
    /// The version is not the one the node was last opened at: the kernel's attributes of the node are stale.
    public let versionChanged: Bool

    init(node: Node, source: SourceFile, prefetch: PrefetchStream?, mode: OpenMode, versionChanged: Bool) {
        opened = node
        self.source = source
        self.prefetch = prefetch
        self.mode = mode
        self.versionChanged = versionChanged
    }

    public var version: FileVersion { source.version }

    public var node: UInt64 { opened.id }

    /// Whether the kernel may keep its page cache of the file (a daemon-served open of the version opened last).
    public var keepKernelCache: Bool {
        if case .daemonServed(let keep, _) = mode { keep } else { false }
    }

    /// Whether the open is served with direct I/O.
    public var directIO: Bool {
        if case .daemonServed(_, let direct) = mode { direct } else { false }
    }

    /// The kernel's backing id of a passthrough open; nil for a daemon-served one.
    public var backingID: Int32? {
        if case .passthrough(let id) = mode { id } else { nil }
    }

    /// The reader has gone: blocks still queued for it are not loaded.
    deinit { prefetch?.cancel() }
}

/// A source directory open for listing.
public final class OpenDirectory: Sendable {
    /// The directory's one stream, read and moved by `readDirectory`. Lock order: first, before the
    /// node table's lock and a node's `place` (readdirplus looks each entry up under it). Held across
    /// the source's getdents and each entry's fstatat: only a listing of this same open directory waits
    /// for it, and the kernel already serializes those (a directory's file position lock), so it never
    /// blocks a reader of another file or directory.
    let stream: Mutex<DirectoryStream>

    init(stream: DirectoryStream) { self.stream = Mutex(stream) }
}

public struct DirectoryEntry {
    /// Valid only during the `emit` call.
    public var name: UnsafePointer<CChar>
    /// The node counted for this entry by readdirplus, or 0.
    public var node: UInt64
    /// Full attributes with readdirplus; otherwise only inode and type.
    public var attributes: stat
    public var nextOffset: Int
}

extension DirectoryStream.Entry {
    var isDotOrDotDot: Bool {
        name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0))
    }
}
