import Logging
import NIOHTTP1
import Synchronization

/// Fetches blocks from peers for threads that must block (FUSE workers, prefetch threads).
///
/// For each block it asks at most `maximumAttempts` live peers, in rendezvous
/// order, skipping peers in backoff; a 404 moves on to the next, a failure marks
/// the peer for backoff. It returns nil when no peer had the block, and the
/// caller reads the source. Every wait is bounded by `connectTimeout` and `blockTimeout`.
///
/// Thread safety: `fetch` may be called from any number of threads at once; each
/// exchange has a connection to itself. The connections run on their own small
/// event loop group, never on the caller's thread (`PeerConnectionPool`).
public final class PeerClient: Sendable {
    public struct Configuration: Sendable {
        public var token: String?
        /// Sent in X-Cachefs-Instance; a server that finds its own ID answers 508.
        public var instanceID: String
        public var maximumAttempts = 2
        public var connectTimeout: Duration = .milliseconds(200)
        /// One block's exchange, from sending the request to the last byte of the answer.
        public var blockTimeout: Duration = .milliseconds(1500)
        public var eventLoopThreads = 2
        /// Idle connections kept per peer; a fetch that finds none opens another.
        public var idleConnectionsPerPeer = 16
        /// The most a connection reads from its socket at once: a 1 MiB block arrives in a few reads.
        public var receiveBufferSize = 1 << 20

        public init(token: String?, instanceID: String) {
            self.token = token
            self.instanceID = instanceID
        }
    }

    public let configuration: Configuration
    public let counters = PeerClientCounters()
    public let health: PeerHealth
    private let discovery: PeerDiscovery?
    private let connections: PeerConnectionPool
    private let requestHeaders: HTTPHeaders
    private let logger: Logger

    /// - Parameter discovery: where the live peers come from; nil for a client used only with `fetch(_:from:into:)`.
    public init(configuration: Configuration, discovery: PeerDiscovery?, health: PeerHealth = PeerHealth(), logger: Logger) {
        self.configuration = configuration
        self.discovery = discovery
        self.health = health
        self.logger = logger
        connections = PeerConnectionPool(
            eventLoopThreads: configuration.eventLoopThreads,
            maximumIdlePerPeer: configuration.idleConnectionsPerPeer,
            connectTimeout: configuration.connectTimeout,
            receiveBufferSize: configuration.receiveBufferSize
        )
        var headers = HTTPHeaders()
        headers.add(name: "X-Cachefs-Instance", value: configuration.instanceID)
        if let token = configuration.token { headers.add(name: "Authorization", value: "Bearer \(token)") }
        requestHeaders = headers
    }

    /// Fills `buffer` with the block from the first peer that has it; returns its length, or nil to read the source.
    /// `buffer` must be exactly `id.expectedLength` bytes.
    public func fetch(_ id: PeerBlockID, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard let discovery, buffer.count == id.expectedLength, buffer.count > 0 else { return nil }
        let live = discovery.peers
        guard !live.isEmpty else { return nil }
        // Peers in backoff give their turn to the next ones in rank order.
        let ranked = Rendezvous.rank(live, for: id)
        let candidates = ranked.lazy.filter { self.health.isAvailable($0) }.prefix(configuration.maximumAttempts)
        for peer in candidates {
            switch fetch(id, from: peer, into: buffer) {
            case .block(let count):
                health.recordSuccess(peer)
                counters.blocks.add(1, ordering: .relaxed)
                counters.bytes.add(UInt64(count), ordering: .relaxed)
                return count
            case .notFound:
                health.recordSuccess(peer)
                counters.notFound.add(1, ordering: .relaxed)
            case .isSelf:
                discovery.excludeSelf(peer)
            case .failed(let reason):
                health.recordFailure(peer)
                counters.failures.add(1, ordering: .relaxed)
                logger.notice("peer failed; skipping it for a while", metadata: ["peer": "\(peer)", "reason": "\(reason)", "block": "\(id)"])
            }
        }
        counters.fallbacks.add(1, ordering: .relaxed)
        return nil
    }

    /// One request to one peer, waiting at most the connect timeout plus `blockTimeout`.
    public func fetch(_ id: PeerBlockID, from peer: PeerAddress, into buffer: UnsafeMutableRawBufferPointer) -> PeerFetchOutcome {
        counters.requests.add(1, ordering: .relaxed)
        // A kept-alive connection that the peer has closed meanwhile fails before any
        // response arrives; that is worth one more try on a new connection, not a backoff.
        // The retry shares the first attempt's deadline, so the bound above holds either way.
        let deadline = ContinuousClock.now + configuration.blockTimeout
        var retried = false
        while true {
            let connection: PeerConnection, reused: Bool
            do {
                (connection, reused) = try connections.checkout(peer)
            } catch {
                return .failed("connecting: \(error)")
            }
            let receiver = BlockReceiver(destination: buffer)
            guard let outcome = connection.exchange(
                target: id.requestPath, headers: requestHeaders, receiver: receiver, timeout: deadline - .now
            ) else {
                connection.close()
                return .failed("no answer within \(configuration.blockTimeout)")
            }
            if receiver.isReusable { connections.checkin(connection, to: peer) } else { connection.close() }
            if case .failed = outcome, reused, !retried, !receiver.receivedResponse {
                retried = true
                continue
            }
            return outcome
        }
    }

    /// Idle connections kept for `peer` (for tests).
    func idleConnections(to peer: PeerAddress) -> Int { connections.idleCount(for: peer) }

    /// Closes connections and stops the event loops; `fetch` must not be called afterwards.
    public func shutdown() {
        connections.shutdown()
    }
}

public enum PeerFetchOutcome: Sendable, Equatable {
    /// The block, verified: its length and CRC-32C match.
    case block(Int)
    case notFound
    /// The peer is this instance.
    case isSelf
    case failed(String)
}

/// Counters of block fetches from peers; read by `cachefs stats`.
public final class PeerClientCounters: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let blocks = Atomic<UInt64>(0)
    public let bytes = Atomic<UInt64>(0)
    public let notFound = Atomic<UInt64>(0)
    /// Refused connections, timeouts, bad lengths or checksums, refused tokens.
    public let failures = Atomic<UInt64>(0)
    /// Blocks no peer provided, read from the source instead.
    public let fallbacks = Atomic<UInt64>(0)

    public init() {}
}
