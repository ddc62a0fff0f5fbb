import BlockCache
import HTTPServing
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the peer server needs from the mirror: blocks in memory, which ones, and loads for peers.
/// Only `loadForPeer` reads the source's data; nothing here ever asks another peer.
public protocol PeerBlockProvider: Sendable {
    /// The blocks of `range` in memory, from its first on, as many as lie in a row. Without
    /// `checkingSource`, answers only what it can tell without I/O (called on an event loop).
    func residentBlocks(_ range: PeerBlockRange, checkingSource: Bool) -> PeerResidency<[Block]>
    /// Which blocks of `file` are in memory. Without `checkingSource`, as above.
    func holdings(of file: PeerFile, checkingSource: Bool) -> PeerResidency<BlockBitmap>
    /// Loads the blocks of `range` not in memory from this instance's source, as their owner, for a
    /// peer (under the cache's miss coalescing, counted against the capacity like any load), and
    /// returns those of them from the first on that are loaded. Blocks a call on another thread.
    func loadForPeer(_ range: PeerBlockRange) -> PeerLoadAnswer
}

public enum PeerResidency<Value: Sendable>: Sendable {
    /// The file is this version here; `Value` is what is in memory of it (possibly nothing).
    case current(Value)
    /// The path is not a regular file of this version here.
    case otherVersion
    /// Telling needs I/O (checking the file's version at the source).
    case undetermined
}

public enum PeerLoadAnswer: Sendable {
    /// The blocks from the range's first on, and how many of their bytes this call loaded from the source.
    case blocks([Block], bytesFromSource: Int)
    case otherVersion
    /// The source failed (its errno, for the log).
    case failed(String)
}

/// Serves this instance's blocks to peers over HTTP/1.1 (Docs/PEERS.md):
///
///     GET /v1/block/<block size>/<first>/<file size>/<mtime ns>/<path>[?count=N][&load=owner]
///     GET /v1/holdings/<block size>/<file size>/<mtime ns>/<path>
///     Authorization: Bearer <token>          (when a token is configured)
///
///     200  blocks: the blocks in a row from the first, X-Cachefs-Blocks and X-Cachefs-CRC32C (one each);
///          holdings: a bitmap of the blocks in memory
///     404  not in memory here (and not asked as owner), or another version
///     409  asked as owner for a block this instance itself waits for from its owner
///     502  asked as owner, and this instance's source failed
///     400  malformed, or a path that is absolute, has `..`, `.` or empty components
///     401  no token; 403 wrong token; 405 not GET; 414 request target too long
///     508  the request came from this very instance (X-Cachefs-Instance is ours)
///
/// Built on SwiftNIO's HTTP/1.1 server pipeline. An answer that needs no I/O (the file's version was
/// checked within the last second) is given on the connection's event loop; one that must stat the
/// source runs on a small pool of its own (`lookupThreads`), and a load as owner on another
/// (`loadThreads`), so that a version check never queues behind loads, which can wait for the source
/// and for this instance's own loads in flight. The service starts both pools and joins them. Blocks
/// are sent with sendfile(2) from their version's memory file.
public struct PeerServer: Service {
    public static let defaultLoadThreads = 32
    public static let defaultLookupThreads = 4

    private let listener: HTTPListener
    private let pools: PeerServerPools

    /// - Parameters:
    ///   - fleet: this instance's view of the fleet, if it asks peers too: to decline owner requests for
    ///     blocks it awaits itself, and to load ahead the stripes it owns.
    ///   - loadThreads: threads for loads as owner; an owner serving many askers at once holds one per
    ///     request for the length of its source read (or of the load in flight it waits for).
    ///   - lookupThreads: threads for the version checks (a stat of the source) of requests the event loop
    ///     cannot answer.
    ///   - idleTimeout: a connection that neither sends nor receives anything for this long is closed.
    ///   - onRunning: called with the bound port once the server listens (port 0 picks a free one).
    public init(
        address: HostPort, token: String?, instanceID: String, counters: PeerServerCounters,
        provider: any PeerBlockProvider, fleet: PeerFleet? = nil, loadThreads: Int = PeerServer.defaultLoadThreads,
        lookupThreads: Int = PeerServer.defaultLookupThreads,
        idleTimeout: Duration = .seconds(60), onRunning: @escaping @Sendable (Int) async -> Void = { _ in }, logger: Logger
    ) {
        let pools = PeerServerPools(
            lookups: NIOThreadPool(numberOfThreads: lookupThreads), loads: NIOThreadPool(numberOfThreads: loadThreads))
        let responder = PeerResponder(
            token: token.map { Array($0.utf8) }, instanceID: instanceID, counters: counters,
            provider: provider, fleet: fleet, pools: pools, logger: logger
        )
        self.pools = pools
        listener = HTTPListener(
            target: .tcp(address), idleTimeout: idleTimeout,
            makeHandler: { PeerRequestHandler(responder: responder) },
            onRunning: { port in await onRunning(port ?? address.port) }
        )
    }

    public func run() async throws {
        pools.lookups.start()
        pools.loads.start()
        defer {
            pools.lookups.shutdownGracefully { _ in }
            pools.loads.shutdownGracefully { _ in }
        }
        try await listener.run()
    }
}

/// The server's threads for work that blocks; see `PeerServer`.
struct PeerServerPools: Sendable {
    let lookups: NIOThreadPool
    let loads: NIOThreadPool
}

/// Counters of what this instance served to peers; read by `cachefs stats`.
public final class PeerServerCounters: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let servedBlocks = Atomic<UInt64>(0)
    public let servedBytes = Atomic<UInt64>(0)
    /// Block requests for blocks not in memory here (not asked as owner), or of another version.
    public let notResident = Atomic<UInt64>(0)
    /// Malformed, unsafe, unauthorized or non-GET requests.
    public let refused = Atomic<UInt64>(0)
    public let holdingsServed = Atomic<UInt64>(0)
    /// Blocks loaded from this instance's source as their owner for peers (asked, or loaded ahead), and their bytes.
    public let blocksLoadedForPeers = Atomic<UInt64>(0)
    public let bytesLoadedForPeers = Atomic<UInt64>(0)

    public init() {}
}

/// What to answer a request, decided from its head alone.
enum PeerRequestDecision {
    case refuse(HTTPResponseStatus, HTTPHeaders)
    case serve(PeerRequest)
}

/// Validates requests and finds what they ask for; shared by every connection's handler.
struct PeerResponder: Sendable {
    let token: [UInt8]?
    let instanceID: String
    let counters: PeerServerCounters
    let provider: any PeerBlockProvider
    let fleet: PeerFleet?
    let pools: PeerServerPools
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
        if head.headers.first(name: PeerResponseHeaders.instance) == instanceID {
            return refuse(.custom(code: 508, reasonPhrase: "Loop Detected"))
        }
        do {
            return .serve(try PeerRequest(target: head.uri))
        } catch {
            logger.debug("refused peer request", metadata: ["error": "\(error)"])
            return refuse(error == .tooLong ? .uriTooLong : .badRequest)
        }
    }

    private func refuse(_ status: HTTPResponseStatus, _ headers: HTTPHeaders = [:]) -> PeerRequestDecision {
        counters.refused.add(1, ordering: .relaxed)
        return .refuse(status, headers)
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

    /// Loads the stripes this instance owns just ahead of `range` for the askers streaming the file,
    /// in the background on the work pool (nobody waits for them); see `PeerFleet.ownedStripesAhead`.
    func loadAhead(of range: PeerBlockRange, asOwner: Bool) {
        guard let fleet else { return }
        for stripe in fleet.ownedStripesAhead(of: range, asOwner: asOwner) {
            pools.loads.submit { [provider, counters] state in
                guard case .active = state, case .blocks(_, let loaded) = provider.loadForPeer(stripe) else { return }
                counters.countLoaded(bytes: loaded, blockSize: stripe.file.blockSize)
            }
        }
    }
}

extension PeerServerCounters {
    func countLoaded(bytes: Int, blockSize: Int) {
        guard bytes > 0 else { return }
        blocksLoadedForPeers.add(UInt64((bytes + blockSize - 1) / blockSize), ordering: .relaxed)
        bytesLoadedForPeers.add(UInt64(bytes), ordering: .relaxed)
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
        case .body: break // a GET has none; anything else is refused by its head
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        switch responder.decide(head) {
        case .refuse(let status, let headers):
            send(status, headers: headers, keepAlive: head.isKeepAlive, context: context)
        case .serve(.blocks(let range, let ownerLoad)):
            serveBlocks(range, ownerLoad: ownerLoad, head: head, context: context)
        case .serve(.holdings(let file)):
            serveHoldings(file, head: head, context: context)
        }
    }

    private func serveBlocks(_ range: PeerBlockRange, ownerLoad: Bool, head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (provider, responder) = (responder.provider, responder)
        let answer: @Sendable (PeerResidency<[Block]>, PeerRequestHandler, ChannelHandlerContext) -> Void = { found, handler, context in
            switch found {
            case .current(let blocks) where !blocks.isEmpty:
                responder.loadAhead(of: range, asOwner: ownerLoad)
                handler.sendBlocks(blocks, head: head, context: context)
            case .current where ownerLoad:
                handler.loadAsOwner(range, head: head, context: context)
            case .current, .otherVersion, .undetermined:
                responder.counters.notResident.add(1, ordering: .relaxed)
                handler.send(.notFound, keepAlive: head.isKeepAlive, context: context)
            }
        }
        let quick = provider.residentBlocks(range, checkingSource: false)
        guard case .undetermined = quick else { return answer(quick, self, context) }
        on(responder.pools.lookups, context: context) {
            provider.residentBlocks(range, checkingSource: true)
        } then: {
            answer($0, $1, $2)
        }
    }

    /// Loads the blocks from this instance's source for the asker, which named this instance their owner.
    private func loadAsOwner(_ range: PeerBlockRange, head: HTTPRequestHead, context: ChannelHandlerContext) {
        if responder.fleet?.isAwaitingOwner(range) == true {
            // This instance waits for these blocks from another owner: views of the fleet differ. The
            // asker reads its own source rather than wait on a wait.
            return send(.conflict, keepAlive: head.isKeepAlive, context: context)
        }
        let responder = responder
        on(responder.pools.loads, context: context) {
            responder.provider.loadForPeer(range)
        } then: { loaded, handler, context in
            switch loaded {
            case .blocks(let blocks, let bytesFromSource) where !blocks.isEmpty:
                responder.counters.countLoaded(bytes: bytesFromSource, blockSize: range.file.blockSize)
                responder.loadAhead(of: range, asOwner: true)
                handler.sendBlocks(blocks, head: head, context: context)
            case .blocks, .otherVersion:
                responder.counters.notResident.add(1, ordering: .relaxed)
                handler.send(.notFound, keepAlive: head.isKeepAlive, context: context)
            case .failed(let reason):
                responder.logger.notice("loading blocks for a peer failed", metadata: ["blocks": "\(range)", "error": "\(reason)"])
                handler.send(.badGateway, keepAlive: head.isKeepAlive, context: context)
            }
        }
    }

    private func serveHoldings(_ file: PeerFile, head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (provider, counters) = (responder.provider, responder.counters)
        let answer: @Sendable (PeerResidency<BlockBitmap>, PeerRequestHandler, ChannelHandlerContext) -> Void = { found, handler, context in
            guard case .current(let bitmap) = found else { return handler.send(.notFound, keepAlive: head.isKeepAlive, context: context) }
            counters.holdingsServed.add(1, ordering: .relaxed)
            let body = context.channel.allocator.buffer(bytes: bitmap.bytes)
            context.sendResponse(.ok, headers: ["Content-Type": "application/octet-stream"], body: body, keepAlive: head.isKeepAlive)
        }
        let quick = provider.holdings(of: file, checkingSource: false)
        guard case .undetermined = quick else { return answer(quick, self, context) }
        on(responder.pools.lookups, context: context) {
            provider.holdings(of: file, checkingSource: true)
        } then: {
            answer($0, $1, $2)
        }
    }

    /// Runs `work` on one of the server's pools and `then` back on this connection's event loop.
    private func on<Result: Sendable>(
        _ pool: NIOThreadPool, context: ChannelHandlerContext, _ work: @escaping @Sendable () -> Result,
        then: @escaping @Sendable (Result, PeerRequestHandler, ChannelHandlerContext) -> Void
    ) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        pool.runIfActive(eventLoop: context.eventLoop, work).whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let value): then(value, handler, context)
            case .failure: handler.send(.serviceUnavailable, keepAlive: false, context: context) // shutting down
            }
        }
    }

    /// Sends blocks in a row: from their version's memory file with sendfile(2) where they lie side by
    /// side in one (no copy in this process), else part by part. The blocks are held until the write is
    /// done, so their ranges cannot be given back (punched) while the kernel still sends from them.
    private func sendBlocks(_ blocks: [Block], head: HTTPRequestHead, context: ChannelHandlerContext) {
        let checksums = blocks.map { block in CRC32CChecksum(value: block.digest { CRC32CChecksum(of: $0).value }) }
        let headers: HTTPHeaders = [
            "Content-Type": "application/octet-stream",
            PeerResponseHeaders.blockCount: String(blocks.count),
            PeerResponseHeaders.checksums: PeerResponseHeaders.checksumList(checksums),
        ]
        var parts: [IOData] = []
        var opened: [NIOFileHandle] = []
        var index = 0
        while index < blocks.count {
            // The longest stretch from here whose blocks follow each other in one memory file.
            guard let (descriptor, offset) = blocks[index].fileRange, case let copy = dup(descriptor), copy >= 0 else {
                var body = context.channel.allocator.buffer(capacity: blocks[index].count)
                withExtendedLifetime(blocks[index]) { _ = body.writeBytes(blocks[index].bytes) }
                parts.append(.byteBuffer(body))
                index += 1
                continue
            }
            var end = offset + Int64(blocks[index].count)
            var next = index + 1
            while next < blocks.count, let (following, start) = blocks[next].fileRange, following == descriptor, start == end {
                end += Int64(blocks[next].count)
                next += 1
            }
            let file = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: copy)
            opened.append(file)
            parts.append(.fileRegion(FileRegion(fileHandle: file, readerIndex: Int(offset), endIndex: Int(end))))
            index = next
        }
        responder.counters.servedBlocks.add(UInt64(blocks.count), ordering: .relaxed)
        responder.counters.servedBytes.add(UInt64(blocks.reduce(0) { $0 + $1.count }), ordering: .relaxed)
        let held = HeldBlocks(blocks: blocks, files: opened)
        context.sendResponse(.ok, headers: headers, bodyParts: parts, keepAlive: head.isKeepAlive) { held.release() }
    }

    private func send(_ status: HTTPResponseStatus, headers: HTTPHeaders = [:], keepAlive: Bool, context: ChannelHandlerContext) {
        context.sendResponse(status, headers: headers, body: nil as ByteBuffer?, keepAlive: keepAlive)
    }
}

/// Blocks and the descriptors a response sends them from, kept until the response is written.
private final class HeldBlocks: @unchecked Sendable {
    // @unchecked: released once, on the event loop, after the write completed.
    private var blocks: [Block]
    private var files: [NIOFileHandle]

    init(blocks: [Block], files: [NIOFileHandle]) {
        self.blocks = blocks
        self.files = files
    }

    func release() {
        for file in files { try? file.close() }
        files = []
        blocks = []
    }
}
