import ArgumentParser
import ControlPlane
import Dispatch
import Foundation
import Synchronization

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a running daemon's cache counters.",
        discussion: "Example: cachefs stats /data-fast --json"
    )

    @Argument(help: "The mountpoint of a running cachefs daemon.")
    var mountpoint: String

    @Flag(help: "Print JSON, for scripts.")
    var json = false

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    func run() throws {
        let socket = controlSocket.map(MountSettings.absolute)
            ?? ControlSocket.defaultPath(forMountpoint: Self.canonicalMountpoint(mountpoint))
        let report = try runBlocking { try await ControlClient(socketPath: socket).stats() }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.table(report))
        }
    }

    /// The daemon keys its socket by its canonical mountpoint. Resolving the
    /// parent only keeps this working when the mount itself does not answer.
    static func canonicalMountpoint(_ path: String) -> String {
        let absolute = MountSettings.absolute(path)
        let url = URL(fileURLWithPath: absolute)
        let parent = url.deletingLastPathComponent().path
        guard absolute != "/", let resolved = realpath(parent, nil) else { return absolute }
        defer { free(resolved) }
        let base = String(cString: resolved)
        return (base == "/" ? "" : base) + "/" + url.lastPathComponent
    }

    static func table(_ report: StatsReport) -> String {
        let size = ByteCount.format
        let percent = String(format: "%.1f%%", report.hitRatio * 100)
        let rows: [(String, String)] = [
            ("mountpoint", report.mountpoint),
            ("source", report.source),
            ("pid", "\(report.pid), up \(Int(report.uptimeSeconds)) s"),
            ("capacity", size(report.capacityBytes)),
            ("cached", "\(size(report.cachedBytes)) in \(report.cachedBlocks) blocks of \(size(report.blockSizeBytes))"),
            ("pinned", "\(size(report.pinnedBytes)) in \(report.pinnedFiles) file\(report.pinnedFiles == 1 ? "" : "s") (\(size(report.pinnedCachedBytes)) loaded)"),
            ("hit ratio", "\(percent) (\(report.hits) hits, \(report.misses) misses, \(report.coalescedMisses) coalesced)"),
            ("from memory", size(Int(report.bytesFromMemory))),
            ("from peers", size(Int(report.bytesFromPeers))),
            ("from source", size(Int(report.bytesFromSource))),
            ("evictions", "\(report.evictions) (\(size(Int(report.evictedBytes))))"),
            ("source errors", "\(report.sourceErrors)"),
            ("reads", "\(report.readRequests) requests, \(size(Int(report.bytesRead)))"),
            ("by tier", report.tiers.map { "\($0.tier) \($0.reads) reads, \(size(Int($0.bytes)))" }.joined(separator: "; ")),
            ("prefetched", "\(report.prefetchedBlocks) blocks (\(report.prefetchSkippedBlocks) skipped)"),
            ("open nodes", "\(report.knownNodes)"),
        ] + (report.metricsAddress.map { [("metrics", "http://\($0)/metrics")] } ?? [])
        return (rows + (report.peers.map(peerRows) ?? [])).map { $0.0.padding(toLength: 15, withPad: " ", startingAt: 0) + $0.1 }.joined(separator: "\n")
    }
}

extension StatsCommand {
    static func peerRows(_ peers: PeerStatsReport) -> [(String, String)] {
        [
            ("peer listen", peers.listen ?? "off"),
            ("live peers", peers.livePeers.isEmpty ? "none" : "\(peers.livePeers.joined(separator: ", ")) (\(peers.peersInBackoff) in backoff)"),
            ("peer requests", "\(peers.requests) (\(peers.blocksFromPeers) blocks, \(peers.notFound) not found, \(peers.failures) failed, \(peers.fallbacks) to source)"),
            ("served peers", "\(peers.servedBlocks) blocks (\(ByteCount.format(Int(peers.servedBytes)))), \(peers.servedNotResident) not resident, \(peers.servedRefused) refused"),
        ]
    }
}

/// Runs async work from a synchronous command. The daemon's commands stay
/// synchronous so that its signal mask is set before any thread starts.
func runBlocking<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let outcome = Mutex<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do { let value = try await work(); outcome.withLock { $0 = .success(value) } }
        catch { outcome.withLock { $0 = .failure(error) } }
        done.signal()
    }
    done.wait()
    return try outcome.withLock { $0! }.get()
}
