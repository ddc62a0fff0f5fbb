#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import ControlPlane
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
    let started: ContinuousClock.Instant
    /// Set once the metrics server has bound its port.
    let metricsAddress = Mutex<String?>(nil)

    init(filesystem: MirrorFilesystem, settings: MountSettings, telemetry: ReadTelemetry, peers: PeerNetwork?, started: ContinuousClock.Instant) {
        self.filesystem = filesystem
        self.settings = settings
        self.telemetry = telemetry
        self.peers = peers
        self.started = started
    }

    func stats() -> StatsReport {
        let statistics = filesystem.statistics
        let cache = statistics.cache
        let origins = statistics.origins
        var report = StatsReport(
            source: settings.source, mountpoint: settings.mountpoint, pid: getpid(),
            uptimeSeconds: (ContinuousClock.now - started) / .seconds(1),
            capacityBytes: cache.capacity, blockSizeBytes: cache.blockSize,
            cachedBytes: cache.residentBytes, cachedBlocks: cache.residentBlocks,
            hits: cache.hits, misses: cache.misses, coalescedMisses: cache.coalescedMisses,
            bytesFromSource: origins.fromSource, evictions: cache.evictions, evictedBytes: cache.evictedBytes,
            sourceErrors: statistics.sourceErrors, readRequests: statistics.readRequests,
            bytesRead: statistics.bytesRead, knownNodes: statistics.knownNodes,
            prefetchedBlocks: statistics.prefetch?.loadedBlocks ?? 0,
            prefetchSkippedBlocks: statistics.prefetch?.cancelledBlocks ?? 0
        )
        report.bytesFromMemory = origins.fromMemory
        report.bytesFromPeers = origins.fromPeers
        report.peers = peers?.report
        report.pinnedBytes = cache.pinnedBytes
        report.pinnedFiles = cache.pinnedFiles
        report.pinnedCachedBytes = cache.pinnedResidentBytes
        report.tiers = telemetry.totals.map { .init(tier: $0.tier.description, reads: $0.reads, bytes: $0.bytes) }
        report.metricsAddress = metricsAddress.withLock { $0 }
        return report
    }

    func planWarm(_ request: WarmPlanRequest) throws(ControlRequestError) -> WarmPlan {
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
        do {
            let (version, bytes) = try filesystem.warm(relativePath: request.path, offset: request.offset, length: request.length)
            return WarmRangeResult(bytes: bytes, fileSize: version.size)
        } catch {
            throw Self.explain(error, path: request.path)
        }
    }

    func unpin(_ request: UnpinRequest) throws(ControlRequestError) -> UnpinResult {
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
