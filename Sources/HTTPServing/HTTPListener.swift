import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Where an HTTP server listens: a TCP address (port 0 for any free one) or a Unix socket path.
public enum ListenTarget: Sendable, CustomStringConvertible {
    case tcp(HostPort)
    case unixSocket(String)

    public var description: String {
        switch self {
        case .tcp(let address): "\(address)"
        case .unixSocket(let path): path
        }
    }
}

/// An HTTP/1.1 server on SwiftNIO: the one HTTP stack of the daemon, under the
/// control socket, the metrics endpoint and the peer server. Each accepted
/// connection gets NIO's server pipeline (with its error handling, which answers
/// malformed HTTP with 400) and a handler from `makeHandler`, which receives
/// `HTTPServerRequestPart`s and writes `HTTPServerResponsePart`s.
///
/// Runs as a ServiceLifecycle service: listens until graceful shutdown or
/// cancellation, then closes the listener and every open connection.
///
/// Threads: the handlers run on the connection's event loop (`MultiThreadedEventLoopGroup.singleton`).
public struct HTTPListener: Service {
    let target: ListenTarget
    let idleTimeout: Duration?
    let makeHandler: @Sendable () -> any ChannelHandler
    let onRunning: @Sendable (_ boundPort: Int?) async throws -> Void

    /// - Parameters:
    ///   - idleTimeout: a connection that neither sends nor receives anything for this long is closed; nil keeps it.
    ///   - onRunning: called once the server listens, with the bound TCP port (nil for a Unix socket); if it
    ///     throws, the listener closes and `run` throws that.
    public init(
        target: ListenTarget, idleTimeout: Duration? = nil,
        makeHandler: @escaping @Sendable () -> any ChannelHandler,
        onRunning: @escaping @Sendable (_ boundPort: Int?) async throws -> Void = { _ in }
    ) {
        self.target = target
        self.idleTimeout = idleTimeout
        self.makeHandler = makeHandler
        self.onRunning = onRunning
    }

    public func run() async throws {
        let connections = OpenConnections()
        let (makeHandler, idleTimeout) = (self.makeHandler, self.idleTimeout.map(TimeAmount.init))
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                connections.add(channel)
                return channel.eventLoop.makeCompletedFuture {
                    if let idleTimeout { try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                    if idleTimeout != nil { try channel.pipeline.syncOperations.addHandler(CloseWhenIdle()) }
                }
            }
        let listener: any Channel
        switch target {
        case .tcp(let address):
            listener = try await bootstrap.childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .bind(host: address.host, port: address.port).get()
        case .unixSocket(let path):
            listener = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        do {
            try await onRunning(listener.localAddress?.port)
        } catch {
            try? await listener.close()
            throw error
        }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await listener.closeFuture.get()
            } onGracefulShutdown: {
                listener.close(promise: nil)
            }
        } onCancel: {
            listener.close(promise: nil)
        }
        connections.closeAll()
    }
}

/// Closes a connection on NIO's idle event; last in the pipeline, so handlers before it may act first.
private final class CloseWhenIdle: ChannelInboundHandler {
    typealias InboundIn = Never

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// The server's accepted connections, so that shutdown can close the kept-alive ones.
final class OpenConnections: Sendable {
    /// The open connections. Lock order: a leaf; connections are closed outside it.
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        channels.withLock { $0[key] = channel }
        channel.closeFuture.whenComplete { [weak self] _ in self?.channels.withLock { _ = $0.removeValue(forKey: key) } }
    }

    func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }
}

extension ChannelHandlerContext {
    /// Writes a whole response; closes the connection after it unless `keepAlive`.
    public func sendResponse(_ status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer?, keepAlive: Bool) {
        sendResponse(status, headers: headers, body: body.map(IOData.byteBuffer), keepAlive: keepAlive)
    }

    /// The same with any body, a file region included (sent with sendfile(2)); `written` runs once the
    /// response has been written or has failed, when the body's memory may be let go.
    public func sendResponse(
        _ status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: IOData?, keepAlive: Bool,
        written: (@Sendable () -> Void)? = nil
    ) {
        sendResponse(status, headers: headers, bodyParts: body.map { [$0] } ?? [], keepAlive: keepAlive, written: written)
    }

    /// The same with a body in parts, sent one after another (buffers and file regions alike).
    public func sendResponse(
        _ status: HTTPResponseStatus, headers: HTTPHeaders = [:], bodyParts: [IOData], keepAlive: Bool,
        written: (@Sendable () -> Void)? = nil
    ) {
        var headers = headers
        headers.replaceOrAdd(name: "Content-Length", value: String(bodyParts.reduce(0) { $0 + $1.readableBytes }))
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        for part in bodyParts { write(NIOAny(HTTPServerResponsePart.body(part)), promise: nil) }
        let promise = eventLoop.makePromise(of: Void.self)
        writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: promise)
        let channel = channel
        promise.futureResult.whenComplete { _ in
            written?()
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
