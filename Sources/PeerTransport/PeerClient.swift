import Synchronization

/// Exchanges with one peer at a time for threads that must block (FUSE workers, prefetch
/// lanes, loads for peers): a run of blocks received straight into their memory, or a
/// holdings query. Which peer to ask is `PeerFleet`'s business.
///
/// Every exchange runs on the calling thread over a pooled kept-alive connection and is
/// bounded: connecting by `connectTimeout`, a transfer by `blockTimeout` per block, and an
/// owner's load, before its answer starts, by `ownerTimeout`.
///
/// Thread safety: any number of threads may call at once; each exchange has a connection to itself.
public final class PeerClient: Sendable {
    public struct Configuration: Sendable {
        public var token: String?
        /// Sent in X-Cachefs-Instance; a server that finds its own ID answers 508.
        public var instanceID: String
        public var connectTimeout: Duration = .milliseconds(200)
        /// One block's transfer, from sending the request to its last byte; a run of n blocks gets n times this.
        public var blockTimeout: Duration = .milliseconds(1500)
        /// How long an owner may take to load blocks from its source for this instance before the
        /// answer must start; past it, this instance reads its own source.
        public var ownerTimeout: Duration = .seconds(10)
        /// Idle connections kept per peer for the next exchange.
        public var idleConnectionsPerPeer = 16
        /// Connections open to one peer at once; an exchange beyond them waits for one to be free.
        public var connectionsPerPeer = 64

        public init(token: String?, instanceID: String) {
            self.token = token
            self.instanceID = instanceID
        }
    }

    public let configuration: Configuration
    public let counters = PeerClientCounters()
    public let health: PeerHealth
    private let connections: PeerConnectionPool
    /// The header lines every request carries after its request line and Host.
    private let commonHeaders: String

    public init(configuration: Configuration, health: PeerHealth = PeerHealth()) {
        self.configuration = configuration
        self.health = health
        connections = PeerConnectionPool(
            maximumIdlePerPeer: configuration.idleConnectionsPerPeer, maximumPerPeer: configuration.connectionsPerPeer,
            connectTimeout: configuration.connectTimeout
        )
        var headers = "\(PeerResponseHeaders.instance): \(configuration.instanceID)\r\n"
        if let token = configuration.token { headers += "Authorization: Bearer \(token)\r\n" }
        commonHeaders = headers
    }

    /// Asks `peer` for the blocks of `range` and receives those it sends into `targets` (one per
    /// block, in order), each checked for length and CRC-32C before this returns. With `ownerLoad`,
    /// the peer is asked as the blocks' owner, to load from its source those it lacks.
    public func fetch(_ range: PeerBlockRange, ownerLoad: Bool, from peer: PeerAddress, into targets: ArraySlice<ReceiveTarget>)
        -> PeerFetchOutcome
    {
        precondition(targets.count >= range.count && range.count > 0)
        counters.requests.add(1, ordering: .relaxed)
        let transfer = configuration.blockTimeout * range.count
        let outcome = exchange(
            .blocks(range, ownerLoad: ownerLoad), with: peer,
            answerWithin: ownerLoad ? configuration.ownerTimeout + transfer : transfer
        ) { (socket, head, leftover) throws(PeerExchangeError) in
            guard head.status == 200 else { return Self.unsuccessful(head.status) }
            let sent = head[PeerResponseHeaders.blockCount].map { Int($0) } ?? 1 // a server before runs sends one block
            guard let sent, (1...range.count).contains(sent) else {
                throw .failed("block count \(head[PeerResponseHeaders.blockCount] ?? "")")
            }
            let blocks = range.prefix(sent)
            guard let checksums = head[PeerResponseHeaders.checksums].flatMap(PeerResponseHeaders.parseChecksumList),
                checksums.count == sent
            else {
                throw .failed("no X-Cachefs-CRC32C for \(sent) blocks")
            }
            guard head.contentLength == blocks.byteCount else {
                throw .failed("length \(head.contentLength.map(String.init) ?? "missing"), expected \(blocks.byteCount)")
            }
            let deadline = ContinuousClock.now + configuration.blockTimeout * sent
            for (offset, index) in blocks.indices.enumerated() {
                let received = try socket.receiveBlock(
                    into: targets[targets.startIndex + offset], length: range.file.length(ofBlock: index),
                    leftover: &leftover, deadline: deadline)
                guard received == checksums[offset] else { throw .failed("CRC-32C mismatch in block \(index)") }
            }
            return .blocks(count: sent, checksums: checksums.map(\.value))
        }
        if case .blocks(let count, _) = outcome {
            counters.blocks.add(UInt64(count), ordering: .relaxed)
            counters.bytes.add(UInt64(range.prefix(count).byteCount), ordering: .relaxed)
        }
        return outcome
    }

    /// Which blocks of `file` `peer` holds in memory now; an empty map when it holds none of this
    /// version (or is a server from before holdings queries).
    public func holdings(of file: PeerFile, from peer: PeerAddress) -> PeerHoldingsOutcome {
        counters.holdingsQueries.add(1, ordering: .relaxed)
        let outcome: PeerFetchOutcome
        var bitmap = BlockBitmap(blockCount: file.blockCount)
        outcome = exchange(.holdings(file), with: peer, answerWithin: configuration.blockTimeout) {
            (socket, head, leftover) throws(PeerExchangeError) in
            guard head.status == 200 else { return head.status == 400 ? .notFound : Self.unsuccessful(head.status) }
            guard let length = head.contentLength, length == bitmap.bytes.count else {
                throw .failed("holdings of \(head.contentLength ?? -1) bytes")
            }
            var bytes = [UInt8](repeating: 0, count: length)
            let fromLeftover = min(length, leftover.count)
            bytes.replaceSubrange(0..<fromLeftover, with: leftover.prefix(fromLeftover))
            leftover = leftover.dropFirst(fromLeftover)
            try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(PeerExchangeError) in
                    try socket.receiveAll(
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[fromLeftover...]), deadline: .now + configuration.blockTimeout)
                }
            }.get()
            bitmap = BlockBitmap(bytes: bytes, blockCount: file.blockCount)!
            return .blocks(count: 0, checksums: [])
        }
        switch outcome {
        case .blocks: return .holds(bitmap)
        case .notFound: return .holds(BlockBitmap(blockCount: file.blockCount))
        case .isSelf: return .isSelf
        case .declined(let status): return .failed("HTTP \(status)")
        case .failed(let reason): return .failed(reason)
        case .timedOut: return .failed("no answer in time")
        }
    }

    /// The outcome of an answer other than 200, whose body (if any) has been read.
    private static func unsuccessful(_ status: Int) -> PeerFetchOutcome {
        switch status {
        case 404: .notFound
        case 508: .isSelf
        case 409, 502, 503: .declined(status)
        case 401, 403: .failed("token refused (HTTP \(status))")
        default: .failed("HTTP \(status)")
        }
    }

    /// Sends `request` to `peer` and hands the answer's head to `read`, which receives the body
    /// (or returns an outcome for an answer without one, whose body is then skipped).
    ///
    /// A kept-alive connection that the peer closed meanwhile fails before any answer arrives; that
    /// is worth one more try on a new connection, within the same deadline, not a failure.
    private func exchange(
        _ request: PeerRequest, with peer: PeerAddress, answerWithin limit: Duration,
        read: (PeerSocket, ResponseHead, inout ArraySlice<UInt8>) throws(PeerExchangeError) -> PeerFetchOutcome
    ) -> PeerFetchOutcome {
        let deadline = ContinuousClock.now + limit
        let message = Array("GET \(request.target) HTTP/1.1\r\nHost: \(peer)\r\n\(commonHeaders)\r\n".utf8)
        var retried = false
        while true {
            let socket: PeerSocket, reused: Bool
            do {
                (socket, reused) = try connections.checkout(peer, deadline: deadline)
            } catch {
                return error.kind == .timedOut ? .timedOut : .failed("connecting: \(error)")
            }
            var answered = false
            do {
                try socket.send(message, deadline: deadline)
                var (head, leftover) = try socket.receiveHead(deadline: deadline)
                answered = true
                let outcome = try read(socket, head, &leftover)
                var reusable = head.keepsConnection
                if head.status != 200 {
                    // An answer without blocks has a short body, if any: read it so the connection can be kept.
                    if let length = head.contentLength, length <= 64 << 10 {
                        try socket.discard(length, leftover: &leftover, deadline: deadline)
                    } else {
                        reusable = false
                    }
                }
                if reusable, leftover.isEmpty { connections.checkin(socket, to: peer) } else { connections.discard(socket) }
                return outcome
            } catch {
                connections.discard(socket)
                if reused, !answered, !retried, error.kind == .closed {
                    retried = true
                    continue
                }
                return error.kind == .timedOut ? .timedOut : .failed(error.description)
            }
        }
    }

    /// Idle connections kept for `peer` (for tests).
    func idleConnections(to peer: PeerAddress) -> Int { connections.idleCount(for: peer) }

    /// Closes the idle connections; exchanges must not be started afterwards.
    public func shutdown() { connections.shutdown() }
}

public enum PeerFetchOutcome: Sendable, Equatable {
    /// The first `count` blocks of the range, verified (length and CRC-32C), with their checksums.
    case blocks(count: Int, checksums: [UInt32])
    /// The peer does not hold the first block (or that version of the file).
    case notFound
    /// The peer is this instance.
    case isSelf
    /// The peer answered but will not serve this now (409: it waits for these blocks itself; 502: its
    /// source failed; 503: it is shutting down): not its fault, no backoff.
    case declined(Int)
    /// The peer is unreachable or misbehaved: refused connection, bad length or checksum, refused token.
    case failed(String)
    /// No complete answer within the deadline.
    case timedOut
}

public enum PeerHoldingsOutcome: Sendable, Equatable {
    case holds(BlockBitmap)
    case isSelf
    case failed(String)
}

/// Counters of this instance's exchanges with peers; read by `cachefs stats`.
public final class PeerClientCounters: Sendable {
    /// Block requests sent.
    public let requests = Atomic<UInt64>(0)
    /// Blocks received and verified, and their bytes.
    public let blocks = Atomic<UInt64>(0)
    public let bytes = Atomic<UInt64>(0)
    public let holdingsQueries = Atomic<UInt64>(0)

    public init() {}
}
