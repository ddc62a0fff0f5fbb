#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import Logging
import Prefetch
import SourceTree
import Synchronization
import SystemPackage

/// The read-only mirror of a source directory, with file data served through a block cache.
///
/// It speaks in node IDs, `stat` and `Errno`, and knows nothing of FUSE: the
/// FUSE layer translates each kernel request into one call here. Every method
/// may be called concurrently from any thread; a call that reads the source
/// blocks its caller.
public final class MirrorFilesystem: Sendable {
    public let cache: BlockCache
    private let prefetcher: Prefetcher?
    /// Where source opens and reads run when they have a deadline; nil runs them on the caller's thread.
    private let sourceCalls: SourceCallPool?
    private let sourceRootPath: String?
    private let sourceRootType: Int
    /// When the source root was last looked for again (monotonic nanoseconds), to do it at most twice a second.
    private let lastReattach = Atomic<Int64>(Int64.min / 2)
    private let nodes: Mutex<NodeTable>
    private let counters = Counters()
    private let logger: Logger
    /// Other instances' caches, asked on a miss before the source (see PeerSupport.swift).
    let remote: (any RemoteBlockSource)?
    let origins = ByteOrigins()
    let checkedVersions = RecentlyCheckedVersions()

    /// - Parameters:
    ///   - prefetcher: loads blocks ahead of sequential readers; nil reads only on demand.
    ///   - sourceHandleLimit: how many source descriptors of known files stay open at
    ///     once; other files are found again by name. Keep it well below RLIMIT_NOFILE.
    ///   - sourceCalls: runs opens and block reads of the source with a deadline, after
    ///     which they fail with EIO; nil waits for the source however long it takes.
    ///   - sourceRootPath: where the source root was opened; given, a source whose mount
    ///     went away (ENOTCONN) is opened again there once a file system of the same type is back.
    ///   - remote: where a missing block is looked for before the source (peers); nil reads only the source.
    public init(
        sourceRoot: PathHandle, cache: BlockCache, prefetcher: Prefetcher? = nil,
        sourceHandleLimit: Int = 4096, sourceCalls: SourceCallPool? = nil,
        sourceRootPath: String? = nil, remote: (any RemoteBlockSource)? = nil, logger: Logger
    ) throws(Errno) {
        let attributes = try sourceRoot.attributes()
        self.sourceRootPath = sourceRootPath
        sourceRootType = try sourceRoot.fileSystemType()
        self.cache = cache
        self.prefetcher = prefetcher
        self.sourceCalls = sourceCalls
        self.remote = remote
        self.logger = logger
        nodes = Mutex(NodeTable(root: sourceRoot, identity: attributes.identity, handleLimit: sourceHandleLimit))
    }

    public static let rootNode = NodeTable.rootID

    /// The source directory as it is now (reopened if the source's mount came back), which warm-up requests resolve paths beneath.
    func currentSourceRoot() throws(Errno) -> PathHandle {
        try recovering { () throws(Errno) in try self.handle(of: self.node(Self.rootNode)) }
    }

    // MARK: Names

    /// Resolves `name` in a directory and counts one lookup of the resulting node,
    /// which the kernel later returns through `forget`.
    public func lookup(parent: UInt64, name: UnsafePointer<CChar>) throws(Errno) -> (node: UInt64, attributes: stat) {
        let parent = try node(parent)
        let (handle, attributes) = try recovering { () throws(Errno) in try self.handle(of: parent).child(named: name) }
        let name = Array(UnsafeBufferPointer(start: name, count: strlen(name) + 1))
        var released: [PathHandle] = []  // closed when this scope ends, outside the lock
        let node = nodes.withLock { $0.remember(attributes.identity, in: parent, name: name, handle: handle, released: &released) }
        return (node.id, attributes)
    }

    public func forget(node id: UInt64, lookups: UInt64) {
        let released = nodes.withLock { $0.forget(id, count: lookups) }
        _ = released // its descriptor closes here, outside the lock
    }

    /// The node's path from the source root ("a/b/c"), as raw bytes; empty for the root.
    public func relativePath(of id: UInt64) throws(Errno) -> [UInt8] {
        try node(id).relativePath
    }

    public var knownNodeCount: Int { nodes.withLock { $0.count } }

    /// Source descriptors currently held for known nodes (bounded by `sourceHandleLimit`).
    public var cachedHandleCount: Int { nodes.withLock { $0.cachedHandleCount } }

    public func attributes(of id: UInt64) throws(Errno) -> stat {
        try recovering { () throws(Errno) in try self.handle(of: self.node(id)).attributes() }
    }

    public func linkTarget(of id: UInt64) throws(Errno) -> [UInt8] {
        try recovering { () throws(Errno) in try self.handle(of: self.node(id)).linkTarget() }
    }

    public func fileSystemStatistics() throws(Errno) -> statvfs {
        var statistics = try recovering { () throws(Errno) in try self.handle(of: self.node(Self.rootNode)).fileSystemStatistics() }
        statistics.f_flag |= UInt(ST_RDONLY)
        return statistics
    }

    public func extendedAttribute(of id: UInt64, named name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try recovering { () throws(Errno) in try self.handle(of: self.node(id)).extendedAttribute(named: name, into: buffer) }
    }

    public func extendedAttributeNames(of id: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try recovering { () throws(Errno) in try self.handle(of: self.node(id)).extendedAttributeNames(into: buffer) }
    }

    // MARK: Files

    /// Opens a file for reading.
    ///
    /// `keepKernelCache` is true when the file's version is the one opened last
    /// time, so pages the kernel cached then are still right; when the version
    /// changed, `versionChanged` tells the caller to drop the kernel's cached attributes too.
    public func open(node id: UInt64, flags: Int32) throws(Errno) -> (file: OpenFile, keepKernelCache: Bool, versionChanged: Bool) {
        guard flags & O_ACCMODE == O_RDONLY, flags & O_TRUNC == 0 else { throw .readOnlyFileSystem }
        let node = try node(id)
        let handle = try recovering { () throws(Errno) in try self.handle(of: node) }
        let (descriptor, attributes) = try recovering { () throws(Errno) in try self.callSource { () throws(Errno) in
            let descriptor = try handle.openForReading()
            do throws(Errno) {
                return (descriptor, try descriptor.attributes())
            } catch {
                try? descriptor.close()
                throw error
            }
        } }
        let version = attributes.version
        let previous = node.lastOpenedVersion.withLock { last in
            defer { last = version }
            return last
        }
        let source = SourceFile(handle: handle, descriptor: descriptor, version: version, relativePath: remote == nil ? nil : node.relativePath)
        let file = OpenFile(node: id, source: source, prefetch: prefetchStream(for: source))
        return (file, previous == version, previous != nil && previous != version)
    }

    private func prefetchStream(for source: SourceFile) -> PrefetchStream? {
        guard let prefetcher, source.version.size > 0 else { return nil }
        let blockSize = Int64(cache.blockSize)
        let size = source.version.size
        return prefetcher.stream(
            blockSize: cache.blockSize,
            blockCount: (size + blockSize - 1) / blockSize,
            // A block another reader is loading needs no prefetch thread to wait for it.
            isResident: { [cache] index in cache.isResidentOrLoading(BlockKey(file: source.version, index: index)) },
            load: { [self] index, lane in
                // Each lane reads through a handle of its own, kept from chunk to chunk, so that a
                // source that reads ahead per handle sees one handle read front to back.
                let reader: SourceFile
                if let kept = lane.context as? SourceFile {
                    reader = kept
                } else {
                    guard let opened = try? callSource({ () throws(Errno) in
                        SourceFile(handle: source.handle, descriptor: try source.handle.openForReading(), version: source.version)
                    }) else { return false }
                    lane.context = opened
                    reader = opened
                }
                let length = Int(min(blockSize, size - index * blockSize))
                return (try? block(index, of: source, length: length, reader: reader)) != nil
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
        let size = source.version.size
        let end = min(offset + Int64(count), size)
        guard offset >= 0, offset < end else { return [] }
        let blockSize = Int64(cache.blockSize)
        var slices: [BlockSlice] = []
        var index = offset / blockSize
        while index * blockSize < end {
            let blockStart = index * blockSize
            let expected = Int(min(blockSize, size - blockStart))
            if let prefetch = file.prefetch, !cache.isResidentOrLoading(BlockKey(file: source.version, index: index)) {
                prefetch.waitForLane(toLoad: index, limit: laneWaitLimit)
            }
            var blockTier = ReadTier.memory
            let block = try block(index, of: source, length: expected, tier: &blockTier)
            tier.include(blockTier)
            let wasResident = blockTier == .memory
            let lower = Int(max(offset, blockStart) - blockStart)
            let upper = Int(min(end - blockStart, Int64(block.count)))
            if upper > lower { slices.append(BlockSlice(block: block, range: lower..<upper)) }
            if wasResident && upper > lower { origins.memory.add(UInt64(upper - lower), ordering: .relaxed) }
            if block.count < expected { break } // the source ended early
            index += 1
        }
        counters.bytesRead.add(UInt64(slices.reduce(0) { $0 + $1.range.count }), ordering: .relaxed)
        return slices
    }

    /// Loads a block of `file` through the cache, reading through `reader` (the file itself by default).
    func block(_ index: Int64, of file: SourceFile, length: Int, reader: SourceFile? = nil) throws(Errno) -> Block {
        var tier = ReadTier.memory
        return try block(index, of: file, length: length, reader: reader, tier: &tier)
    }

    /// The same, also raising `tier` to where the block came from.
    func block(_ index: Int64, of file: SourceFile, length: Int, reader: SourceFile? = nil, tier: inout ReadTier) throws(Errno) -> Block {
        let key = BlockKey(file: file.version, index: index)
        let reader = reader ?? file
        let offset = index * Int64(cache.blockSize)
        do {
            var fromPeer = false
            let (block, origin) = try cache.fetch(for: key, length: length) { buffer in
                if let count = loadFromRemote(index, of: file, into: buffer.memory) {
                    fromPeer = true
                    return count
                }
                // The closure owns the buffer and the reader, so a read that outlives a timeout writes only to memory nobody else sees.
                let count = try callSource { () throws(Errno) in
                    let count = try reader.descriptor.readFully(into: buffer.memory, at: offset)
                    // A block read while the file was being rewritten may mix versions: refuse it rather than cache it.
                    guard try reader.descriptor.attributes().version.hasSameContent(as: file.version) else { throw Errno.staleNFSFileHandle }
                    return count
                }
                origins.source.add(UInt64(count), ordering: .relaxed)
                return count
            }
            tier.include(origin == .memory ? .memory : fromPeer ? .peer : .source)
            return block
        } catch let error as Errno {
            counters.sourceErrors.add(1, ordering: .relaxed)
            logger.warning("source read failed", metadata: ["block": "\(key)", "error": "\(error)"])
            throw error.meansSourceGone ? .ioError : error
        } catch {
            counters.sourceErrors.add(1, ordering: .relaxed)
            logger.error("source read failed", metadata: ["block": "\(key)", "error": "\(error)"])
            throw Errno.ioError
        }
    }

    /// Runs `body`; if the source's mount has gone away, looks for it again and retries once.
    /// Errors meaning "no source" reach the kernel as EIO: ENOTCONN would tell the reader that cachefs itself died.
    private func recovering<Result>(_ body: () throws(Errno) -> Result) throws(Errno) -> Result {
        do throws(Errno) {
            return try body()
        } catch {
            guard error.meansSourceGone else { throw error }
            guard reattachSource() else { throw .ioError }
            do throws(Errno) {
                return try body()
            } catch {
                throw error.meansSourceGone ? .ioError : error
            }
        }
    }

    /// Opens the source root again if the one in use stopped answering and a file
    /// system of the same type is mounted at its path again (not the bare directory beneath).
    private func reattachSource() -> Bool {
        guard let sourceRootPath else { return false }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nanoseconds = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        let last = lastReattach.load(ordering: .relaxed)
        guard nanoseconds - last >= 500_000_000,
              lastReattach.compareExchange(expected: last, desired: nanoseconds, ordering: .relaxed).exchanged
        else { return false }
        let current = nodes.withLock { $0.rootHandle }
        // The root answers (statfs is never answered from a kernel cache, unlike stat): the fault is elsewhere.
        if let _ = try? current.fileSystemStatistics() { return false }
        let handle: PathHandle
        do throws(Errno) {
            handle = try PathHandle.openRoot(sourceRootPath)
            let type = try handle.fileSystemType()
            guard type == sourceRootType else {
                logger.warning("source is gone; its path now holds another file system, waiting for the source to come back",
                               metadata: ["source": "\(sourceRootPath)", "type": "\(String(type, radix: 16))"])
                return false
            }
            _ = try handle.fileSystemStatistics()
        } catch {
            logger.warning("source is gone; waiting for it to come back", metadata: ["source": "\(sourceRootPath)", "error": "\(error)"])
            return false
        }
        var released: [PathHandle] = []
        nodes.withLock { $0.replaceRoot(with: handle, released: &released) }
        counters.sourceReattaches.add(1, ordering: .relaxed)
        logger.notice("source is back; reopened its root", metadata: ["source": "\(sourceRootPath)"])
        return true
    }

    /// How long a reader waits for a prefetch lane that has claimed its block before reading it itself.
    private var laneWaitLimit: Duration { sourceCalls?.timeout ?? .seconds(30) }

    /// Runs a source call under the source timeout, if there is one.
    private func callSource<Result: Sendable>(_ work: @escaping @Sendable () throws(Errno) -> Result) throws(Errno) -> Result {
        guard let sourceCalls else { return try work() }
        return try sourceCalls.run(work)
    }

    // MARK: Directories

    public func openDirectory(node id: UInt64) throws(Errno) -> OpenDirectory {
        OpenDirectory(stream: try recovering { () throws(Errno) in try self.handle(of: self.node(id)).openDirectory() })
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
        try directory.stream.withLock { (stream: inout DirectoryStream) throws(Errno) in
            stream.seek(to: offset)
            while let entry = try stream.next() {
                var item = DirectoryEntry(name: entry.name, node: 0, attributes: stat(), nextOffset: entry.nextOffset)
                item.attributes.st_ino = ino_t(entry.inode)
                item.attributes.st_mode = mode_t(entry.type) << 12
                if withAttributes && !entry.isDotOrDotDot {
                    do throws(Errno) {
                        (item.node, item.attributes) = try lookup(parent: parent, name: entry.name)
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

    // MARK: Statistics

    public var statistics: MirrorStatistics {
        MirrorStatistics(
            cache: cache.statistics,
            readRequests: counters.readRequests.load(ordering: .relaxed),
            bytesRead: counters.bytesRead.load(ordering: .relaxed),
            sourceErrors: counters.sourceErrors.load(ordering: .relaxed),
            knownNodes: knownNodeCount,
            sourceHandles: cachedHandleCount,
            sourceHandleReopens: counters.handleReopens.load(ordering: .relaxed),
            sourceTimeouts: sourceCalls?.timedOutCalls ?? 0,
            sourceReattaches: counters.sourceReattaches.load(ordering: .relaxed),
            prefetch: prefetcher?.statistics,
            origins: byteOrigins
        )
    }

    private func node(_ id: UInt64) throws(Errno) -> Node {
        guard let node = nodes.withLock({ $0[id] }) else { throw .staleNFSFileHandle }
        return node
    }

    /// A source descriptor for the node: the cached one, or found again by name
    /// from its parent (recursively), checked to still be the same file.
    ///
    /// A name that now leads to another file (renamed over, deleted) gives
    /// `ESTALE`, as NFS does; the kernel then looks the name up afresh.
    private func handle(of node: Node) throws(Errno) -> PathHandle {
        if let handle = nodes.withLock({ $0.cachedHandle(of: node.id) }) { return handle }
        guard let place = node.location else { throw .staleNFSFileHandle }
        let parent = try handle(of: place.parent)
        let (handle, attributes) = try place.name.withUnsafeBufferPointer { (name) throws(Errno) in
            try parent.child(named: name.baseAddress!)
        }
        guard attributes.identity == node.identity else { throw .staleNFSFileHandle }
        var released: [PathHandle] = []
        nodes.withLock { $0.cache(handle, for: node.id, released: &released) }
        counters.handleReopens.add(1, ordering: .relaxed)
        return handle
    }

    private final class Counters: Sendable {
        let readRequests = Atomic<UInt64>(0)
        let bytesRead = Atomic<UInt64>(0)
        let sourceErrors = Atomic<UInt64>(0)
        let handleReopens = Atomic<UInt64>(0)
        let sourceReattaches = Atomic<UInt64>(0)
    }
}

public struct MirrorStatistics: Sendable {
    public var cache: CacheStatistics
    /// Read requests from the kernel, and the bytes returned to them.
    public var readRequests: UInt64
    public var bytesRead: UInt64
    public var sourceErrors: UInt64
    public var knownNodes: Int
    /// Source descriptors held for known nodes, and how often a node's descriptor was reopened by name.
    public var sourceHandles: Int
    public var sourceHandleReopens: UInt64
    /// Source opens and reads that gave up after the source timeout.
    public var sourceTimeouts: UInt64
    /// Times the source root was opened again after its mount went away and came back.
    public var sourceReattaches: UInt64
    public var prefetch: PrefetchStatistics?
    /// Where the loaded and returned bytes came from: memory, peers, the source.
    public var origins: ByteOriginStatistics
}

/// A contiguous range of one cached block's bytes.
public struct BlockSlice: Sendable {
    public let block: Block
    public let range: Range<Int>

    /// The bytes; valid while the slice (and so its block) is alive.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: block.bytes[range]) }
}

/// A file open for reading through the mount, pinned to the version it had when opened.
public final class OpenFile: Sendable {
    public let node: UInt64
    let source: SourceFile
    let prefetch: PrefetchStream?

    init(node: UInt64, source: SourceFile, prefetch: PrefetchStream?) {
        self.node = node
        self.source = source
        self.prefetch = prefetch
    }

    public var version: FileVersion { source.version }

    /// The reader has gone: blocks still queued for it are not loaded.
    deinit { prefetch?.cancel() }
}

/// The source descriptor behind an open file. Prefetch jobs hold it too, so it
/// closes when the last of them lets go, not while one is reading.
final class SourceFile: Sendable {
    /// The file itself, for prefetch loads that open their own descriptors.
    let handle: PathHandle
    let descriptor: FileDescriptor
    let version: FileVersion
    /// The path below the source root when opened, which names the file to peers; nil without peers.
    let relativePath: [UInt8]?

    init(handle: PathHandle, descriptor: FileDescriptor, version: FileVersion, relativePath: [UInt8]? = nil) {
        self.handle = handle
        self.descriptor = descriptor
        self.version = version
        self.relativePath = relativePath
    }

    deinit { try? descriptor.close() }
}

/// A source directory open for listing. FUSE may call from several threads, so the stream is locked.
public final class OpenDirectory: Sendable {
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

extension Errno {
    /// The source's mount is gone (its FUSE daemon died, a device vanished).
    var meansSourceGone: Bool { self == .socketNotConnected || self == .operationNotSupportedByDevice }
}

extension stat {
    var identity: SourceIdentity { SourceIdentity(device: UInt64(st_dev), inode: UInt64(st_ino)) }

    var version: FileVersion {
        FileVersion(
            device: UInt64(st_dev), inode: UInt64(st_ino), size: Int64(st_size),
            modified: Timestamp(seconds: Int64(st_mtim.tv_sec), nanoseconds: Int64(st_mtim.tv_nsec)),
            changed: Timestamp(seconds: Int64(st_ctim.tv_sec), nanoseconds: Int64(st_ctim.tv_nsec))
        )
    }
}
