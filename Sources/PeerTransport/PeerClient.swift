import AsyncHTTPClient
import Dispatch
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Fetches blocks from peers for threads that must block (FUSE workers, prefetch threads).
///
/// For each block it asks at most `maximumAttempts` live peers, in rendezvous
/// order, skipping peers in backoff; a 404 moves on to the next, a failure marks
/// the peer for backoff. It returns nil when no peer had the block, and the
/// caller reads the source. Every wait is bounded by `connectTimeout` and `blockTimeout`.
///
/// Thread safety: `fetch` may be called from any number of threads at once. The
/// HTTP client runs on its own small event loop group, never on the caller's thread.
public final class PeerClient: Sendable {
    public struct Configuration: Sendable {
        public var token: String?
        /// Sent in X-Cachefs-Instance; a server that finds its own ID answers 508.
        public var instanceID: String
        public var maximumAttempts = 2
        public var connectTimeout: Duration = .milliseconds(200)
        /// The whole exchange for one block, from connecting to the last byte.
        public var blockTimeout: Duration = .milliseconds(1500)
        public var eventLoopThreads = 2
        public var connectionsPerPeer = 32

        public init(token: String?, instanceID: String) {
            self.token = token
            self.instanceID = instanceID
        }
    }

    public let configuration: Configuration
    public let counters = PeerClientCounters()
    public let health: PeerHealth
    private let discovery: PeerDiscovery?
    private let eventLoops: MultiThreadedEventLoopGroup
    private let client: HTTPClient
    private let logger: Logger

    /// - Parameter discovery: where the live peers come from; nil for a client used only with `fetch(_:from:into:)`.
    public init(configuration: Configuration, discovery: PeerDiscovery?, health: PeerHealth = PeerHealth(), logger: Logger) {
        self.configuration = configuration
        self.discovery = discovery
        self.health = health
        self.logger = logger
        eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreads)
        var http = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .init(configuration.connectTimeout), read: .init(configuration.blockTimeout)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: configuration.connectionsPerPeer)
        )
        http.httpVersion = .http1Only
        http.decompression = .disabled
        client = HTTPClient(eventLoopGroupProvider: .shared(eventLoops), configuration: http)
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

    /// One request to one peer, waiting at most `blockTimeout` (plus a little for the HTTP client to notice).
    public func fetch(_ id: PeerBlockID, from peer: PeerAddress, into buffer: UnsafeMutableRawBufferPointer) -> PeerFetchOutcome {
        counters.requests.add(1, ordering: .relaxed)
        var headers = HTTPHeaders()
        headers.add(name: "X-Cachefs-Instance", value: configuration.instanceID)
        if let token = configuration.token { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: "http://\(peer.authority)\(id.requestPath)", method: .GET, headers: headers)
        } catch {
            return .failed("bad request URL: \(error)")
        }
        let receiver = BlockReceiver(destination: buffer)
        let timeout = configuration.blockTimeout
        let task = client.execute(request: request, delegate: receiver, deadline: .now() + .init(timeout))
        let finished = DispatchSemaphore(value: 0)
        let result = Mutex<Result<PeerFetchOutcome, any Error>?>(nil)
        task.futureResult.whenComplete { outcome in
            result.withLock { $0 = outcome }
            finished.signal()
        }
        let (seconds, attoseconds) = (timeout + .milliseconds(250)).components
        let waited = finished.wait(timeout: .now() + .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)))
        // From here on the receiver writes nothing more into `buffer`, whatever the HTTP client still does.
        receiver.detach()
        guard waited == .success else {
            task.cancel()
            return .failed("no answer within \(timeout)")
        }
        switch result.withLock({ $0! }) {
        case .success(let outcome): return outcome
        case .failure(let error): return .failed("\(error)")
        }
    }

    /// Closes connections and stops the event loops; `fetch` must not be called afterwards.
    public func shutdown() {
        try? client.syncShutdown()
        try? eventLoops.syncShutdownGracefully()
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

/// Writes a response body straight into the block's memory, checking length and CRC-32C as it arrives.
///
/// Runs on the HTTP client's event loop; `detach` (from the fetching thread)
/// takes the lock, so once it returns no byte is written to the destination.
final class BlockReceiver: HTTPClientResponseDelegate {
    typealias Response = PeerFetchOutcome

    /// @unchecked: the pointer is only used under the lock, while the fetching thread owns the memory.
    private struct State: @unchecked Sendable {
        var destination: UnsafeMutableRawBufferPointer?
        var status: UInt = 0
        var expectedChecksum: CRC32CChecksum?
        var checksum = CRC32CChecksum()
        var received = 0
        var problem: String?
    }

    private let state: Mutex<State>

    init(destination: UnsafeMutableRawBufferPointer) {
        state = Mutex(State(destination: destination))
    }

    func detach() { state.withLock { $0.destination = nil } }

    func didReceiveHead(task: HTTPClient.Task<Response>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        state.withLock { state in
            state.status = head.status.code
            guard head.status == .ok, let destination = state.destination else { return }
            guard let length = head.headers.first(name: "Content-Length").flatMap(Int.init), length == destination.count else {
                state.problem = "length \(head.headers.first(name: "Content-Length") ?? "missing"), expected \(destination.count)"
                return
            }
            guard let checksum = head.headers.first(name: "X-Cachefs-CRC32C").flatMap(CRC32CChecksum.init(hex:)) else {
                state.problem = "no X-Cachefs-CRC32C header"
                return
            }
            state.expectedChecksum = checksum
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Response>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        state.withLock { state in
            guard state.status == 200, state.problem == nil, let destination = state.destination else { return }
            guard state.received + buffer.readableBytes <= destination.count else {
                state.problem = "body longer than \(destination.count) bytes"
                return
            }
            buffer.withUnsafeReadableBytes { bytes in
                let target = UnsafeMutableRawBufferPointer(rebasing: destination[state.received..<(state.received + bytes.count)])
                target.copyMemory(from: bytes)
                state.checksum.update(UnsafeRawBufferPointer(target))
            }
            state.received += buffer.readableBytes
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Response>) throws -> Response {
        state.withLock { state in
            switch state.status {
            case 200:
                if let problem = state.problem { return .failed(problem) }
                guard let destination = state.destination else { return .failed("abandoned") }
                guard state.received == destination.count else { return .failed("short body: \(state.received) of \(destination.count) bytes") }
                guard state.checksum == state.expectedChecksum else { return .failed("CRC-32C mismatch") }
                return .block(state.received)
            case 404: return .notFound
            case 508: return .isSelf
            case 401, 403: return .failed("token refused (HTTP \(state.status))")
            default: return .failed("HTTP \(state.status)")
            }
        }
    }
}
