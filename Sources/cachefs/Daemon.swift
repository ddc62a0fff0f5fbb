#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import ControlPlane
import Dispatch
import Foundation
import FuseBridge
import Logging
import MirrorFS
import Prefetch
import ServiceLifecycle
import SourceTree
import Synchronization
import Telemetry

/// The serving process: mounts, serves FUSE on libfuse's threads and the
/// control socket on SwiftNIO's, and unmounts on a signal or an external unmount.
///
/// Threads: the main thread sets up, then waits for the FUSE loop to end. A
/// dedicated thread takes SIGTERM, SIGINT and SIGHUP with sigwait, which is
/// why those signals are blocked before any other thread exists.
struct Daemon {
    let settings: MountSettings
    let readiness: ReadinessPipe?
    /// After handing the mount over, wait for SIGTERM rather than exit: something watches this process
    /// (the foreground, a supervisor) and would otherwise start it again.
    var waitsAfterHandover: Bool { readiness == nil || supervised }
    var supervised = false

    static let shutdownSignals: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    func run() throws {
        let kept = FileDescriptorStore.takeInherited() // before anything else is opened: they are this daemon's, not inherited ones
        InheritedDescriptors.record()
        blockShutdownSignals()
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
        let descriptorLimit = raiseOpenFileLimit()
        let sourceRoot: PathHandle
        do {
            sourceRoot = try PathHandle.openRoot(settings.source)
        } catch {
            throw UsageError("source \(settings.source): \(error)")
        }
        // A predecessor first (a daemon serving the mountpoint hands it over): nothing below may touch the mount before.
        let succession = try Succession.begin(settings: settings, systemd: systemd, kept: kept, logger: logger)
        let cache = BlockCache(capacity: settings.capacity, blockSize: settings.blockSize, registry: succession.registry)
        let prefetcher = settings.prefetchDepth > 0 ? Prefetcher(workers: settings.prefetchThreads, depth: settings.prefetchDepth, chunkBlocks: settings.prefetchChunk) : nil
        // Half the descriptors for known files' handles; the rest for open files, prefetch, sockets.
        let peers = try PeerNetwork(settings: settings, logger: logger)
        let kernelFeatures = KernelFeatures(passthrough: settings.passthrough, directIO: settings.directIO, logger: logger)
        let filesystem = try MirrorFilesystem(
            sourceRoot: sourceRoot, cache: cache, prefetcher: prefetcher,
            sourceHandleLimit: max(16, min(descriptorLimit / 2, 65536)),
            sourceCalls: settings.sourceTimeout.map { SourceCallPool(timeout: .milliseconds(Int64($0 * 1000))) },
            sourceRootPath: settings.source,
            fleet: peers?.fleet,
            kernelModes: kernelFeatures,
            journal: succession.journal,
            logger: logger
        )
        var fuseConfiguration = FuseConfiguration(fileSystemName: settings.source)
        fuseConfiguration.metadataTimeout = settings.metadataTimeout
        fuseConfiguration.maxThreads = settings.threads
        fuseConfiguration.allowOther = settings.allowOther
        fuseConfiguration.autoUnmount = false // the mount keeper removes the mount once no daemon can serve it
        let exporter = settings.metrics.map { _ in PrometheusExporter() } // bootstraps swift-metrics before any metric exists
        let telemetry = ReadTelemetry(recordLatency: exporter != nil)
        let server = FuseServer(filesystem: filesystem, configuration: fuseConfiguration, readObserver: telemetry,
                                kernelFeatures: kernelFeatures, logger: logger)
        let started = ContinuousClock.now
        let handler = DaemonControl(filesystem: filesystem, settings: settings, telemetry: telemetry, peers: peers,
                                    kernelFeatures: kernelFeatures, started: started)
        try succession.attach(server: server, cache: cache, filesystem: filesystem, control: handler, settings: settings, logger: logger)
        let controlRunning = DispatchSemaphore(value: 0)
        let control: any Service
        do {
            control = try ControlServer.make(socketPath: settings.controlSocket, handler: handler, onRunning: { controlRunning.signal() })
        } catch {
            server.requestExit() // unmount before reporting the failure
            server.run()
            throw UsageError("control socket \(settings.controlSocket): \(error)")
        }
        let peerServerRunning = DispatchSemaphore(value: 0)
        let peerServer = peers?.server(for: filesystem) { port in
            logger.info("serving blocks to peers", metadata: ["port": "\(port)"])
            peerServerRunning.signal()
        }
        let ready = ReadyGate()

        // Started together; on shutdown stopped from the last to the first: the preload stops
        // first, then the mount drains its reads and goes, then the servers, then the threads
        // that load blocks. The mount ending by itself (an external unmount) shuts the group down.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let prefetcher {
            services.append(.init(service: StoppableService(description: "prefetcher", start: {}, stop: prefetcher.stop)))
        }
        if let peers { services.append(.init(service: StoppableService(description: "peer discovery", start: peers.start, stop: peers.shutdown))) }
        if let peerServer { services.append(.init(service: peerServer)) }
        if let exporter { services.append(.init(service: makeMetricsService(exporter, handler: handler, logger: logger))) }
        services.append(.init(service: control))
        services.append(.init(service: FuseService(server: server, grace: .milliseconds(Int(settings.shutdownGrace * 1000)), logger: logger),
                              successTerminationBehavior: .gracefullyShutdownGroup))
        // A preload that is done (or has nothing to do) leaves the others running.
        services.append(.init(service: PreloadService(patterns: settings.preload, pin: settings.preloadPin, filesystem: filesystem, ready: ready, logger: logger),
                              successTerminationBehavior: .ignore))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [], logger: logger))
        let groupEnded = DispatchSemaphore(value: 0)
        let groupFailure = Mutex<(any Error)?>(nil)
        Task {
            do { try await group.run() } catch { groupFailure.withLock { $0 = error } }
            controlRunning.signal() // wake a start-up wait if a server failed to bind
            peerServerRunning.signal()
            groupEnded.signal()
        }
        startSignalThread(group: group, server: server, logger: logger, systemd: systemd)

        var isReady = controlRunning.wait(timeout: .now() + 30) == .success
        if peerServer != nil { isReady = isReady && peerServerRunning.wait(timeout: .now() + 30) == .success }
        if let failure = groupFailure.withLock({ $0 }) {
            logger.error("control socket or peer server failed", metadata: ["socket": "\(settings.controlSocket)", "error": "\(failure)"])
            isReady = false
        }
        if isReady { isReady = mountAnswers() }
        var handover: HandoverServer?
        if isReady {
            succession.mounted(server: server, settings: settings, logger: logger)
            if succession.keptBySystemd {
                let grace = settings.shutdownGrace
                handler.restartPreparation.withLock { $0 = { () throws(ControlRequestError) -> RestartAnswer in
                    try succession.prepareRestart(server: server, cache: cache, grace: grace, logger: logger)
                } }
            }
            do {
                handover = try HandoverServer(context: .init(settings: settings, server: server, cache: cache, filesystem: filesystem,
                                                             succession: succession, control: handler, waitAfterwards: waitsAfterHandover),
                                              logger: logger)
            } catch {
                logger.warning("this daemon cannot hand its mount over", metadata: ["error": "\(error)"])
            }
            kernelFeatures.probe()
            let failure = ReadAheadWindow.set(mountpoint: settings.mountpoint, bytes: settings.readAhead).map { String(cString: strerror($0)) }
            let state = ReadAheadState(windowBytes: ReadAheadWindow.current(mountpoint: settings.mountpoint), error: failure)
            handler.readAhead.withLock { $0 = state }
            if let failure {
                logger.notice("could not set the kernel's read-ahead window; sequential reads may be slower",
                              metadata: ["error": "\(failure)", "window": "\(state.windowBytes.map(ByteCount.format) ?? "unknown")"])
            }
            logger.info("ready", metadata: [
                "source": "\(settings.source)", "mountpoint": "\(settings.mountpoint)",
                "capacity": "\(ByteCount.format(settings.capacity))", "control": "\(settings.controlSocket)",
            ])
            readiness?.succeed()
            systemd?.ready(status: "serving \(settings.source) at \(settings.mountpoint)")
        } else {
            Task { await group.triggerGracefulShutdown() }
        }
        ready.open(isReady)

        groupEnded.wait()
        handover?.stop()
        systemd?.stopping() // also when unmounted from outside; systemd ignores a repeat
        unlink(settings.controlSocket)
        if !isReady {
            let reason = groupFailure.withLock { $0 }.map { "\($0)" } ?? "see the log"
            throw UsageError("cachefs could not start serving \(settings.mountpoint): \(reason)")
        }
    }

    /// Asks the new mount for its root's attributes, which only our own loop can answer.
    private func mountAnswers() -> Bool {
        var attributes = stat()
        return stat(settings.mountpoint, &attributes) == 0
    }

    /// SIGTERM, SIGINT and SIGHUP (blocked in every other thread) start a graceful shutdown of the group.
    private func startSignalThread(group: ServiceGroup, server: FuseServer, logger: Logger, systemd: SystemdNotifier?) {
        Thread {
            var signals = Self.signalSet()
            while true {
                var received: Int32 = 0
                guard sigwait(&signals, &received) == 0 else { continue }
                logger.notice("signal received, unmounting", metadata: ["signal": "\(received)", "reads in progress": "\(server.activeReads)"])
                systemd?.stopping()
                Task { await group.triggerGracefulShutdown() }
            }
        }.start()
    }

    private func blockShutdownSignals() {
        var signals = Self.signalSet()
        pthread_sigmask(SIG_BLOCK, &signals, nil)
    }

    private static func signalSet() -> sigset_t {
        var signals = sigset_t()
        sigemptyset(&signals)
        for number in shutdownSignals { sigaddset(&signals, number) }
        return signals
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
