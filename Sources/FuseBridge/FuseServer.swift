import CFuse
import Logging
import MirrorFS
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// How the mount is presented to the kernel.
public struct FuseConfiguration: Sendable {
    /// Seconds the kernel may trust a name lookup and an inode's attributes.
    public var metadataTimeout: Double = 1.0
    /// Upper bound of worker threads; each blocks while its request reads the source.
    public var maxThreads: Int = 16
    public var allowOther = false
    /// Shown as the mount's source in /proc/mounts.
    public var fileSystemName: String
    /// Let fusermount3 remove the mount if the daemon dies without unmounting.
    public var autoUnmount = true

    public init(fileSystemName: String) { self.fileSystemName = fileSystemName }

    var mountOptions: String {
        var options = ["ro", "default_permissions", "fsname=\(Self.escape(fileSystemName))", "subtype=cachefs"]
        if allowOther { options.append("allow_other") }
        if autoUnmount { options.append("auto_unmount") }
        return options.joined(separator: ",")
    }

    /// Escapes the characters libfuse's option parser treats specially.
    private static func escape(_ value: String) -> String {
        value.split(separator: "\\", omittingEmptySubsequences: false).joined(separator: "\\\\")
            .split(separator: ",", omittingEmptySubsequences: false).joined(separator: "\\,")
    }
}

public struct MountError: Error, CustomStringConvertible {
    public let description: String
}

/// One FUSE session: the mount, the kernel channel, and the worker threads that serve it.
///
/// Threads: `mount` and `run` are called once, in that order, from one thread;
/// `run` blocks it until the session ends. libfuse calls the operations in
/// `Operations.swift` from its worker threads. `requestExit` may be called from any thread.
public final class FuseServer: @unchecked Sendable {
    // @unchecked: `session` is written only by mount() and run()'s cleanup,
    // which happen before the worker threads start and after they have stopped.
    let filesystem: MirrorFilesystem
    let configuration: FuseConfiguration
    let logger: Logger
    private var session: OpaquePointer?
    var sessionForNotifications: OpaquePointer? { session }
    /// Where the session is mounted, while it is. Lock order: a leaf.
    private let mountpoint = Mutex<String?>(nil)
    private let exitRequested = Atomic<Bool>(false)
    let readsLogged = Atomic<Int>(0)
    /// Told about every successful read, with its tier and how long it took.
    let readObserver: (any ReadObserver)?
    /// Negotiates passthrough and direct-I/O mapping, and registers backing files; nil uses neither.
    let kernelFeatures: FuseKernelFeatures?
    /// Reads being served right now, so that a shutdown can let them finish.
    let readsInFlight = Atomic<Int>(0)
    /// Requests answered with an error, by operation.
    let failures = OperationFailures()
    /// libfuse's reads and writes of the kernel channel; set by `mount` or `adopt`.
    private(set) var channel: FuseChannel!
    /// The descriptor of the kernel channel (/dev/fuse), once mounted or adopted.
    public private(set) var descriptor: Int32 = -1

    /// - Parameter kernelFeatures: the same object the filesystem registers backing files with.
    public init(
        filesystem: MirrorFilesystem, configuration: FuseConfiguration, readObserver: (any ReadObserver)? = nil,
        kernelFeatures: FuseKernelFeatures? = nil, logger: Logger
    ) {
        self.filesystem = filesystem
        self.configuration = configuration
        self.readObserver = readObserver
        self.kernelFeatures = kernelFeatures
        self.logger = logger
    }

    /// Creates the session and mounts it. The kernel queues requests until `run` serves them.
    public func mount(at path: String) throws(MountError) {
        precondition(session == nil, "mounted twice")
        let session = try makeSession()
        guard fuse_session_mount(session, path) == 0 else {
            fuse_session_destroy(session)
            throw MountError(description: "cannot mount at \(path) (see the message above; is the fuse3 package installed?)")
        }
        try start(session, descriptor: fuse_session_fd(session), replaying: nil, mountpoint: path)
        logger.info("mounted", metadata: ["mountpoint": "\(path)", "options": "\(configuration.mountOptions)"])
    }

    /// Takes over the live connection `descriptor` (/dev/fuse) of the mount at `path`, which another
    /// daemon mounted and negotiated: libfuse is given an INIT rebuilt from `negotiation`, and the
    /// kernel's queue is read from where the other daemon stopped. The session never unmounts by
    /// itself (libfuse did not mount it); `requestExit` detaches the mount.
    public func adopt(descriptor: Int32, negotiation: FuseNegotiation, mountpoint path: String) throws(MountError) {
        precondition(session == nil, "mounted twice")
        let session = try makeSession()
        try start(session, descriptor: descriptor, replaying: negotiation, mountpoint: path)
        logger.info("took over the mount", metadata: ["mountpoint": "\(path)", "resend": "\(negotiation.kernelResends)"])
    }

    private func makeSession() throws(MountError) -> OpaquePointer {
        var args = fuse_args(argc: 0, argv: nil, allocated: 0)
        defer { fuse_opt_free_args(&args) }
        for argument in ["cachefs", "-o", configuration.mountOptions] {
            guard fuse_opt_add_arg(&args, argument) == 0 else { throw MountError(description: "out of memory") }
        }
        var operations = Self.operations
        // The session's user data is this object, unretained: the session is destroyed in run() before self can go.
        let userData = Unmanaged.passUnretained(self).toOpaque()
        guard let session = fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userData) else {
            throw MountError(description: "cannot create the FUSE session (is /dev/fuse available?)")
        }
        return session
    }

    private func start(_ session: OpaquePointer, descriptor: Int32, replaying: FuseNegotiation?, mountpoint path: String) throws(MountError)
    {
        channel = FuseChannel(kernelFeatures: kernelFeatures, replaying: replaying, logger: logger)
        guard channel.install(on: session, descriptor: descriptor) else {
            fuse_session_destroy(session)
            throw MountError(description: "libfuse refused the custom io cachefs reads the kernel channel through")
        }
        kernelFeatures?.attach(to: session)
        self.session = session
        self.descriptor = descriptor
        mountpoint.withLock { $0 = path }
    }

    /// Serves requests until the filesystem is unmounted or `requestExit` is called, then unmounts and destroys the session.
    public func run() {
        guard let session else { preconditionFailure("run before mount") }
        channel.prepareLoopThread()
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_max_threads(config, UInt32(configuration.maxThreads))
        fuse_loop_cfg_set_idle_threads(config, UInt32(max(2, configuration.maxThreads / 2)))
        let result = cachefs_session_loop_mt(session, config)
        fuse_loop_cfg_destroy(config)
        if result != 0 && !exitRequested.load(ordering: .relaxed) {
            logger.warning("session ended with an error", metadata: ["result": "\(result)"])
        }
        fuse_session_unmount(session)
        fuse_session_destroy(session)
        self.session = nil
        mountpoint.withLock { $0 = nil }
        logger.info("unmounted")
    }

    /// Ends `run`: detaches the mount, so open files finish their work and new lookups fail,
    /// and the worker threads stop once the kernel closes the channel.
    public func requestExit() {
        guard !exitRequested.exchange(true, ordering: .relaxed) else { return }
        guard let path = mountpoint.withLock({ $0 }) else { return }
        logger.info("unmounting", metadata: ["mountpoint": "\(path)"])
        Self.detach(path)
    }

    /// Lazily unmounts `path`: as root directly, otherwise through fusermount3.
    public static func detach(_ path: String) {
        if umount2(path, Int32(MNT_DETACH)) == 0 { return }
        var pid = pid_t()
        let words: [String] = ["fusermount3", "-u", "-z", "-q", path]
        let argv = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawnp(&pid, "fusermount3", nil, nil, argv, environ) == 0 else { return }
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }
}

extension FuseServer {
    /// The INIT exchange of this connection, for a daemon taking it over.
    public var negotiation: FuseNegotiation? { channel?.negotiation }

    /// Stops reading requests (new ones wait in the kernel's queue) and waits until every request
    /// read has been answered, or `deadline`; returns whether all were. Reading stays stopped until `resumeReading`.
    public func pauseReading(until deadline: ContinuousClock.Instant) -> Bool {
        channel.pause(until: deadline)
    }

    public func resumeReading() { channel.resume() }

    /// Requests read and not yet answered.
    public var requestsInFlight: Int { channel?.requestsInFlight ?? 0 }

    /// Waits until no read is being served, or `grace` has passed; returns whether reads drained.
    ///
    /// Called by the shutdown path before it detaches the mount, so that a read
    /// waiting on a slow source gets its bytes rather than an error. New reads
    /// may still start meanwhile; the wait ends at the first moment none runs.
    public func waitForReadsToDrain(grace: Duration) -> Bool {
        let deadline = ContinuousClock.now + grace
        while readsInFlight.load(ordering: .acquiring) > 0 {
            guard ContinuousClock.now < deadline else { return false }
            usleep(10_000)
        }
        return true
    }

    /// Reads being served at this moment.
    public var activeReads: Int { readsInFlight.load(ordering: .relaxed) }
}
