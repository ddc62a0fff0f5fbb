#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import ControlPlane
import HTTPServing
import Logging
import MirrorFS
import PeerTransport
import ServiceLifecycle

/// This daemon's part in the peer network: the client that asks peers for
/// missing blocks, and the server that answers theirs from resident blocks.
final class PeerNetwork: Sendable {
    let settings: MountSettings
    /// Random per process: a server refuses requests carrying its own ID, so an instance never asks itself.
    let instanceID: String
    let discovery: PeerDiscovery?
    let client: PeerClient?
    /// The shared secret from --peer-token-file, presented to peers and required of them.
    private let token: String?
    let serverCounters = PeerServerCounters()
    private let logger: Logger

    /// nil when neither --listen nor --peers is given.
    init?(settings: MountSettings, logger: Logger) throws {
        guard settings.peersEnabled else { return nil }
        self.settings = settings
        self.logger = logger
        token = try settings.peerTokenFile.map(PeerOptions.readToken)
        instanceID = String(UInt64.random(in: .min ... .max), radix: 16) + String(UInt64.random(in: .min ... .max), radix: 16)
        if settings.peers.isEmpty {
            discovery = nil
            client = nil
        } else {
            let discovery = PeerDiscovery(seeds: settings.peers, logger: logger, isSelf: Self.selfTest(listen: settings.listen))
            self.discovery = discovery
            client = PeerClient(configuration: .init(token: token, instanceID: instanceID), discovery: discovery, logger: logger)
        }
    }

    /// Whether a resolved peer address is where this instance listens: the same port on
    /// the listening address, or on any local address when listening on all of them.
    static func selfTest(listen: HostPort?) -> @Sendable (PeerAddress) -> Bool {
        guard let listen else { return { _ in false } }
        let wildcard = ["0.0.0.0", "::", "*"].contains(listen.host)
        let own: Set<String> = wildcard
            ? PeerDiscovery.localAddresses()
            : Set(PeerDiscovery.addresses(of: listen)?.map(\.host) ?? [listen.host])
        return { peer in peer.port == listen.port && own.contains(peer.host) }
    }

    var remoteSource: (any RemoteBlockSource)? { client.map(PeerRemoteSource.init) }

    func start() { discovery?.start() }

    /// The HTTP server for peers, or nil without --listen.
    func server(for filesystem: MirrorFilesystem, onRunning: @escaping @Sendable (Int) async -> Void) -> (any Service)? {
        guard let listen = settings.listen else { return nil }
        return PeerServer.make(
            address: listen, token: token, instanceID: instanceID, counters: serverCounters,
            lookup: { id in filesystem.residentBlock(for: RemoteBlockRequest(id)) },
            quickLookup: { id in filesystem.residentBlockWithoutCheckingSource(for: RemoteBlockRequest(id)) },
            onRunning: onRunning,
            logger: logger
        )
    }

    func shutdown() {
        discovery?.stop()
        client?.shutdown()
    }

    /// Adds the peer figures and the live peers to a stats report.
    func report(into report: inout StatsReport) {
        if let client {
            let counters = client.counters
            report[.peerRequests] = counters.requests.load(ordering: .relaxed)
            report[.blocksFromPeers] = counters.blocks.load(ordering: .relaxed)
            report[.peerNotFound] = counters.notFound.load(ordering: .relaxed)
            report[.peerFailures] = counters.failures.load(ordering: .relaxed)
            report[.peerFallbacks] = counters.fallbacks.load(ordering: .relaxed)
            report[.peersInBackoff] = UInt64(client.health.skippedCount)
            report.livePeers = discovery?.peers.map(\.description) ?? []
        }
        if settings.listen != nil {
            report[.servedBlocks] = serverCounters.servedBlocks.load(ordering: .relaxed)
            report[.servedBytes] = serverCounters.servedBytes.load(ordering: .relaxed)
            report[.servedNotResident] = serverCounters.notResident.load(ordering: .relaxed)
            report[.servedRefused] = serverCounters.refused.load(ordering: .relaxed)
        }
    }
}

/// MirrorFS's view of the peer client: blocks named by path and version.
struct PeerRemoteSource: RemoteBlockSource {
    let client: PeerClient

    func readBlock(_ request: RemoteBlockRequest, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        client.fetch(PeerBlockID(
            path: request.relativePath, fileSize: request.fileSize,
            modifiedNanoseconds: request.modified.nanosecondsSinceEpoch,
            blockSize: request.blockSize, index: request.index
        ), into: buffer)
    }
}

extension Timestamp {
    init(nanosecondsSinceEpoch value: Int64) {
        let (seconds, nanoseconds) = value.quotientAndRemainder(dividingBy: 1_000_000_000)
        self.init(seconds: nanoseconds < 0 ? seconds - 1 : seconds, nanoseconds: nanoseconds < 0 ? nanoseconds + 1_000_000_000 : nanoseconds)
    }

    var nanosecondsSinceEpoch: Int64 { seconds &* 1_000_000_000 &+ nanoseconds }
}

extension RemoteBlockRequest {
    init(_ id: PeerBlockID) {
        self.init(
            relativePath: id.path, fileSize: id.fileSize, modified: Timestamp(nanosecondsSinceEpoch: id.modifiedNanoseconds),
            blockSize: id.blockSize, index: id.index
        )
    }
}
