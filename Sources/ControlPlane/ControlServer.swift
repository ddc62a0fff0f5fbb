import Dispatch
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// Serves the daemon's control API on a Unix socket:
///
///     GET  /stats       the StatsReport, as JSON
///     POST /warm/plan, /warm, /unpin   see WarmAPI.swift
///
/// Requests arrive on SwiftNIO's event loops; work that may block on the
/// source runs on a dispatch queue of its own, so the loops never wait for I/O.
public enum ControlServer {
    public static func make(
        socketPath: String,
        handler: some ControlHandler,
        onRunning: @escaping @Sendable () async -> Void,
        logger: Logger
    ) throws -> some Service {
        try prepareSocketPath(socketPath)
        let router = Router()
        router.get("stats") { _, _ -> Response in
            try json(handler.stats())
        }
        router.post("warm/plan") { request, _ -> Response in
            let body = try await decode(WarmPlanRequest.self, from: request)
            return try await respond { () throws(ControlRequestError) in try handler.planWarm(body) }
        }
        router.post("warm") { request, _ -> Response in
            let body = try await decode(WarmRangeRequest.self, from: request)
            return try await respond { () throws(ControlRequestError) in try handler.warm(body) }
        }
        router.post("unpin") { request, _ -> Response in
            let body = try await decode(UnpinRequest.self, from: request)
            return try await respond { () throws(ControlRequestError) in try handler.unpin(body) }
        }
        return Application(
            router: router,
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "cachefs"),
            onServerRunning: { _ in
                chmod(socketPath, 0o600)
                await onRunning()
            },
            logger: logger
        )
    }

    /// Blocking work: several warm requests run at once, each on its own thread.
    private static let workQueue = DispatchQueue(label: "cachefs.control.work", attributes: .concurrent)

    private static func respond<Body: Encodable & Sendable>(
        _ work: @escaping @Sendable () throws(ControlRequestError) -> Body
    ) async throws -> Response {
        let outcome: Result<Body, ControlRequestError> = await withCheckedContinuation { continuation in
            workQueue.async { continuation.resume(returning: Result { () throws(ControlRequestError) in try work() }) }
        }
        switch outcome {
        case .success(let body):
            return try json(body)
        case .failure(let error):
            return Response(
                status: .init(code: error.status),
                headers: [.contentType: "text/plain; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: error.message))
            )
        }
    }

    private static func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        let buffer = try await request.body.collect(upTo: 1 << 20)
        do {
            return try JSONDecoder().decode(type, from: Data(buffer: buffer))
        } catch {
            throw HTTPError(.badRequest, message: "malformed request body: \(error)")
        }
    }

    private static func json(_ value: some Encodable) throws -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: try JSONEncoder().encode(value)))
        )
    }

    /// Creates the socket's directory and removes a socket left by a daemon that died.
    static func prepareSocketPath(_ path: String) throws {
        var directory = ""
        for component in path.split(separator: "/").dropLast() {
            directory += "/" + component
            guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                throw ControlError(description: "cannot create \(directory): \(String(cString: strerror(errno)))")
            }
        }
        unlink(path)
    }
}
