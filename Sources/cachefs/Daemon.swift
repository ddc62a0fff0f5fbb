import BlockCache
import ControlPlane
import Foundation
import FuseBridge
import Logging
import MirrorFS
import Prefetch
import Reporting
import ServiceLifecycle
import SourceTree
import Synchronization
import Telemetry
import Threading

#if canImport(Glibc)
import Glibc
#endif

// A daemon that serves a mount another daemon served (a hand-over, a restart under systemd) gets
// its mount, node table, handles and memory files from `Succession`; everything else is the same.

/// The serving process: mounts, serves FUSE on libfuse's threads, the control socket (and metrics,
/// peers) on SwiftNIO's, and unmounts on a signal or an external unmount.
///
/// Threads: the main thread sets up (`assemble`, `start`), reports readiness, then waits for the
/// ServiceGroup to end and joins every thread the daemon owns (`finish`). A dedicated thread takes
/// SIGTERM, SIGINT and SIGHUP with sigwait, which is why those signals are blocked before any other
/// thread exists.
struct Daemon {
    let settings: MountSettings
    let readiness: ReadinessPipe?
    /// After handing the mount over, wait for SIGTERM rather than exit: something watches this process
    /// (the foreground, a supervisor) and would otherwise start it again.
    var waitsAfterHandover: Bool { readiness == nil || supervised }
    var supervised = false

    static let shutdownSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// How long start-up waits for the control socket (and the peer server) to listen. Binding a
    /// local socket takes milliseconds, and a bind that fails ends the wait at once; only a wedged
    /// event loop takes this long, and then the start fails rather than hangs.
    static let listenTimeout: Duration = .seconds(30)

    func run() throws {
        let kept = FileDescriptorStore.takeInherited() // before anything else is opened: they are this daemon's, not inherited ones
        InheritedDescriptors.record()
        SignalListener.block(Self.shutdownSignals)
        let systemd = SystemdNotifier.fromEnvironment()
        signal(SIGPIPE, SIG_IGN)
        chdir("/") // a daemon must not keep the directory it was started from busy
        if let logFile = settings.logFile { redirectStandardError(to: logFile) }
        let logger = makeLogger()
        do {
            try serve(logger: logger, systemd: systemd, kept: kept)
        } catch {
            readiness?.fail("\(error)")
            throw error
        }
    }

    private func serve(logger: Logger, systemd: SystemdNotifier?, kept: [(name: String, descriptor: Int32)]) throws {
        let parts = try assemble(logger: logger, systemd: systemd, kept: kept)
        let handler = DaemonControl(
            filesystem: parts.filesystem, settings: settings, reporters: parts.reporters, peers: parts.peers,
            kernelFeatures: parts.kernelFeatures, started: .now)
        let control: ControlListener
        do {
            // Before mounting: a socket a running daemon answers on is refused, and nothing is mounted.
            try runBlocking { [settings] in try await ControlServer.claim(socketPath: settings.controlSocket) }
            control = try ControlServer.make(
                socketPath: settings.controlSocket, handler: handler, onRunning: { parts.controlRunning.set() })
        } catch {
            throw UsageError("\(error)")
        }
        try parts.succession.attach(
            server: parts.server, cache: parts.cache, filesystem: parts.filesystem, control: handler,
            settings: settings, logger: logger)
        let group = start(parts, control: control, handler: handler, logger: logger)
        let signals = startSignalListener(group: group, server: parts.server, logger: logger, systemd: systemd)
        let isReady = becomeReady(parts, group: group, handler: handler, logger: logger, systemd: systemd)
        parts.ready.open(isReady)

        _ = parts.groupEnded.waitUntilSet()
        parts.handover.withLock { $0 }?.stop()
        systemd?.stopping() // also when unmounted from outside; systemd ignores a repeat
        finish(parts, signals: signals, logger: logger)
        if !isReady {
            let reason = parts.groupFailure.withLock { $0 }.map { "\($0)" } ?? "see the log"
            throw UsageError("cachefs could not start serving \(settings.mountpoint): \(reason)")
        }
    }

    /// The daemon's parts, wired together before anything is mounted, and what start-up and
    /// shutdown wait on.
    private final class Parts: Sendable {
        let filesystem: MirrorFilesystem
        let cache: BlockCache
        let succession: Succession
        let prefetcher: Prefetcher?
        let sourceCalls: SourceCallPool?
        let peers: PeerNetwork?
        let kernelFeatures: FuseKernelFeatures
        let exporter: PrometheusExporter?
        let server: FuseServer
        /// Each part that keeps figures, reporting its own into `cachefs stats` and `/metrics`.
        let reporters: [any FigureReporter]
        /// The daemon's own threads: the FUSE loop, its drain, the preload. Joined by `finish`.
        let threads = OwnedThreads()
        /// Set once the control socket listens. Lock order: a leaf.
        let controlRunning = Condition(false)
        /// Set once the peer server listens (at once without one). Lock order: a leaf.
        let peerServerRunning = Condition(false)
        /// Set once the service group has ended. Lock order: a leaf.
        let groupEnded = Condition(false)
        /// Why the group ended, if a service failed. Lock order: a leaf.
        let groupFailure = Mutex<(any Error)?>(nil)
        let ready = ReadyGate()
        /// Hands the mount to a successor once the daemon is ready; stopped after the group ends. Lock order: a leaf.
        let handover = Mutex<HandoverServer?>(nil)

        init(
            filesystem: MirrorFilesystem, cache: BlockCache, succession: Succession, prefetcher: Prefetcher?, sourceCalls: SourceCallPool?,
            peers: PeerNetwork?, kernelFeatures: FuseKernelFeatures, exporter: PrometheusExporter?, server: FuseServer,
            reporters: [any FigureReporter]
        ) {
            (self.filesystem, self.cache, self.succession) = (filesystem, cache, succession)
            (self.prefetcher, self.sourceCalls, self.peers) = (prefetcher, sourceCalls, peers)
            (self.kernelFeatures, self.exporter, self.server, self.reporters) = (kernelFeatures, exporter, server, reporters)
        }
    }

    private func assemble(logger: Logger, systemd: SystemdNotifier?, kept: [(name: String, descriptor: Int32)]) throws -> Parts {
        let descriptorLimit = raiseOpenFileLimit()
        let sourceRoot: PathHandle
        do {
            sourceRoot = try PathHandle.openRoot(settings.source)
        } catch {
            throw UsageError("source \(settings.source): \(error)")
        }
        // A predecessor first (a daemon serving the mountpoint hands it over): nothing below may touch the mount before.
        let succession = try Succession.begin(settings: settings, systemd: systemd, kept: kept, logger: logger)
        let cache = BlockCache(capacity: settings.capacity, blockSize: settings.blockSize, registry: succession.registry, logger: logger)
        if settings.prefetchDepth > 0 && settings.prefetchDepth == settings.prefetchDepthLimit {
            logger.notice(
                "the prefetch window is at its limit, a quarter of the capacity", metadata: ["blocks": "\(settings.prefetchDepth)"])
        }
        let prefetcher =
            settings.prefetchDepth > 0
            ? Prefetcher(workers: settings.prefetchThreads, depth: settings.prefetchDepth, chunkBlocks: settings.prefetchChunk) : nil
        let sourceCalls = settings.sourceTimeout.map { SourceCallPool(timeout: .milliseconds(Int64($0 * 1000))) }
        let peers = try PeerNetwork(settings: settings, logger: logger)
        let kernelFeatures = FuseKernelFeatures(passthrough: settings.passthrough, directIO: settings.directIO, logger: logger)
        let filesystem = try MirrorFilesystem(
            sourceRoot: sourceRoot, cache: cache, prefetcher: prefetcher,
            // Half the descriptors for known files' handles; the rest for open files, prefetch, sockets.
            sourceHandleLimit: max(16, min(descriptorLimit / 2, 65536)),
            sourceCalls: sourceCalls, sourceRootPath: settings.source, fleet: peers?.fleet,
            servesPeers: settings.listen != nil, kernelFeatures: kernelFeatures, journal: succession.journal, logger: logger
        )
        var fuseConfiguration = FuseConfiguration(fileSystemName: settings.source)
        fuseConfiguration.metadataTimeout = settings.metadataTimeout
        fuseConfiguration.maxThreads = settings.threads
        fuseConfiguration.allowOther = settings.allowOther
        fuseConfiguration.autoUnmount = false // the mount keeper removes the mount once no daemon can serve it
        let exporter = settings.metrics.map { _ in PrometheusExporter() } // bootstraps swift-metrics before any metric exists
        let telemetry = ReadTelemetry(recordLatency: exporter != nil)
        let server = FuseServer(
            filesystem: filesystem, configuration: fuseConfiguration, readObserver: telemetry,
            kernelFeatures: kernelFeatures, logger: logger)
        let reporters: [any FigureReporter] = [filesystem, telemetry, server] + (peers.map { [$0] } ?? [])
        return Parts(
            filesystem: filesystem, cache: cache, succession: succession, prefetcher: prefetcher, sourceCalls: sourceCalls,
            peers: peers, kernelFeatures: kernelFeatures, exporter: exporter, server: server, reporters: reporters)
    }

    /// Starts the daemon's services as one group, on the Swift concurrency pool. Started together;
    /// on shutdown stopped from the last to the first: the preload stops first, then the mount
    /// drains its reads and goes, then the servers, then the threads that load blocks. The mount
    /// ending by itself (an external unmount) shuts the group down.
    private func start(_ parts: Parts, control: ControlListener, handler: DaemonControl, logger: Logger) -> ServiceGroup {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let prefetcher = parts.prefetcher {
            services.append(.init(service: StoppableService(description: "prefetcher", start: {}, stop: prefetcher.stop)))
        }
        if let peers = parts.peers {
            services.append(.init(service: StoppableService(description: "peer discovery", start: peers.start, stop: peers.shutdown)))
        }
        let peerServer = parts.peers?.server(for: parts.filesystem) { port in
            logger.info("serving blocks to peers", metadata: ["port": "\(port)"])
            parts.peerServerRunning.set()
        }
        if let peerServer { services.append(.init(service: peerServer)) }
        if let exporter = parts.exporter { services.append(.init(service: makeMetricsService(exporter, handler: handler, logger: logger))) }
        services.append(.init(service: control))
        let grace = Duration.milliseconds(Int(settings.shutdownGrace * 1000))
        services.append(
            .init(
                service: FuseService(server: parts.server, grace: grace, threads: parts.threads, logger: logger),
                successTerminationBehavior: .gracefullyShutdownGroup))
        // A preload that is done (or has nothing to do) leaves the others running.
        services.append(
            .init(
                service: PreloadService(
                    patterns: settings.preload, pin: settings.preloadPin, filesystem: parts.filesystem,
                    ready: parts.ready, threads: parts.threads, logger: logger),
                successTerminationBehavior: .ignore))
        if peerServer == nil { parts.peerServerRunning.set() } // nothing to wait for
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [], logger: logger))
        Task {
            do { try await group.run() } catch { parts.groupFailure.withLock { $0 = error } }
            parts.controlRunning.set() // wake a start-up wait if a server failed to bind
            parts.peerServerRunning.set()
            parts.groupEnded.set()
        }
        return group
    }

    /// Waits until the servers listen and the mount answers, then tells the launcher (and systemd)
    /// so; if that fails, shuts the group down. Returns whether the daemon is ready.
    private func becomeReady(_ parts: Parts, group: ServiceGroup, handler: DaemonControl, logger: Logger, systemd: SystemdNotifier?) -> Bool
    {
        let deadline = ContinuousClock.now + Self.listenTimeout
        var isReady = parts.controlRunning.waitUntilSet(until: deadline) && parts.peerServerRunning.waitUntilSet(until: deadline)
        if let failure = parts.groupFailure.withLock({ $0 }) {
            logger.error("control socket or peer server failed", metadata: ["socket": "\(settings.controlSocket)", "error": "\(failure)"])
            isReady = false
        }
        if isReady { isReady = mountAnswers() }
        guard isReady else {
            Task { await group.triggerGracefulShutdown() }
            return false
        }
        let succession = parts.succession
        succession.mounted(server: parts.server, settings: settings, logger: logger)
        if succession.keptBySystemd {
            let (server, cache, grace) = (parts.server, parts.cache, settings.shutdownGrace)
            handler.restartPreparation.withLock {
                $0 = { () throws(ControlRequestError) -> RestartAnswer in
                    try succession.prepareRestart(server: server, cache: cache, grace: grace, logger: logger)
                }
            }
        }
        do {
            let context = HandoverServer.Context(
                settings: settings, server: parts.server, cache: parts.cache, filesystem: parts.filesystem,
                succession: succession, control: handler, waitAfterwards: waitsAfterHandover)
            let handover = try HandoverServer(context: context, logger: logger)
            parts.handover.withLock { $0 = handover }
        } catch {
            logger.warning("this daemon cannot hand its mount over", metadata: ["error": "\(error)"])
        }
        parts.kernelFeatures.probe()
        let failure = ReadAheadWindow.set(mountpoint: settings.mountpoint, bytes: settings.readAhead).map { String(cString: strerror($0)) }
        let state = ReadAheadState(windowBytes: ReadAheadWindow.current(mountpoint: settings.mountpoint), error: failure)
        handler.readAhead.withLock { $0 = state }
        if let failure {
            logger.notice(
                "could not set the kernel's read-ahead window; sequential reads may be slower",
                metadata: ["error": "\(failure)", "window": "\(state.windowBytes.map(ByteCount.format) ?? "unknown")"])
        }
        logger.info(
            "ready",
            metadata: [
                "source": "\(settings.source)", "mountpoint": "\(settings.mountpoint)",
                "capacity": "\(ByteCount.format(settings.capacity))", "control": "\(settings.controlSocket)",
            ])
        readiness?.succeed()
        systemd?.ready(status: "serving \(settings.source) at \(settings.mountpoint)")
        return true
    }

    /// After the group has ended (the mount is gone, the servers closed, the prefetcher told to
    /// stop): stops and joins every thread the daemon owns, waiting at most the shutdown grace for
    /// those still in a call (a read of a hung source cannot be interrupted; the process exits
    /// without it), and logs any owned thread left unjoined.
    private func finish(_ parts: Parts, signals: SignalListener, logger: Logger) {
        let deadline = ContinuousClock.now + .milliseconds(Int(settings.shutdownGrace * 1000))
        signals.stop()
        parts.sourceCalls?.stop()
        parts.prefetcher?.join(until: deadline)
        parts.sourceCalls?.join(until: deadline)
        parts.threads.join(until: deadline)
        let unjoined = OwnedThread.unjoined
        if unjoined.isEmpty {
            logger.info("every owned thread joined")
        } else {
            logger.warning(
                "threads still busy at exit, left to end with the process", metadata: ["threads": "\(unjoined.joined(separator: ", "))"])
        }
    }

    /// Asks the new mount for its root's attributes, which only our own loop can answer.
    private func mountAnswers() -> Bool {
        var attributes = stat()
        return stat(settings.mountpoint, &attributes) == 0
    }

    /// SIGTERM, SIGINT and SIGHUP (blocked in every other thread) start a graceful shutdown of the group.
    private func startSignalListener(group: ServiceGroup, server: FuseServer, logger: Logger, systemd: SystemdNotifier?) -> SignalListener {
        SignalListener(signals: Self.shutdownSignals) { received in
            logger.notice(
                "signal received, unmounting", metadata: ["signal": "\(received)", "reads in progress": "\(server.activeReads)"])
            systemd?.stopping()
            Task { await group.triggerGracefulShutdown() }
        }
    }

    /// Raises the soft descriptor limit to the hard one (1024 is low for a file server); returns the limit in force.
    private func raiseOpenFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = rlimit(rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max)
            if setrlimit(RLIMIT_NOFILE_VALUE, &raised) == 0 { limit = raised }
        }
        return Int(clamping: limit.rlim_cur)
    }

    private func redirectStandardError(to path: String) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        dup2(fd, STDERR_FILENO)
        close(fd)
    }

    private func makeLogger() -> Logger {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = settings.logLevel
            return handler
        }
        var logger = Logger(label: "cachefs")
        logger.logLevel = settings.logLevel
        return logger
    }
}

// swift-format-ignore: AlwaysUseLowerCamelCase
private let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

/// The write end of the pipe a background launcher waits on: one line, "ok" or the reason for failing.
struct ReadinessPipe {
    let descriptor: Int32

    /// Marks the descriptor close-on-exec, so helpers the daemon starts (fusermount3) do not hold the pipe open.
    init(_ descriptor: Int32) {
        self.descriptor = descriptor
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
    }

    func succeed() { send("ok\n") }

    func fail(_ message: String) { send(message + "\n") }

    private func send(_ line: String) {
        line.withCString { _ = write(descriptor, $0, strlen($0)) }
        close(descriptor)
    }
}
