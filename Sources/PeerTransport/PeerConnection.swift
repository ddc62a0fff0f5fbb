import Dispatch
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Kept-alive HTTP/1.1 connections to peers, each carrying one block exchange at a time.
///
/// Built on SwiftNIO's HTTP/1.1 codec rather than a general HTTP client because a
/// block is a whole response of known length: the channel reads up to
/// `receiveBufferSize` bytes at a time (NIO's default tops out at 64 KiB), and one
/// handler copies each body part straight into the block's memory, with no
/// per-request URL parsing, task or promise chain (Docs/PEERS.md has the measurement).
///
/// Threads: `checkout`, `checkin` and `exchange` are called by the fetching threads
/// (FUSE workers, prefetch lanes), which block; everything else runs on the group's
/// event loops.
final class PeerConnectionPool: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let idle = Mutex<[PeerAddress: [PeerConnection]]>([:])
    private let maximumIdlePerPeer: Int
    private let connectTimeout: TimeAmount
    private let receiveBufferSize: Int

    init(eventLoopThreads: Int, maximumIdlePerPeer: Int, connectTimeout: Duration, receiveBufferSize: Int) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: eventLoopThreads)
        self.maximumIdlePerPeer = maximumIdlePerPeer
        self.connectTimeout = TimeAmount(connectTimeout)
        self.receiveBufferSize = receiveBufferSize
    }

    /// An idle connection to `peer` if one is still open, else a new one (bounded by the connect timeout).
    func checkout(_ peer: PeerAddress) throws -> (connection: PeerConnection, reused: Bool) {
        while let connection = idle.withLock({ $0[peer]?.popLast() }) {
            if connection.channel.isActive { return (connection, true) }
        }
        let receiveBufferSize = receiveBufferSize
        let channel = try ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            // One read per wake-up, so a connection keeps at most one receive buffer.
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: receiveBufferSize, maximum: receiveBufferSize)
            )
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(leftOverBytesStrategy: .fireError)
                    try channel.pipeline.syncOperations.addHandler(BlockResponseHandler())
                }
            }
            .connect(host: peer.host, port: peer.port)
            .wait()
        // A kept connection that either side closes leaves the pool at once, so peers that
        // have gone away (scaled in, restarted) leave no entries behind.
        channel.closeFuture.whenComplete { [weak self] _ in self?.forget(channel, of: peer) }
        return (PeerConnection(channel: channel, authority: peer.authority), false)
    }

    private func forget(_ channel: any Channel, of peer: PeerAddress) {
        idle.withLock { idle in
            idle[peer]?.removeAll { $0.channel === channel }
            if idle[peer]?.isEmpty == true { idle[peer] = nil }
        }
    }

    /// Idle connections kept for `peer` (for tests).
    func idleCount(for peer: PeerAddress) -> Int { idle.withLock { $0[peer]?.count ?? 0 } }

    /// Keeps a connection whose last exchange completed, for the next block from that peer.
    func checkin(_ connection: PeerConnection, to peer: PeerAddress) {
        let kept = idle.withLock { idle -> Bool in
            // Checked under the lock that `forget` takes, so a connection closing now is either refused here or forgotten after.
            guard connection.channel.isActive, idle[peer, default: []].count < maximumIdlePerPeer else { return false }
            idle[peer, default: []].append(connection)
            return true
        }
        if !kept { connection.close() }
    }

    /// Closes every connection and stops the event loops.
    func shutdown() {
        let connections = idle.withLock { idle in
            defer { idle = [:] }
            return Array(idle.values.joined())
        }
        for connection in connections { connection.close() }
        try? group.syncShutdownGracefully()
    }
}

/// One open connection to a peer.
struct PeerConnection: Sendable {
    let channel: any Channel
    /// The `Host` header.
    let authority: String

    /// Sends `GET target` and waits at most `timeout` for the whole response to land in `receiver`.
    ///
    /// Returns nil when the deadline passed; the receiver is detached first either way,
    /// so no byte reaches its destination after this returns.
    func exchange(target: String, headers: HTTPHeaders, receiver: BlockReceiver, timeout: Duration) -> PeerFetchOutcome? {
        var headers = headers
        headers.replaceOrAdd(name: "Host", value: authority)
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target, headers: headers)
        channel.writeAndFlush(BlockRequest(head: head, receiver: receiver)).whenFailure { error in
            receiver.fail("sending the request: \(error)")
        }
        let outcome = receiver.wait(timeout: timeout)
        receiver.detach()
        return outcome
    }

    func close() { channel.close(promise: nil) }
}

/// What the fetching thread writes into the channel: the request, and where its response goes.
struct BlockRequest: Sendable {
    var head: HTTPRequestHead
    var receiver: BlockReceiver
}

/// Passes each response part to the receiver of the request in flight. Event loop only.
final class BlockResponseHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = BlockRequest
    typealias OutboundOut = HTTPClientRequestPart

    private var receiver: BlockReceiver?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        receiver = request.receiver
        context.write(wrapOutboundOut(.head(request.head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            receiver?.receiveHead(
                status: head.status.code,
                contentLength: head.headers.first(name: "Content-Length"),
                checksum: head.headers.first(name: "X-Cachefs-CRC32C"),
                keepAlive: head.isKeepAlive
            )
        case .body(let part):
            part.withUnsafeReadableBytes { receiver?.receiveBody($0) }
        case .end:
            receiver?.finish()
            receiver = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        receiver?.fail("connection closed")
        receiver = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        receiver?.fail("\(error)")
        receiver = nil
        context.close(promise: nil)
    }
}

/// Writes a response body straight into the block's memory, checking length and CRC-32C as it arrives.
///
/// The event loop calls `receive…`, `finish` and `fail`; the fetching thread calls
/// `wait` and then `detach`, which takes the lock, so once it returns no byte is
/// written to the destination whatever the connection still delivers.
final class BlockReceiver: Sendable {
    /// @unchecked: the pointer is only used under the lock, while the fetching thread owns the memory.
    private struct State: @unchecked Sendable {
        var destination: UnsafeMutableRawBufferPointer?
        var status: UInt = 0
        var expectedChecksum: CRC32CChecksum?
        var checksum = CRC32CChecksum()
        var received = 0
        var problem: String?
        var keepAlive = false
        var outcome: PeerFetchOutcome?

        var isFailure: Bool { if case .failed = outcome { true } else { false } }
    }

    private let state: Mutex<State>
    private let done = DispatchSemaphore(value: 0)

    init(destination: UnsafeMutableRawBufferPointer) {
        state = Mutex(State(destination: destination))
    }

    /// Whether the connection may carry another exchange: the response ended cleanly and the server keeps it open.
    var isReusable: Bool { state.withLock { $0.outcome != nil && $0.keepAlive && !$0.isFailure } }

    /// Whether anything of a response arrived (a failure before it is worth one retry on a fresh connection).
    var receivedResponse: Bool { state.withLock { $0.status != 0 } }

    func receiveHead(status: UInt, contentLength: String?, checksum: String?, keepAlive: Bool) {
        state.withLock { state in
            state.status = status
            state.keepAlive = keepAlive
            guard status == 200, let destination = state.destination else { return }
            guard let length = contentLength.flatMap(Int.init), length == destination.count else {
                state.problem = "length \(contentLength ?? "missing"), expected \(destination.count)"
                return
            }
            guard let checksum = checksum.flatMap(CRC32CChecksum.init(hex:)) else {
                state.problem = "no X-Cachefs-CRC32C header"
                return
            }
            state.expectedChecksum = checksum
        }
    }

    func receiveBody(_ bytes: UnsafeRawBufferPointer) {
        state.withLock { state in
            guard state.status == 200, state.problem == nil, let destination = state.destination else { return }
            guard state.received + bytes.count <= destination.count else {
                state.problem = "body longer than \(destination.count) bytes"
                return
            }
            let target = UnsafeMutableRawBufferPointer(rebasing: destination[state.received..<(state.received + bytes.count)])
            target.copyMemory(from: bytes)
            state.checksum.update(UnsafeRawBufferPointer(target))
            state.received += bytes.count
        }
    }

    func finish() {
        complete { state in
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

    func fail(_ reason: String) {
        complete { _ in .failed(reason) }
    }

    /// The outcome, or nil if none came within `timeout`.
    func wait(timeout: Duration) -> PeerFetchOutcome? {
        guard done.wait(timeout: .now() + timeout / .seconds(1)) == .success else { return nil }
        return state.withLock { $0.outcome }
    }

    func detach() { state.withLock { $0.destination = nil } }

    /// Records the first outcome only, and wakes the fetching thread once.
    private func complete(_ decide: (inout State) -> PeerFetchOutcome) {
        let first = state.withLock { state -> Bool in
            guard state.outcome == nil else { return false }
            state.outcome = decide(&state)
            return true
        }
        if first { done.signal() }
    }
}
