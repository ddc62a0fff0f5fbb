import BlockCache
import ControlPlane
import FuseBridge
import MirrorFS
import Reporting
import Synchronization
import SystemPackage
import Telemetry

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's answers to control requests: stats, warm-up and pinning.
///
/// Threads: the control server calls these on its work queue, several at once;
/// warm calls block on the source.
final class DaemonControl: ControlHandler {
    let filesystem: MirrorFilesystem
    let settings: MountSettings
    /// The parts that keep figures, each reporting its own (the mirror with its cache, loader, source
    /// and prefetcher; read telemetry; the FUSE server; the peers).
    let reporters: [any FigureReporter]
    let peers: PeerNetwork?
    let kernelFeatures: FuseKernelFeatures
    let started: ContinuousClock.Instant
    /// Set once the metrics server has bound its port. Lock order: a leaf.
    let metricsAddress = Mutex<String?>(nil)
    /// Set once the daemon has tried to raise the kernel's read-ahead window. Lock order: a leaf.
    let readAhead = Mutex<ReadAheadState?>(nil)
    /// How the daemon came to serve the mount, and what it inherited. Lock order: a leaf.
    let continuity = Mutex<ContinuityState?>(nil)
    /// Set while the mount is being handed to another daemon: requests that change the cache are refused meanwhile.
    let handingOver = Atomic<Bool>(false)
    /// Prepares an exit for systemd to restart the daemon (set once the daemon serves; nil outside systemd's store).
    /// Lock order: a leaf (the closure is called after the lock is released).
    let restartPreparation = Mutex<(@Sendable () throws(ControlRequestError) -> RestartAnswer)?>(nil)

    init(
        filesystem: MirrorFilesystem, settings: MountSettings, reporters: [any FigureReporter], peers: PeerNetwork?,
        kernelFeatures: FuseKernelFeatures, started: ContinuousClock.Instant
    ) {
        self.filesystem = filesystem
        self.settings = settings
        self.reporters = reporters
        self.peers = peers
        self.kernelFeatures = kernelFeatures
        self.started = started
    }

    /// The one snapshot of the daemon's statistics, which `cachefs stats` and `/metrics` both render.
    func stats() -> StatsReport {
        var report = StatsReport(settings: settings, pid: getpid(), uptimeSeconds: (ContinuousClock.now - started) / .seconds(1))
        report.readAhead = readAhead.withLock { $0 }
        report.passthrough = kernelFeatures.passthroughState
        report.metricsAddress = metricsAddress.withLock { $0 }
        report.continuity = continuity.withLock { $0 }
        report.livePeers = peers?.livePeers
        for reporter in reporters { reporter.report(into: &report.figures) }
        return report
    }

    func planWarm(_ request: WarmPlanRequest) throws(ControlRequestError) -> WarmPlan {
        try refuseWhileHandingOver()
        var files: [String: WarmFile] = [:]
        for path in request.paths {
            do {
                for file in try filesystem.warmCandidates(atRelativePath: path) { files[file.path] = file }
            } catch {
                throw Self.explain(error, path: path)
            }
        }
        let sorted = files.values.sorted { $0.path < $1.path }
        if request.pin {
            do {
                try filesystem.pin(sorted)
            } catch {
                throw .conflict(Self.explain(error, fileCount: sorted.count))
            }
        }
        return WarmPlan(files: sorted.map { .init(path: $0.path, size: $0.size) }, pinned: request.pin)
    }

    func warm(_ request: WarmRangeRequest) throws(ControlRequestError) -> WarmRangeResult {
        try refuseWhileHandingOver()
        do {
            let (version, bytes) = try filesystem.warm(relativePath: request.path, offset: request.offset, length: request.length)
            return WarmRangeResult(bytes: bytes, fileSize: version.size)
        } catch {
            throw Self.explain(error, path: request.path)
        }
    }

    func unpin(_ request: UnpinRequest) throws(ControlRequestError) -> UnpinResult {
        try refuseWhileHandingOver()
        var total = UnpinResult(files: 0, bytes: 0)
        for path in request.paths {
            do {
                let released = try filesystem.unpin(atRelativePath: path)
                total.files += released.files
                total.bytes += released.bytes
            } catch {
                throw Self.explain(error, path: path)
            }
        }
        return total
    }

    func restart() throws(ControlRequestError) -> RestartAnswer {
        guard let prepare = restartPreparation.withLock({ $0 }) else {
            throw ControlRequestError(
                status: 409,
                message: "systemd keeps nothing of this daemon; `cachefs restart` starts a new daemon that takes the mount over instead")
        }
        try refuseWhileHandingOver()
        return try prepare()
    }

    /// The cache is being handed to another daemon: what this one would change would be lost.
    private func refuseWhileHandingOver() throws(ControlRequestError) {
        guard handingOver.load(ordering: .acquiring) else { return }
        throw ControlRequestError(status: 503, message: "the mount is being handed to a new daemon; try again in a moment")
    }

    static func explain(_ error: Errno, path: String) -> ControlRequestError {
        let shown = path.isEmpty ? "the mount's root" : path
        switch error {
        case .noSuchFileOrDirectory: return .notFound("\(shown): no such file or directory in the source")
        case .tooManySymbolicLinkLevels, .improperLink, .invalidArgument:
            return .badRequest("\(shown): not a plain path beneath the source (symlinks and '..' are not followed)")
        default: return ControlRequestError(status: 500, message: "\(shown): \(error)")
        }
    }

    static func explain(_ refusal: PinRefused, fileCount: Int) -> String {
        let free = max(0, refusal.capacity - refusal.pinnedBytes - refusal.reservedBytes)
        return "cannot pin \(fileCount) file\(fileCount == 1 ? "" : "s") of \(ByteCount.format(refusal.requestedBytes)): "
            + "only \(ByteCount.format(free)) of the \(ByteCount.format(refusal.capacity)) capacity is not pinned already; "
            + "unpin something or mount with a larger --capacity"
    }
}
