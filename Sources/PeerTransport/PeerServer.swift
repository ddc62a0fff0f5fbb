import BlockCache
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
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
/// Requests run on SwiftNIO's event loops; `lookup` (which may stat the source)
/// and the copy of the block run on NIO's blocking thread pool.
public enum PeerServer {
    public static let checksumHeader = HTTPField.Name("X-Cachefs-CRC32C")!
    public static let instanceHeader = HTTPField.Name("X-Cachefs-Instance")!

    /// - Parameters:
    ///   - lookup: the resident block for an ID, or nil; must not read the source's data. Called on a pool thread.
    ///   - onRunning: called with the bound port once the server listens (port 0 picks a free one).
    public static func make(
        address: HostPort,
        token: String?,
        instanceID: String,
        counters: PeerServerCounters,
        lookup: @escaping @Sendable (PeerBlockID) -> Block?,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        logger: Logger
    ) -> some Service {
        let responder = PeerResponder(
            token: token.map { Array($0.utf8) }, instanceID: instanceID, counters: counters, lookup: lookup, logger: logger
        )
        return Application(
            responder: responder,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "cachefs-peer"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? address.port) },
            logger: logger
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

struct PeerResponder: HTTPResponder {
    typealias Context = BasicRequestContext

    let token: [UInt8]?
    let instanceID: String
    let counters: PeerServerCounters
    let lookup: @Sendable (PeerBlockID) -> Block?
    let logger: Logger

    func respond(to request: Request, context: Context) async throws -> Response {
        counters.requests.add(1, ordering: .relaxed)
        guard request.method == .get else { return refuse(.methodNotAllowed, headers: [.allow: "GET"]) }
        if let token {
            guard let authorization = request.headers[.authorization] else {
                return refuse(.unauthorized, headers: [.wwwAuthenticate: "Bearer"])
            }
            guard Self.bearerMatches(authorization, token: token) else { return refuse(.forbidden) }
        }
        if request.headers[PeerServer.instanceHeader] == instanceID { return refuse(.init(code: 508, reasonPhrase: "Loop Detected")) }
        let target = request.head.path ?? ""
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let id: PeerBlockID
        do {
            id = try PeerBlockID(requestPath: path)
        } catch {
            logger.debug("refused peer request", metadata: ["error": "\(error)"])
            return refuse(error == .tooLong ? .uriTooLong : .badRequest)
        }
        let lookup = lookup
        let found: (ByteBuffer, CRC32CChecksum)?
        do {
            found = try await NIOThreadPool.singleton.runIfActive {
                guard let block = lookup(id), block.count == id.expectedLength else { return nil }
                return withExtendedLifetime(block) {
                    var buffer = ByteBufferAllocator().buffer(capacity: block.count)
                    buffer.writeBytes(block.bytes)
                    return (buffer, CRC32CChecksum(value: block.digest { CRC32CChecksum(of: $0).value }))
                }
            }
        } catch {
            return Response(status: .serviceUnavailable)
        }
        guard let (body, checksum) = found else {
            counters.notResident.add(1, ordering: .relaxed)
            return Response(status: .notFound)
        }
        counters.servedBlocks.add(1, ordering: .relaxed)
        counters.servedBytes.add(UInt64(body.readableBytes), ordering: .relaxed)
        return Response(
            status: .ok,
            headers: [.contentType: "application/octet-stream", PeerServer.checksumHeader: checksum.hex],
            body: .init(byteBuffer: body)
        )
    }

    private func refuse(_ status: HTTPResponse.Status, headers: HTTPFields = [:]) -> Response {
        counters.refused.add(1, ordering: .relaxed)
        return Response(status: status, headers: headers)
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
