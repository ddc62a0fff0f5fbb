import BlockCache
import Logging
import Reporting
import SourceTree
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The source as this daemon reaches it: the node table (kernel node IDs and the
/// source files behind them, with a bounded cache of O_PATH descriptors), the one
/// way files are opened for reading, the deadline on source calls, and reattaching
/// when the source's mount went away and came back.
///
/// Threads: every method may be called from any thread; those that reach the
/// source block their caller (at most the source timeout, where there is one).
final class SourceAccess: Sendable {
    /// The node table and its cache of descriptors. Lock order: after `OpenDirectory.stream`, before
    /// a node's `place` (a lookup moves the node it finds); never held across a source call:
    /// descriptors it lets go are closed after it is released.
    let nodes: Mutex<NodeTable>
    /// How this source's files are told apart (inode or path), from its file system type.
    let identityRule: IdentityRule
    /// Whether the source supports extended attributes at all, from asking its root once at start.
    /// Object-store FUSE clients (rclone, s3fs) do not; their every file then answers ENOSYS.
    let extendedAttributesSupported: Bool
    /// Whether files are opened with O_DIRECT: on a FUSE source (an object-store client), whose
    /// page cache would otherwise keep one more copy of every byte cachefs caches. Reading rclone
    /// through its page cache also cost about twice the CPU and a fifth of the rate (scenario 3 in
    /// Docs/BENCHMARKS.md's limits page has the figures).
    let readsBypassPageCache: Bool
    /// Where source opens and reads run when they have a deadline; nil runs them on the caller's thread.
    let sourceCalls: SourceCallPool?
    private let rootPath: String?
    private let rootType: Int
    /// When the source root was last looked for again (monotonic), to do it at most twice a second.
    /// Lock order: a leaf.
    private let lastReattach = Mutex<ContinuousClock.Instant?>(nil)
    let counters = Counters()
    private let logger: Logger

    final class Counters: Sendable {
        let handleReopens = Atomic<UInt64>(0)
        let reattaches = Atomic<UInt64>(0)
        /// Calls that found the source's mount gone (ENOTCONN) and could not reattach.
        let unavailable = Atomic<UInt64>(0)
    }

    init(
        root: PathHandle, rootPath: String?, handleLimit: Int, sourceCalls: SourceCallPool?,
        journal: (any KernelStateJournal)? = nil, logger: Logger
    ) throws(Errno) {
        let attributes = try root.attributes()
        rootType = try root.fileSystemType()
        identityRule = IdentityRule(fileSystemType: rootType)
        readsBypassPageCache = rootType == PathHandle.fuseFileSystemType
        do throws(Errno) {
            _ = try root.extendedAttributeNames(into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
            extendedAttributesSupported = true
        } catch {
            extendedAttributesSupported = !(error == .notSupported || error == .noFunction)
        }
        self.rootPath = rootPath
        self.sourceCalls = sourceCalls
        self.logger = logger
        nodes = Mutex(
            NodeTable(root: root, identity: identityRule.identity(of: attributes, path: []), handleLimit: handleLimit, journal: journal))
        logger.info(
            "source",
            metadata: [
                "path": "\(rootPath ?? "-")", "type": "\(String(rootType, radix: 16))", "files named by": "\(identityRule)",
                "reads": "\(readsBypassPageCache ? "O_DIRECT" : "through the page cache")",
                "extended attributes":
                    "\(extendedAttributesSupported ? "passed through" : "not supported (the kernel is told once, ENOSYS)")",
            ])
    }

    func node(_ id: UInt64) throws(Errno) -> Node {
        guard let node = nodes.withLock({ $0[id] }) else { throw .staleNFSFileHandle }
        return node
    }

    /// The source directory as it is now (reopened if the source's mount came back).
    func currentRoot() throws(Errno) -> PathHandle {
        try recovering { () throws(Errno) in try self.handle(of: self.node(NodeTable.rootID)) }
    }

    /// A source descriptor for the node: the cached one, or found again by name
    /// from its parent (recursively), checked to still be the same file: the same
    /// identity (under the path rule, the same path) and the same type.
    ///
    /// A name that now leads to another file (renamed over, deleted) gives
    /// `ESTALE`, as NFS does; the kernel then looks the name up afresh.
    func handle(of node: Node) throws(Errno) -> PathHandle {
        if let handle = nodes.withLock({ $0.cachedHandle(of: node.id) }) { return handle }
        guard let place = node.location else { throw .staleNFSFileHandle }
        let parent = try handle(of: place.parent)
        let (handle, attributes) = try place.name.withUnsafeBufferPointer { (name) throws(Errno) in
            try parent.child(named: name.baseAddress!)
        }
        guard identityRule.identity(of: attributes, path: node.relativePath) == node.identity,
            attributes.st_mode & S_IFMT == node.type
        else { throw .staleNFSFileHandle }
        var released: [PathHandle] = []
        nodes.withLock { $0.cache(handle, for: node.id, released: &released) }
        counters.handleReopens.add(1, ordering: .relaxed)
        return handle
    }

    /// Opens a source file for reading, with its version read by `fstat` on the new
    /// descriptor: the one way every reader, prefetch lane and warm-up opens the source,
    /// under the source timeout like a block read (an object-store client may fetch
    /// metadata at open; a hard-mounted NAS may stall it).
    func open(_ handle: PathHandle, relativePath: [UInt8]) throws(Errno) -> SourceFile {
        let (descriptor, attributes) = try call(.open) { [readsBypassPageCache] () throws(Errno) in
            let descriptor = try handle.openForReading(bypassingPageCache: readsBypassPageCache)
            do throws(Errno) {
                return (descriptor, try descriptor.attributes())
            } catch {
                try? descriptor.close()
                throw error
            }
        }
        return SourceFile(
            handle: handle, descriptor: descriptor, version: identityRule.version(of: attributes, path: relativePath),
            relativePath: relativePath)
    }

    /// What a source call was doing, for its log line.
    enum Operation: String {
        case open, read
    }

    /// Runs a source call under the source timeout, if there is one. A call that times out
    /// is logged as such and reaches the reader as EIO; the pool counts it.
    func call<Result: Sendable>(_ operation: Operation, _ work: @escaping @Sendable () throws(Errno) -> Result) throws(Errno) -> Result {
        guard let sourceCalls else { return try work() }
        do throws(Errno) {
            return try sourceCalls.run(work)
        } catch .timedOut {
            logger.warning("source \(operation.rawValue) timed out", metadata: ["timeout": "\(sourceCalls.timeout)"])
            throw .ioError
        }
    }

    /// How long a reader waits for a prefetch lane that has claimed its block before reading it itself.
    var laneWaitLimit: Duration { sourceCalls?.timeout ?? .seconds(30) }

    /// Runs `body`; if the source's mount has gone away, looks for it again and retries once.
    /// Errors meaning "no source" reach the kernel as EIO: ENOTCONN would tell the reader that cachefs itself died.
    func recovering<Result>(_ body: () throws(Errno) -> Result) throws(Errno) -> Result {
        do throws(Errno) {
            return try body()
        } catch {
            guard error.meansSourceGone else { throw error }
            guard reattach() else {
                counters.unavailable.add(1, ordering: .relaxed)
                throw .ioError
            }
            do throws(Errno) {
                return try body()
            } catch {
                throw error.meansSourceGone ? .ioError : error
            }
        }
    }

    /// Opens the source root again if the one in use stopped answering and a file
    /// system of the same type is mounted at its path again (not the bare directory beneath).
    private func reattach() -> Bool {
        guard let rootPath else { return false }
        let now = ContinuousClock.now
        let due = lastReattach.withLock { last in
            guard last.map({ now - $0 >= .milliseconds(500) }) ?? true else { return false }
            last = now
            return true
        }
        guard due else { return false }
        let current = nodes.withLock { $0.rootHandle }
        // The root answers (statfs is never answered from a kernel cache, unlike stat): the fault is elsewhere.
        if let _ = try? current.fileSystemStatistics() { return false }
        let handle: PathHandle
        do throws(Errno) {
            handle = try PathHandle.openRoot(rootPath)
            let type = try handle.fileSystemType()
            guard type == rootType else {
                logger.warning(
                    "source is gone; its path now holds another file system, waiting for the source to come back",
                    metadata: ["source": "\(rootPath)", "type": "\(String(type, radix: 16))"])
                return false
            }
            _ = try handle.fileSystemStatistics()
        } catch {
            logger.warning("source is gone; waiting for it to come back", metadata: ["source": "\(rootPath)", "error": "\(error)"])
            return false
        }
        var released: [PathHandle] = []
        nodes.withLock { $0.replaceRoot(with: handle, released: &released) }
        counters.reattaches.add(1, ordering: .relaxed)
        logger.notice("source is back; reopened its root", metadata: ["source": "\(rootPath)"])
        return true
    }
}

extension SourceAccess: FigureReporter {
    func report(into figures: inout FigureValues) {
        let (known, handles) = nodes.withLock { ($0.count, $0.cachedHandleCount) }
        figures[.knownNodes] = UInt64(known)
        figures[.sourceHandles] = UInt64(handles)
        figures[.sourceHandleReopens] = counters.handleReopens.load(ordering: .relaxed)
        figures[.sourceReattaches] = counters.reattaches.load(ordering: .relaxed)
        figures[.sourceUnavailable] = counters.unavailable.load(ordering: .relaxed)
        // The deadline's pool keeps its own count; without a deadline nothing times out.
        if let sourceCalls { sourceCalls.report(into: &figures) } else { figures[.sourceTimeouts] = 0 }
    }
}

/// The source descriptor behind an open file, and the version `fstat` found when it
/// was opened. Prefetch jobs hold it too, so it closes when the last of them lets go,
/// not while one is reading.
public final class SourceFile: Sendable {
    /// The file itself, for prefetch lanes that open descriptors of their own.
    let handle: PathHandle
    public let descriptor: FileDescriptor
    public let version: FileVersion
    /// The path below the source root when opened, which names the file to peers.
    let relativePath: [UInt8]

    init(handle: PathHandle, descriptor: FileDescriptor, version: FileVersion, relativePath: [UInt8]) {
        self.handle = handle
        self.descriptor = descriptor
        self.version = version
        self.relativePath = relativePath
    }

    deinit { try? descriptor.close() }
}

extension Errno {
    /// The source's mount is gone (its FUSE daemon died, a device vanished).
    var meansSourceGone: Bool { self == .socketNotConnected || self == .operationNotSupportedByDevice }
}
