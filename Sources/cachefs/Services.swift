import FuseBridge
import Logging
import MirrorFS
import ServiceLifecycle
import Threading

// The daemon's parts as services of one ServiceGroup. The group starts them together
// and, on a graceful shutdown (SIGTERM, SIGINT, or the mount going away), stops them in
// the reverse of their order in the group: see `Daemon.start`. A service that needs a
// thread of its own starts it in the daemon's `OwnedThreads`, which `Daemon.finish` joins.

/// The FUSE session: serves until the mount goes away. On a graceful shutdown it lets
/// reads in progress finish (up to `grace`), then detaches the mount, which ends the loop.
struct FuseService: Service {
    let server: FuseServer
    let grace: Duration
    let threads: OwnedThreads
    let logger: Logger

    func run() async {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                // libfuse's loop blocks its thread until the session ends (and joins its workers).
                await withCheckedContinuation { (ended: CheckedContinuation<Void, Never>) in
                    threads.start(name: "fuse-loop") {
                        server.run(); ended.resume()
                    }
                }
            } onGracefulShutdown: {
                drainAndUnmount()
            }
        } onCancel: {
            server.requestExit() // another service failed: nothing may keep the mount
        }
    }

    private func drainAndUnmount() {
        let (server, grace, logger) = (self.server, self.grace, self.logger)
        threads.start(name: "fuse-drain") {
            if !server.waitForReadsToDrain(grace: grace) {
                logger.warning(
                    "reads still in progress after the shutdown grace; unmounting anyway", metadata: ["reads": "\(server.activeReads)"])
            }
            server.requestExit()
        }
    }
}

/// Runs `start` when the group starts and `stop` when it shuts down: for parts with
/// threads of their own (the prefetch threads, peer discovery), which stop on request.
struct StoppableService: Service, CustomStringConvertible {
    let description: String
    let start: @Sendable () -> Void
    let stop: @Sendable () -> Void

    func run() async {
        start()
        try? await gracefulShutdown()
        stop()
    }
}

/// `--preload`: warms the matching source files once the mount is ready (never before:
/// a failed start must not read the source), on a thread of its own, and stops
/// between files when the daemon shuts down.
struct PreloadService: Service {
    let patterns: [String]
    let pin: Bool
    let filesystem: MirrorFilesystem
    let ready: ReadyGate
    let threads: OwnedThreads
    let logger: Logger

    func run() async {
        guard !patterns.isEmpty, await ready.wait() else { return }
        /// Set at shutdown; the preload asks it between files. Lock order: a leaf.
        let shuttingDown = Condition(false)
        await withGracefulShutdownHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                threads.start(name: "preload") {
                    Preloader.run(
                        patterns: patterns, pin: pin, filesystem: filesystem, logger: logger, stop: { shuttingDown.withLock { $0 } })
                    done.resume()
                }
            }
        } onGracefulShutdown: {
            shuttingDown.set()
        }
    }
}

/// Opened once the daemon has reported that it is ready, or closed for good if it never will be.
final class ReadyGate: Sendable {
    private let state = AsyncStream<Bool>.makeStream()

    func open(_ ready: Bool) {
        state.continuation.yield(ready)
        state.continuation.finish()
    }

    /// Whether the daemon became ready.
    func wait() async -> Bool {
        for await ready in state.stream { return ready }
        return false
    }
}
