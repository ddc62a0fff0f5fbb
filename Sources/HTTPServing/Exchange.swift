import NIOCore
import NIOHTTP1
import NIOPosix

/// A whole HTTP request or response, as the control socket and the metrics endpoint exchange them:
/// small bodies, read completely before they are answered.
public struct HTTPMessage: Sendable {
    public var method: HTTPMethod
    /// The request target (`/stats`); empty in a response.
    public var target: String
    /// The response status; `.ok` in a request.
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public static func request(_ method: HTTPMethod, _ target: String, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) -> Self
    {
        Self(method: method, target: target, status: .ok, headers: headers, body: body)
    }

    public static func response(_ status: HTTPResponseStatus, contentType: String, body: ByteBuffer) -> Self {
        Self(method: .GET, target: "", status: status, headers: ["Content-Type": contentType], body: body)
    }

    /// A plain-text answer, such as the one-line reason of a refused request.
    public static func text(_ status: HTTPResponseStatus, _ text: String) -> Self {
        response(status, contentType: "text/plain; charset=utf-8", body: ByteBuffer(string: text))
    }

    public var bodyText: String { String(buffer: body) }
}

/// Answers each request of a connection with `respond`, in order, once its body has
/// arrived (at most `maximumBodyBytes`; a larger one gets 413 and the connection closes).
/// `respond` runs as a Swift concurrency task, so it may wait for blocking work elsewhere.
public final class RespondingHandler: ChannelInboundHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    private let respond: @Sendable (HTTPMessage) async -> HTTPMessage
    private let maximumBodyBytes: Int
    private var request: HTTPMessage?
    private var keepAlive = true
    private var tooLarge = false

    public init(maximumBodyBytes: Int = 1 << 20, respond: @escaping @Sendable (HTTPMessage) async -> HTTPMessage) {
        self.respond = respond
        self.maximumBodyBytes = maximumBodyBytes
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = .request(head.method, head.uri, headers: head.headers)
            keepAlive = head.isKeepAlive
            tooLarge = false
        case .body(var part):
            guard !tooLarge, request != nil else { return }
            if (request?.body.readableBytes ?? 0) + part.readableBytes > maximumBodyBytes {
                tooLarge = true
                request = nil
            } else {
                request?.body.writeBuffer(&part)
            }
        case .end:
            if tooLarge {
                tooLarge = false
                return context.sendResponse(.payloadTooLarge, body: nil, keepAlive: false)
            }
            guard let request else { return }
            self.request = nil
            let (respond, keepAlive) = (self.respond, self.keepAlive)
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.makeFutureWithTask { await respond(request) }.whenSuccess { answer in
                loopBound.value.sendResponse(answer.status, headers: answer.headers, body: answer.body, keepAlive: keepAlive)
            }
        }
    }
}

/// Sends one request and returns the whole response: the control socket's client.
public enum HTTPExchange {
    public enum Failure: Error, CustomStringConvertible {
        case timedOut
        case closedEarly

        public var description: String {
            switch self {
            case .timedOut: "no answer within the time allowed"
            case .closedEarly: "the connection closed before the answer was complete"
            }
        }
    }

    /// Connects to a Unix socket, sends `request` and waits at most `timeout` for the answer.
    public static func send(_ request: HTTPMessage, toUnixSocket path: String, timeout: Duration) async throws -> HTTPMessage {
        let group = MultiThreadedEventLoopGroup.singleton
        let answer = group.any().makePromise(of: HTTPMessage.self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseCollector(answer: answer))
                    }
                }
                .connect(unixDomainSocketPath: path)
                .get()
        } catch {
            answer.fail(error) // no connection, so no collector to complete it (NIO traps on a promise left pending)
            throw error
        }
        defer { channel.close(promise: nil) }
        var headers = request.headers
        headers.replaceOrAdd(name: "Host", value: "localhost")
        headers.replaceOrAdd(name: "Content-Length", value: String(request.body.readableBytes))
        headers.replaceOrAdd(name: "Connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.target, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(request.body)), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) { answer.fail(Failure.timedOut) }
        defer { deadline.cancel() }
        return try await answer.futureResult.get()
    }
}

/// Collects one response and fulfils the promise with it.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let answer: EventLoopPromise<HTTPMessage>
    private var response: HTTPMessage?

    init(answer: EventLoopPromise<HTTPMessage>) { self.answer = answer }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = HTTPMessage(method: .GET, target: "", status: head.status, headers: head.headers, body: ByteBuffer())
        case .body(var part):
            response?.body.writeBuffer(&part)
        case .end:
            if let response { answer.succeed(response) }
            response = nil
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer.fail(HTTPExchange.Failure.closedEarly) // ignored once the answer is complete
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answer.fail(error)
        context.close(promise: nil)
    }
}
