import BlockCache
import Synchronization
import SystemPackage

/// What the kernel can do with an open besides reading through its page cache: read a memory
/// file itself (FUSE passthrough), or serve the open with direct I/O. Negotiated and implemented
/// by the FUSE layer (`FuseKernelFeatures`); MirrorFS decides which opens use them (`admit`).
public protocol KernelFeatures: Sendable {
    /// Whether the kernel takes backing files at all (negotiated, permitted, not turned off).
    var passthroughAvailable: Bool { get }
    /// Whether a direct-I/O open can still be mapped (else the kernel refuses mmap with ENODEV,
    /// which would break readers such as safetensors).
    var directIOMayBeMapped: Bool { get }
    /// Registers `descriptor` as a backing file; returns the kernel's backing id.
    func register(_ descriptor: Int32) throws(Errno) -> Int32
    /// Releases a backing id; files already open keep reading it. A failure is the implementer's to log.
    func unregister(_ id: Int32)
}

/// How an open is served.
public enum OpenMode: Sendable {
    /// The daemon answers each read. `keepKernelCache`: the version is the one opened last time, so the
    /// kernel's page cache of it is right; `directIO`: some of its blocks are still to be loaded, so
    /// reads bypass the page cache (see `admit`).
    case daemonServed(keepKernelCache: Bool, directIO: Bool)
    /// The kernel reads the version's memory file itself, registered as `backingID`.
    case passthrough(backingID: Int32)
}

/// What a node's open files are, which decides how the next open is served. The kernel
/// allows one mode per inode at a time, and one backing file per inode while any
/// passthrough open lives (kernel fs/fuse/iomode.c):
/// - no opens: a wholly cached version is opened in passthrough, anything else daemon-served;
/// - daemon-served opens: so is the next one;
/// - passthrough opens of version V: the next open of V shares the backing id; an open that
///   finds the source changed is refused with ESTALE and the node is superseded, so the
///   kernel looks the name up again and gets a new node for the new version, while the old
///   readers keep reading V from its held memory file.
struct NodeOpens {
    var daemonServed = 0
    var passthrough: Passthrough?
    /// The version last opened, which decides whether the kernel may keep its page cache.
    var lastVersion: FileVersion?

    struct Passthrough {
        /// The version the backing file holds.
        var version: FileVersion
        /// Keeps its memory whole; nil for an inherited open whose file the cache could not take
        /// (the kernel keeps reading it from the backing file; this daemon never touches it).
        var hold: VersionHold?
        var backingID: Int32
        var opens: Int
    }
}

extension MirrorFilesystem {
    /// Decides how an open of `node` at `source`'s version is served, and counts it.
    /// Runs under the node's lock, which `release` takes too: a backing id is closed only when
    /// no open of the node can still be replying with it.
    func admit(_ source: SourceFile, on node: Node) throws(Errno) -> OpenFile {
        let version = source.version
        return try node.opens.withLock { (opens: inout NodeOpens) throws(Errno) -> OpenFile in
            let previous = opens.lastVersion
            opens.lastVersion = version
            let versionChanged = previous != nil && previous != version
            func passthroughOpen(backingID: Int32, versionChanged: Bool) -> OpenFile {
                counters.passthroughOpens.add(1, ordering: .relaxed)
                return OpenFile(
                    node: node, source: source, prefetch: nil, mode: .passthrough(backingID: backingID), versionChanged: versionChanged)
            }
            if var passthrough = opens.passthrough {
                guard passthrough.version == version else {
                    node.supersede()
                    throw .staleNFSFileHandle
                }
                passthrough.opens += 1
                opens.passthrough = passthrough
                return passthroughOpen(backingID: passthrough.backingID, versionChanged: false) // the version it holds
            }
            if opens.daemonServed == 0, let kernelFeatures, kernelFeatures.passthroughAvailable, let hold = cache.hold(version) {
                do throws(Errno) {
                    let id = try kernelFeatures.register(hold.descriptor)
                    opens.passthrough = NodeOpens.Passthrough(version: version, hold: hold, backingID: id, opens: 1)
                    return passthroughOpen(backingID: id, versionChanged: versionChanged)
                } catch {
                    cache.release(hold) // refused: this open is daemon-served (later ones too, if the refusal turned passthrough off)
                }
            }
            // A lone reader of a version with blocks still to load gets each reply straight into its buffer:
            // through the page cache every byte would be copied twice, which on a cold read costs more CPU
            // than the source does. Bytes read more than once are cheaper through the page cache, which
            // holds them once for all: so a wholly cached version keeps it (re-reads stay in the kernel),
            // and so do opens beside another daemon-served one (a herd of readers shares one copy).
            let directIO = opens.daemonServed == 0 && kernelFeatures?.directIOMayBeMapped == true && !cache.isWhollyResident(version)
            opens.daemonServed += 1
            if directIO { counters.directIOOpens.add(1, ordering: .relaxed) }
            return OpenFile(
                node: node, source: source, prefetch: prefetchStream(for: source),
                mode: .daemonServed(keepKernelCache: previous == version, directIO: directIO), versionChanged: versionChanged)
        }
    }

    /// The kernel closed an open file (its last descriptor and mapping are gone).
    public func release(_ file: OpenFile) {
        file.opened.opens.withLock { opens in
            switch file.mode {
            case .daemonServed:
                opens.daemonServed -= 1
            case .passthrough:
                guard var passthrough = opens.passthrough else {
                    return invariantBroken("a passthrough open released on a node with none", logger: logger)
                }
                passthrough.opens -= 1
                guard passthrough.opens == 0 else {
                    opens.passthrough = passthrough
                    return
                }
                opens.passthrough = nil
                kernelFeatures?.unregister(passthrough.backingID)
                if let hold = passthrough.hold { cache.release(hold) }
            }
        }
    }
}
