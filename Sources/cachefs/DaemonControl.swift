#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import ControlPlane
import FuseBridge
import MirrorFS
import Synchronization
import SystemPackage
import Telemetry

/// The daemon's answers to control requests: stats, warm-up and pinning.
///
/// Threads: the control server calls these on its work queue, several at once;
/// warm calls block on the source.
final class DaemonControl: ControlHandler {
    let filesystem: MirrorFilesystem
    let settings: MountSettings
    let telemetry: ReadTelemetry
    let peers: PeerNetwork?
    let kernelFeatures: KernelFeatures
    let started: ContinuousClock.Instant
    /// Set once the metrics server has bound its port.
    let metricsAddress = Mutex<String?>(nil)
    /// Set once the daemon has tried to raise the kernel's read-ahead window.
    let readAhead = Mutex<ReadAheadState?>(nil)
    /// How the daemon came to serve the mount, and what it inherited.
    let continuity = Mutex<ContinuityState?>(nil)
    /// Set while the mount is being handed to another daemon: requests that change the cache are refused meanwhile.
    let handingOver = Atomic<Bool>(false)
    /// Prepares an exit for systemd to restart the daemon (set once the daemon serves; nil outside systemd's store).
    let restartPreparation = Mutex<(@Sendable () throws(ControlRequestError) -> RestartAnswer)?>(nil)

    init(filesystem: MirrorFilesystem, settings: MountSettings, telemetry: ReadTelemetry, peers: PeerNetwork?,
         kernelFeatures: KernelFeatures, started: ContinuousClock.Instant) {
        self.filesystem = filesystem
        self.settings = settings
        self.telemetry = telemetry
        self.peers = peers
        self.kernelFeatures = kernelFeatures
        self.started = started
    }

    /// The one snapshot of the daemon's statistics, which `cachefs stats` and `/metrics` both render.
    func stats() -> StatsReport {
        let statistics = filesystem.statistics
        let cache = statistics.cache
        var report = StatsReport(settings: settings, pid: getpid(), uptimeSeconds: (ContinuousClock.now - started) / .seconds(1))
        report.readAhead = readAhead.withLock { $0 }
        let status = kernelFeatures.status
        report.passthrough = PassthroughState(available: status.available, reason: status.reason)
        report.metricsAddress = metricsAddress.withLock { $0 }
        report.continuity = continuity.withLock { $0 }
        let values: [(Figure, UInt64)] = [
            (.cachedBytes, UInt64(cache.residentBytes)), (.cachedBlocks, UInt64(cache.residentBlocks)),
            (.reservedBytes, UInt64(cache.reservedBytes)), (.hits, cache.hits), (.misses, cache.misses),
            (.coalescedMisses, cache.coalescedMisses), (.evictions, cache.evictions), (.evictedBytes, cache.evictedBytes),
            (.pinnedBytes, UInt64(cache.pinnedBytes)), (.pinnedFiles, UInt64(cache.pinnedFiles)),
            (.pinnedCachedBytes, UInt64(cache.pinnedResidentBytes)),
            (.readRequests, statistics.readRequests), (.bytesRead, statistics.bytesRead),
            (.bytesFromSource, statistics.bytesFromSource), (.bytesFromPeers, statistics.bytesFromPeers),
            (.sourceErrors, statistics.sourceErrors), (.sourceTimeouts, statistics.sourceTimeouts),
            (.sourceReattaches, statistics.sourceReattaches), (.sourceUnavailable, statistics.sourceUnavailable), (.knownNodes, UInt64(statistics.knownNodes)),
            (.sourceHandles, UInt64(statistics.sourceHandles)), (.sourceHandleReopens, statistics.sourceHandleReopens),
            (.prefetchQueuedBlocks, statistics.prefetch?.queuedBlocks ?? 0), (.prefetchedBlocks, statistics.prefetch?.loadedBlocks ?? 0),
            (.prefetchSkippedBlocks, statistics.prefetch?.cancelledBlocks ?? 0),
            (.passthroughOpens, statistics.passthroughOpens), (.directIOOpens, statistics.directIOOpens), (.extendedAttributeRequests, statistics.extendedAttributeRequests), (.passthroughFiles, UInt64(cache.heldFiles)),
            (.passthroughBytes, UInt64(cache.heldTotalBytes)),
        ]
        for (figure, value) in values { report[figure] = value }
        for total in telemetry.totals {
            let (reads, bytes): (Figure, Figure) = switch total.tier {
            case .memory: (.memoryReads, .memoryReadBytes)
            case .peer: (.peerReads, .peerReadBytes)
            case .source: (.sourceReads, .sourceReadBytes)
            }
            report[reads] = total.reads
            report[bytes] = total.bytes
        }
        peers?.report(into: &report)
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
            throw ControlRequestError(status: 409, message: "systemd keeps nothing of this daemon; `cachefs restart` starts a new daemon that takes the mount over instead")
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
