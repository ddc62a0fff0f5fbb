#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import HTTPServing
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Serves this instance's resident blocks to peers over HTTP/1.1:
///
///     GET /v1/block/<block size>/<index>/<file size>/<mtime ns>/<percent-encoded path>
///     Authorization: Bearer <token>          (when a token is configured)
///
///     200  the block's bytes; Content-Length and X-Cachefs-CRC32C (8 hex digits)
///     404  not resident here (never read from the source on a peer's behalf), or another version
///     400  malformed, or a path that is absolute, has `..`, `.` or empty components
///     401  no token; 403 wrong token; 405 not GET; 414 request path too long
///     508  the request came from this very instance (X-Cachefs-Instance is ours)
///
/// Built on SwiftNIO's HTTP/1.1 server pipeline, with one handler that answers on
/// the connection's event loop: a block whose file version was checked within the
/// last second (`quickLookup`) is answered there, without a hop to another thread;
/// only a lookup that must stat the source (`lookup`) runs on NIO's blocking thread
/// pool. A block is sent with sendfile(2) from its version's memory file, or copied
/// when it lives in anonymous memory (files under one block; Docs/PEERS.md).
public enum PeerServer {
    public static let checksumHeaderName = "X-Cachefs-CRC32C"
    public static let instanceHeaderName = "X-Cachefs-Instance"

    /// - Parameters:
    ///   - lookup: the resident block for an ID, or nil; must not read the source's data. Called on a pool thread.
    ///   - quickLookup: answers without any I/O where it can (called on an event loop); nil sends every request to `lookup`.
    ///   - idleTimeout: a connection that neither sends nor receives anything for this long is closed
    ///     (clients reconnect; their pools forget connections the server closes).
    ///   - onRunning: called with the bound port once the server listens (port 0 picks a free one).
    public static func make(
        address: HostPort,
        token: String?,
        instanceID: String,
        counters: PeerServerCounters,
        lookup: @escaping @Sendable (PeerBlockID) -> Block?,
        quickLookup: (@Sendable (PeerBlockID) -> ResidencyAnswer)? = nil,
        idleTimeout: Duration = .seconds(60),
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        logger: Logger
    ) -> HTTPListener {
        let responder = PeerResponder(
            token: token.map { Array($0.utf8) }, instanceID: instanceID, counters: counters,
            lookup: lookup, quickLookup: quickLookup, logger: logger
        )
        return HTTPListener(
            target: .tcp(address), idleTimeout: idleTimeout,
            makeHandler: { PeerRequestHandler(responder: responder) },
            onRunning: { port in await onRunning(port ?? address.port) }
        )
    }
}

/// Counters of what this instance served to peers; read by `cachefs stats`.
public final class PeerServerCounters: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let servedBlocks = Atomic<UInt64>(0)
    public let servedBytes = Atomic<UInt64>(0)
    public let notResident = Atomic<UInt64>(0)
    /// Malformed, unsafe, unauthorized or non-GET requests.
    public let refused = Atomic<UInt64>(0)

    public init() {}
}

/// What to answer a request, decided from its head alone.
enum PeerRequestDecision {
    case refuse(HTTPResponseStatus, HTTPHeaders)
    case lookUp(PeerBlockID)
}

/// Validates requests and finds their blocks; shared by every connection's handler.
struct PeerResponder: Sendable {
    let token: [UInt8]?
    let instanceID: String
    let counters: PeerServerCounters
    let lookup: @Sendable (PeerBlockID) -> Block?
    let quickLookup: (@Sendable (PeerBlockID) -> ResidencyAnswer)?
    let logger: Logger

    func decide(_ head: HTTPRequestHead) -> PeerRequestDecision {
        counters.requests.add(1, ordering: .relaxed)
        guard head.method == .GET else { return refuse(.methodNotAllowed, ["Allow": "GET"]) }
        if let token {
            guard let authorization = head.headers.first(name: "Authorization") else {
                return refuse(.unauthorized, ["WWW-Authenticate": "Bearer"])
            }
            guard Self.bearerMatches(authorization, token: token) else { return refuse(.forbidden) }
        }
        if head.headers.first(name: PeerServer.instanceHeaderName) == instanceID {
            return refuse(.custom(code: 508, reasonPhrase: "Loop Detected"))
        }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        do {
            return .lookUp(try PeerBlockID(requestPath: path))
        } catch {
            logger.debug("refused peer request", metadata: ["error": "\(error)"])
            return refuse(error == .tooLong ? .uriTooLong : .badRequest)
        }
    }

    private func refuse(_ status: HTTPResponseStatus, _ headers: HTTPHeaders = [:]) -> PeerRequestDecision {
        counters.refused.add(1, ordering: .relaxed)
        return .refuse(status, headers)
    }

    /// The block to send, if resident in full at the requested length.
    func servable(_ block: Block?, for id: PeerBlockID) -> Block? {
        guard let block, block.count == id.expectedLength else {
            counters.notResident.add(1, ordering: .relaxed)
            return nil
        }
        counters.servedBlocks.add(1, ordering: .relaxed)
        counters.servedBytes.add(UInt64(block.count), ordering: .relaxed)
        return block
    }

    /// Compares in time independent of where the tokens differ, so timing does not reveal a prefix.
    static func bearerMatches(_ authorization: String, token: [UInt8]) -> Bool {
        let scheme = Array("Bearer ".utf8)
        let presented = Array(authorization.utf8)
        guard presented.count == scheme.count + token.count else { return false }
        var difference: UInt8 = 0
        for (index, byte) in presented.enumerated() {
            let expected = index < scheme.count ? scheme[index] : token[index - scheme.count]
            difference |= byte ^ expected
        }
        return difference == 0
    }
}

/// One connection's requests, answered in order (NIO's pipelining handler holds the next
/// request back until this one's response has ended). Event loop only.
final class PeerRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let responder: PeerResponder
    private var head: HTTPRequestHead?

    init(responder: PeerResponder) { self.responder = responder }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break  // a GET has none; anything else is refused by its head
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let id: PeerBlockID
        switch responder.decide(head) {
        case .refuse(let status, let headers):
            return send(status, headers: headers, body: nil, keepAlive: head.isKeepAlive, context: context)
        case .lookUp(let wanted): id = wanted
        }
        switch responder.quickLookup?(id) ?? .undetermined {
        case .resident(let block): return sendBlock(responder.servable(block, for: id), head: head, context: context)
        case .absent: return sendBlock(responder.servable(nil, for: id), head: head, context: context)
        case .undetermined: break
        }
        let lookup = responder.lookup
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { lookup(id) }.whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let block):
                handler.sendBlock(handler.responder.servable(block, for: id), head: head, context: context)
            case .failure:
                handler.send(.serviceUnavailable, headers: [:], body: nil, keepAlive: false, context: context)
            }
        }
    }

    /// Sends a block: from its version's memory file with sendfile(2) where it has one (no copy
    /// in this process), else from its memory. The block is held until the write is done, so its
    /// range cannot be given back (punched) while the kernel still sends from it.
    private func sendBlock(_ block: Block?, head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard let block else { return send(.notFound, headers: [:], body: nil, keepAlive: head.isKeepAlive, context: context) }
        let checksum = withExtendedLifetime(block) { CRC32CChecksum(value: block.digest { CRC32CChecksum(of: $0).value }) }
        let headers: HTTPHeaders = ["Content-Type": "application/octet-stream", PeerServer.checksumHeaderName: checksum.hex]
        if let (descriptor, offset) = block.fileRange, case let copy = dup(descriptor), copy >= 0 {
            let file = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: copy)
            let region = FileRegion(fileHandle: file, readerIndex: Int(offset), endIndex: Int(offset) + block.count)
            context.sendResponse(.ok, headers: headers, body: .fileRegion(region), keepAlive: head.isKeepAlive) {
                withExtendedLifetime(block) { try? file.close() }
            }
            return
        }
        let body = withExtendedLifetime(block) {
            var body = context.channel.allocator.buffer(capacity: block.count)
            body.writeBytes(block.bytes)
            return body
        }
        send(.ok, headers: headers, body: body, keepAlive: head.isKeepAlive, context: context)
    }

    private func send(_ status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer?, keepAlive: Bool, context: ChannelHandlerContext) {
        context.sendResponse(status, headers: headers, body: body, keepAlive: keepAlive)
    }
}
