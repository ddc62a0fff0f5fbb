import ArgumentParser
import CFuse
import Foundation
import Synchronization
import Threading

// cachefs-testsource: a read-only FUSE mirror that behaves like a slow object
// store, for benchmarks and fault tests. Every read pays a fixed latency (like a
// range GET) while requests run concurrently, the page cache is bypassed
// (direct_io, like object-store FUSE clients), and faults can be injected:
// EIO for chosen files or offsets, stalled reads or opens, and the whole source
// failing on SIGUSR1 until SIGUSR2, or hanging on SIGHUP (an unreachable NAS) until SIGUSR2.
// With --unstable-inodes it numbers files as s3fs does: anew each time the
// kernel forgets a file and looks it up again.
//
// It is test tooling: path-based, no cache of its own.
#if canImport(Glibc)
import Glibc
#endif

struct TestSource: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cachefs-testsource",
        abstract: "Mirror ROOT read-only at MOUNTPOINT as a slow, fault-injectable object-store-like source (foreground)."
    )

    @Argument var root: String
    @Argument var mountpoint: String
    @Option(help: "Milliseconds each read request waits before it is served.") var latencyMs: Double = 0
    @Option(help: "Cap on the aggregate read rate, bytes per second (0: none).") var bandwidth: Int = 0
    @Option(help: "Most concurrent requests.") var threads = 32
    @Option(help: "Reads of files matching this glob (relative to ROOT) fail with EIO.") var failFile: [String] = []
    @Option(help: "With --fail-file: only reads reaching this offset or beyond fail.") var failOffset: Int64 = 0
    @Option(help: "Reads of files matching this glob stall first (until --stall-seconds pass or SIGUSR2).") var stallFile: [String] = []
    @Option(
        help:
            "Opens of files matching this glob stall first (until --stall-seconds pass or SIGUSR2), as on a hard-mounted NAS or an object-store client fetching metadata."
    ) var stallOpen: [String] = []
    @Option(help: "How long a stalled read or open waits.") var stallSeconds: Double = 30
    @Flag(help: "Give a file a new node ID and inode number each time the kernel forgets it and looks it up again, as s3fs does.")
    var unstableInodes = false

    func run() throws {
        let signals = [SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP]
        SignalListener.block(signals) // before any thread exists: only the signal thread takes them

        guard let resolved = realpath(root, nil) else { throw ValidationError("root \(root): \(String(cString: strerror(errno)))") }
        let source = Source(root: String(cString: resolved), options: self)
        free(resolved)
        let session = try source.mount(at: mountpoint, threads: threads)
        let signalThread = SignalListener(signals: signals) { received in
            switch received {
            case SIGUSR1: source.failing.store(true, ordering: .relaxed)
            case SIGHUP: source.hanging.store(true, ordering: .relaxed)
            case SIGUSR2: source.recover()
            default: umount2(mountpoint, Int32(MNT_DETACH)) // ends the loop once the kernel lets go
            }
        }
        FileHandle.standardError.write(Data("cachefs-testsource: serving \(source.root) at \(mountpoint)\n".utf8))
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_max_threads(config, UInt32(threads))
        _ = cachefs_session_loop_mt(session, config)
        fuse_loop_cfg_destroy(config)
        fuse_session_unmount(session)
        fuse_session_destroy(session)
        signalThread.stop()
    }
}

/// The mirrored tree and the faults to inject. Shared by all worker threads.
final class Source: Sendable {
    let root: String
    let latency: Double
    let failGlobs: [String], failOffset: Int64
    let stallGlobs: [String], stallOpenGlobs: [String], stallSeconds: Double
    /// Node IDs are reported as inode numbers, and a forgotten file gets a new ID at its next lookup.
    let unstableInodes: Bool
    let failing = Atomic<Bool>(false)
    /// Every read waits until recovery, as on a hard-mounted NAS whose server went away.
    let hanging = Atomic<Bool>(false)
    /// Bumped by recovery, which ends the stalls in progress.
    let recoveries = Atomic<Int>(0)
    /// Node IDs and paths. Lock order: a leaf; no source call runs under it.
    private let nodes = Mutex(Nodes())
    private let bucket: TokenBucket?
    let readBuffers = BufferPool()

    init(root: String, options: TestSource) {
        self.root = root
        latency = options.latencyMs / 1000
        failGlobs = options.failFile
        failOffset = options.failOffset
        stallGlobs = options.stallFile
        stallOpenGlobs = options.stallOpen
        unstableInodes = options.unstableInodes
        stallSeconds = options.stallSeconds
        bucket = options.bandwidth > 0 ? TokenBucket(bytesPerSecond: options.bandwidth) : nil
    }

    func mount(at mountpoint: String, threads: Int) throws -> OpaquePointer {
        var args = fuse_args(argc: 0, argv: nil, allocated: 0)
        defer { fuse_opt_free_args(&args) }
        for argument in ["cachefs-testsource", "-o", "ro,default_permissions,fsname=\(root),subtype=testsource,auto_unmount"] {
            fuse_opt_add_arg(&args, argument)
        }
        var operations = Self.operations
        let userData = Unmanaged.passRetained(self).toOpaque() // lives as long as the process
        guard let session = fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userData),
            fuse_session_mount(session, mountpoint) == 0
        else { throw ValidationError("cannot mount at \(mountpoint)") }
        return session
    }

    func path(_ id: UInt64) -> String? { nodes.withLock { $0.byID[id]?.path } }

    /// The node ID for `path`, counting one more lookup the kernel will forget.
    func lookUp(_ path: String) -> UInt64 {
        nodes.withLock { table in
            let id: UInt64
            if let known = table.idOfPath[path] {
                id = known
            } else {
                id = table.nextID
                table.nextID += 1
                table.idOfPath[path] = id
            }
            table.byID[id, default: (path, 0)].lookups += 1
            return id
        }
    }

    /// The kernel dropped `count` lookups of `id`; at zero the node is gone. Without
    /// --unstable-inodes its path keeps the ID for the next lookup; with it, the next lookup gets a new one.
    func forget(_ id: UInt64, count: UInt64) {
        nodes.withLock { table in
            guard id != Nodes.rootID, var node = table.byID[id] else { return }
            node.lookups -= min(count, node.lookups)
            table.byID[id] = node.lookups > 0 ? node : nil
            if node.lookups == 0 && unstableInodes { table.idOfPath[node.path] = nil }
        }
    }

    /// The inode number the kernel shows for node `id`: the source file's, or with --unstable-inodes the node ID.
    func setInodeNumber(of attributes: inout stat, node id: UInt64) {
        if unstableInodes { attributes.st_ino = ino_t(id) }
    }

    func full(_ relative: String) -> String { relative.isEmpty ? root : root + "/" + relative }

    func matches(_ globs: [String], _ relative: String) -> Bool {
        globs.contains { fnmatch($0, relative, 0) == 0 }
    }

    /// What a read of `size` bytes at `offset` of `relative` must go through first; an errno if it fails.
    func admit(_ relative: String, offset: Int64, size: Int) -> Int32 {
        if failing.load(ordering: .relaxed) { return EIO }
        if hanging.load(ordering: .relaxed) { stall(seconds: .infinity) }
        if matches(stallGlobs, relative) { stall(seconds: stallSeconds) }
        if matches(failGlobs, relative) && offset + Int64(size) > failOffset { return EIO }
        if latency > 0 { usleep(UInt32(latency * 1e6)) }
        bucket?.take(size)
        return 0
    }

    func recover() {
        failing.store(false, ordering: .relaxed)
        hanging.store(false, ordering: .relaxed)
        recoveries.add(1, ordering: .relaxed)
    }

    /// Waits `seconds`, or until the next recovery.
    func stall(seconds: Double) {
        let recovery = recoveries.load(ordering: .relaxed)
        let deadline = seconds.isFinite ? Date().addingTimeInterval(seconds) : .distantFuture
        while Date() < deadline && recoveries.load(ordering: .relaxed) == recovery { usleep(10_000) }
    }

    static let operations: fuse_lowlevel_ops = {
        var ops = fuse_lowlevel_ops()
        ops.lookup = { req, parent, name in
            let source = Source.of(req)
            guard let base = source.path(parent) else { fuse_reply_err(req, ESTALE); return }
            let child = (base.isEmpty ? "" : base + "/") + String(cString: name!)
            var entry = fuse_entry_param()
            guard lstat(source.full(child), &entry.attr) == 0 else { fuse_reply_err(req, errno); return }
            entry.ino = source.lookUp(child)
            source.setInodeNumber(of: &entry.attr, node: entry.ino)
            entry.attr_timeout = 1
            entry.entry_timeout = 1
            fuse_reply_entry(req, &entry)
        }
        ops.forget = { req, node, lookups in
            Source.of(req).forget(node, count: lookups)
            fuse_reply_none(req)
        }
        ops.getattr = { req, node, _ in
            let source = Source.of(req)
            var attributes = stat()
            guard let path = source.path(node), lstat(source.full(path), &attributes) == 0 else {
                fuse_reply_err(req, errno == 0 ? ESTALE : errno); return
            }
            source.setInodeNumber(of: &attributes, node: node)
            fuse_reply_attr(req, &attributes, 1)
        }
        ops.readlink = { req, node in
            let source = Source.of(req)
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard let path = source.path(node) else { fuse_reply_err(req, ESTALE); return }
            let length = readlink(source.full(path), &target, Int(PATH_MAX))
            guard length >= 0 else { fuse_reply_err(req, errno); return }
            fuse_reply_readlink(req, target)
        }
        ops.open = { req, node, info in
            let source = Source.of(req)
            guard let path = source.path(node) else { fuse_reply_err(req, ESTALE); return }
            if source.matches(source.stallOpenGlobs, path) { source.stall(seconds: source.stallSeconds) }
            let fd = open(source.full(path), O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { fuse_reply_err(req, errno); return }
            cachefs_file_info_set_handle(info, UInt64(fd))
            cachefs_file_info_set_direct_io(info) // no page cache, like an object-store mount
            fuse_reply_open(req, info)
        }
        ops.read = { req, node, size, offset, info in
            let source = Source.of(req)
            let failure = source.admit(source.path(node) ?? "", offset: Int64(offset), size: size)
            guard failure == 0 else { fuse_reply_err(req, failure); return }
            source.readBuffers.withBuffer(size: size) { buffer in
                let count = pread(Int32(cachefs_file_info_handle(info)), buffer, size, offset)
                guard count >= 0 else { fuse_reply_err(req, errno); return }
                fuse_reply_buf(req, buffer, count)
            }
        }
        ops.release = { req, _, info in
            close(Int32(cachefs_file_info_handle(info)))
            fuse_reply_err(req, 0)
        }
        ops.opendir = { req, node, info in
            let source = Source.of(req)
            guard let path = source.path(node), let directory = opendir(source.full(path)) else {
                fuse_reply_err(req, errno == 0 ? ESTALE : errno); return
            }
            var entries: [Listing.Entry] = []
            while let entry = readdir(directory) {
                let name = withUnsafePointer(to: &entry.pointee.d_name) {
                    String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
                }
                entries.append(Listing.Entry(name: name, inode: ino_t(entry.pointee.d_ino), type: entry.pointee.d_type))
            }
            closedir(directory)
            cachefs_file_info_set_handle(info, UInt64(UInt(bitPattern: Unmanaged.passRetained(Listing(entries)).toOpaque())))
            fuse_reply_open(req, info)
        }
        ops.readdir = { req, _, size, offset, info in
            let listing = Unmanaged<Listing>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(cachefs_file_info_handle(info)))!)
                .takeUnretainedValue()
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
            defer { buffer.deallocate() }
            var used = 0
            for index in Int(offset)..<listing.entries.count {
                let entry = listing.entries[index]
                var attributes = stat()
                attributes.st_ino = entry.inode // readdir(3) hides entries whose inode is 0
                attributes.st_mode = mode_t(entry.type) << 12
                let needed = fuse_add_direntry(req, buffer + used, size - used, entry.name, &attributes, off_t(index + 1))
                if needed > size - used { break }
                used += needed
            }
            fuse_reply_buf(req, buffer, used)
        }
        ops.releasedir = { req, _, info in
            Unmanaged<Listing>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(cachefs_file_info_handle(info)))!).release()
            fuse_reply_err(req, 0)
        }
        ops.statfs = { req, _ in
            var statistics = statvfs()
            guard statvfs(Source.of(req).root, &statistics) == 0 else { fuse_reply_err(req, errno); return }
            fuse_reply_statfs(req, &statistics)
        }
        return ops
    }()

    static func of(_ req: fuse_req_t?) -> Source {
        Unmanaged<Source>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }
}

/// Node IDs the kernel holds, with their paths and the lookups it has not forgotten.
struct Nodes {
    static let rootID: UInt64 = 1
    var byID: [UInt64: (path: String, lookups: UInt64)] = [rootID: ("", 1)]
    /// The ID a lookup of the path answers with; without --unstable-inodes kept after the node is forgotten.
    var idOfPath: [String: UInt64] = ["": rootID]
    var nextID: UInt64 = rootID + 1
}

/// A directory's entries, read once at opendir; offsets are positions in it.
final class Listing: Sendable {
    struct Entry: Sendable {
        var name: String
        var inode: ino_t
        var type: UInt8
    }

    let entries: [Entry]
    init(_ entries: [Entry]) { self.entries = entries }
}

/// Read buffers kept between requests. A fresh 1 MiB buffer per read is mapped, faulted in and
/// zeroed page by page: on a 2-core machine that emulation cost (a tenth of all CPU in a cold
/// read through cachefs) competed with what the benchmarks measure, which a network source's
/// client would not.
final class BufferPool: Sendable {
    /// FUSE's largest read here: 256 pages.
    private static let capacity = 1 << 20
    /// Addresses of idle buffers (raw pointers are not Sendable). Lock order: a leaf.
    private let free = Mutex<[UInt]>([])

    func withBuffer(size: Int, _ body: (UnsafeMutableRawPointer) -> Void) {
        guard size <= Self.capacity else {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
            defer { buffer.deallocate() }
            return body(buffer)
        }
        let buffer =
            free.withLock { $0.popLast() }.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
            ?? UnsafeMutableRawPointer.allocate(byteCount: Self.capacity, alignment: 4096)
        defer { free.withLock { $0.append(UInt(bitPattern: buffer)) } }
        body(buffer)
    }
}

/// Spreads reads over time so that together they stay under a byte rate.
final class TokenBucket: Sendable {
    private let bytesPerSecond: Double
    /// When the bucket next has room (seconds). Lock order: a leaf; the wait runs outside it.
    private let nextFree = Mutex<Double>(0)

    init(bytesPerSecond: Int) { self.bytesPerSecond = Double(bytesPerSecond) }

    func take(_ bytes: Int) {
        let now = Date().timeIntervalSince1970
        let start = nextFree.withLock { next in
            let start = max(next, now)
            next = start + Double(bytes) / bytesPerSecond
            return start
        }
        if start > now { usleep(UInt32((start - now) * 1e6)) }
    }
}

TestSource.main()
