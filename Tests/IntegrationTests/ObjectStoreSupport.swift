import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The local object store and its s3fs mount (moto_server + s3fs), run by Scripts/lib/s3source.py.
let s3sourceScript = packageRoot.appendingPathComponent("Scripts/lib/s3source.py").path

/// A source file system mounted for a test, stopped (and unmounted) by `stop`.
protocol SourceMount: AnyObject {
    var mountpoint: String { get }
    func stop()
}

/// A source mount whose files the test can replace, as an object store's uploader or a NAS writer would.
protocol ReplaceableSourceMount: SourceMount {
    /// Replaces the file at `relativePath` beneath the mountpoint with the bytes of `file`, under a later mtime.
    func replace(_ relativePath: String, with file: String) throws
}

extension ForegroundMount: SourceMount {
    /// `rclone mount` of the local directory `data`, read-only and without rclone's file cache: the
    /// object-store client most users stack cachefs on (rclone serves a bucket the same way).
    static func rclone(data: String, mountpoint: String) throws -> ForegroundMount {
        try ForegroundMount(
            "/usr/bin/rclone", ["mount", data, mountpoint, "--read-only", "--vfs-cache-mode", "off"], mountpoint: mountpoint)
    }
}

/// s3fs mounting a moto_server bucket that holds the files of `data`: a real object-store
/// FUSE client, which numbers a file anew each time the kernel forgets and looks it up again.
final class S3SourceMount: ReplaceableSourceMount {
    let mountpoint: String
    private let process = ChildProcess()
    /// s3source.py tears everything down when this pipe closes, so nothing outlives a crashed test process.
    private let lifeline = Pipe()
    private let stopped = Atomic<Bool>(false)

    init(data: String, mountpoint: String) throws {
        self.mountpoint = mountpoint
        let ready = mountpoint + ".ready.json", log = mountpoint + ".log"
        for path in [ready, log] { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", s3sourceScript, "serve", data, mountpoint]
        process.standardInput = lifeline
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: ready))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try process.run()
        // One JSON line once the mount answers; the upload runs at moto's pace (about 65 MiB/s).
        let deadline = Date().addingTimeInterval(120)
        while (try? String(contentsOfFile: ready, encoding: .utf8))?.hasSuffix("\n") != true {
            guard process.isRunning, Date() < deadline else {
                stop()
                throw TestFailure("s3source.py did not mount \(mountpoint): \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            }
            usleep(50_000)
        }
    }

    func replace(_ relativePath: String, with file: String) throws {
        let result = try run("python3", [s3sourceScript, "put", mountpoint, relativePath, file], timeout: 120)
        guard result.status == 0 else { throw TestFailure("s3source.py put failed: \(result.output)\(result.error)") }
    }

    /// Stops once: s3source.py unmounts s3fs and stops it and moto_server on SIGTERM.
    func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        stopDaemon(process, mountpoint: mountpoint)
    }

    deinit { stop() }
}

/// cachefs-testsource mirroring `data`, with any of its options.
final class TestSourceReplaceableMount: ReplaceableSourceMount {
    let data: String
    let source: TestSourceMount
    var mountpoint: String { source.mountpoint }

    init(data: String, mountpoint: String, arguments: [String]) throws {
        self.data = data
        source = try TestSourceMount(root: data, mountpoint: mountpoint, arguments: arguments)
    }

    /// Renamed over, as downloaders publish files: a copy made now has a new mtime.
    func replace(_ relativePath: String, with file: String) throws {
        let target = data + "/" + relativePath
        try shell("cp '\(file)' '\(target).new' && mv '\(target).new' '\(target)'")
    }

    func stop() { source.stop() }
}

/// The kinds of object-store-like sources the identity tests run over.
enum ObjectStoreKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    /// s3fs over moto_server.
    case s3fs
    /// cachefs-testsource --unstable-inodes: s3fs's numbering, at local speed.
    case unstableInodes = "testsource --unstable-inodes"

    var testDescription: String { rawValue }

    func mount(data: String, at mountpoint: String) throws -> ReplaceableSourceMount {
        switch self {
        case .s3fs: try S3SourceMount(data: data, mountpoint: mountpoint)
        case .unstableInodes: try TestSourceReplaceableMount(data: data, mountpoint: mountpoint, arguments: ["--unstable-inodes"])
        }
    }
}

/// Object-store FUSE clients that read through the kernel's page cache.
enum PageCachedClient: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case rclone, s3fs

    var testDescription: String { rawValue }

    func mount(data: String, at mountpoint: String) throws -> SourceMount {
        switch self {
        case .rclone: try ForegroundMount.rclone(data: data, mountpoint: mountpoint)
        case .s3fs: try S3SourceMount(data: data, mountpoint: mountpoint)
        }
    }
}

/// Prints the bytes of SOURCE in the page cache (cachestat(2) on a descriptor opened before
/// anything else, since a FUSE open may drop the file's cached pages), after `cmp EXPECTED MIRROR`
/// and then after reading SOURCE itself: "mirror-read BYTES" and "source-read BYTES".
let sourcePageCacheProbe = #"""
    import ctypes, os, subprocess, sys
    source, expected, mirror = sys.argv[1:4]
    libc = ctypes.CDLL(None, use_errno=True)
    def cached(fd):
        span, stat = (ctypes.c_uint64 * 2)(0, 0), (ctypes.c_uint64 * 5)()
        if libc.syscall(451, fd, span, stat, 0) != 0:  # cachestat(2)
            raise OSError(ctypes.get_errno(), "cachestat")
        return stat[0] * os.sysconf("SC_PAGE_SIZE")
    fd = os.open(source, os.O_RDONLY)
    subprocess.run(["cmp", expected, mirror], check=True)
    print("mirror-read", cached(fd))
    while os.read(fd, 1 << 20):
        pass
    print("source-read", cached(fd))
    """#

/// Drops the kernel's caches so that both FUSE layers forget their files: the first drop
/// makes the kernel forget cachefs's nodes, upon which cachefs closes its descriptors on the
/// source; only then can the second drop evict the source mount's inodes, which is what makes
/// a source like s3fs number a file anew at its next lookup.
func dropKernelCachesOfBothLayers() throws {
    try dropKernelCaches()
    usleep(200_000) // cachefs handles the FORGETs
    try dropKernelCaches()
}

/// What stat(2) shows for `path`.
func fileStatus(_ path: String) throws -> stat {
    var attributes = stat()
    guard stat(path, &attributes) == 0 else { throw TestFailure("stat \(path): \(String(cString: strerror(errno)))") }
    return attributes
}

/// The modification time `path` shows, in nanoseconds.
func modificationTime(_ path: String) throws -> Int64 {
    let modified = try fileStatus(path).st_mtim
    return Int64(modified.tv_sec) * 1_000_000_000 + Int64(modified.tv_nsec)
}
