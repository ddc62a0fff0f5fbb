import ControlPlane
import HTTPServing
import Logging
import MirrorFS
import PeerTransport
import Reporting
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// This daemon's part in the fleet: the client side that finds holders and owners for its
/// missing blocks, and the server that answers other instances from memory or as owner.
final class PeerNetwork: FigureReporter {
    let settings: MountSettings
    /// Random per process: a server refuses requests carrying its own ID, so an instance never asks itself.
    let instanceID: String
    /// The peers asked on a miss; nil with --listen only.
    let fleet: PeerFleet?
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
            fleet = nil
        } else {
            let discovery = PeerDiscovery(seeds: settings.peers, logger: logger, isSelf: Self.selfTest(listen: settings.listen))
            let client = PeerClient(configuration: .init(token: token, instanceID: instanceID))
            fleet = PeerFleet(client: client, discovery: discovery, ownAddress: Self.listenAddress(settings.listen), logger: logger)
        }
    }

    /// Whether a resolved peer address is where this instance listens: the same port on
    /// the listening address, or on any local address when listening on all of them.
    static func selfTest(listen: HostPort?) -> @Sendable (PeerAddress) -> Bool {
        guard let listen else { return { _ in false } }
        let own: Set<String> =
            isWildcard(listen)
            ? PeerDiscovery.localAddresses()
            : Set(PeerDiscovery.addresses(of: listen)?.map(\.host) ?? [listen.host])
        return { peer in peer.port == listen.port && own.contains(peer.host) }
    }

    /// The --listen address as the other instances would name it, when it is a single numeric address.
    static func listenAddress(_ listen: HostPort?) -> PeerAddress? {
        guard let listen, !isWildcard(listen), let address = PeerDiscovery.addresses(of: listen)?.first else { return nil }
        return address
    }

    private static func isWildcard(_ listen: HostPort) -> Bool { ["0.0.0.0", "::", "*"].contains(listen.host) }

    func start() { fleet?.discovery.start() }

    /// The HTTP server for peers, or nil without --listen.
    func server(for filesystem: MirrorFilesystem, onRunning: @escaping @Sendable (Int) async -> Void) -> (any Service)? {
        guard let listen = settings.listen else { return nil }
        return PeerServer(
            address: listen, token: token, instanceID: instanceID, counters: serverCounters,
            provider: filesystem, fleet: fleet, onRunning: onRunning, logger: logger
        )
    }

    func shutdown() {
        fleet?.discovery.stop()
        fleet?.client.shutdown()
    }

    /// The peers currently known (resolved, not this instance); nil without --peers.
    var livePeers: [String]? { fleet?.discovery.peers.map(\.description) }

    /// The peer figures: the client side's with --peers, the server's with --listen.
    func report(into report: inout FigureValues) {
        if let fleet {
            let (client, counters) = (fleet.client.counters, fleet.counters)
            for (figure, value) in [
                (Figure.peerRequests, client.requests.relaxedValue), (.blocksFromPeers, client.blocks.relaxedValue),
                (.holdingsQueries, client.holdingsQueries.relaxedValue),
                (.blocksFromHolders, counters.blocksFromHolders.relaxedValue), (.blocksFromOwners, counters.blocksFromOwners.relaxedValue),
                (.holdersFound, counters.holdersFound.relaxedValue), (.ownerRequests, counters.ownerRequests.relaxedValue),
                (.ownerDeadlinesMissed, counters.ownerDeadlinesMissed.relaxedValue), (.peerNotFound, counters.notFound.relaxedValue),
                (.peerFailures, counters.failures.relaxedValue), (.peerFallbacks, counters.fallbacks.relaxedValue),
            ] {
                report[figure] = value
            }
            report[.peersInBackoff] = UInt64(fleet.client.health.skippedCount)
        }
        if settings.listen != nil {
            for (figure, value) in [
                (Figure.servedBlocks, serverCounters.servedBlocks.relaxedValue), (.servedBytes, serverCounters.servedBytes.relaxedValue),
                (.servedNotResident, serverCounters.notResident.relaxedValue), (.servedRefused, serverCounters.refused.relaxedValue),
                (.holdingsServed, serverCounters.holdingsServed.relaxedValue),
                (.blocksLoadedForPeers, serverCounters.blocksLoadedForPeers.relaxedValue),
                (.bytesLoadedForPeers, serverCounters.bytesLoadedForPeers.relaxedValue),
            ] {
                report[figure] = value
            }
        }
    }
}

extension Atomic where Value == UInt64 {
    /// The counter's value, for a report (counters are only ever added to with relaxed ordering).
    fileprivate var relaxedValue: UInt64 { load(ordering: .relaxed) }
}
