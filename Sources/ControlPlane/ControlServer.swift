import Dispatch
import Foundation
import HTTPServing
import NIOCore
import NIOHTTP1

/// The daemon's control API on a Unix socket:
///
///     GET  /stats       the StatsReport, as JSON
///     POST /warm/plan, /warm, /unpin   see WarmAPI.swift
///     POST /list        see ListingAPI.swift
///     POST /restart     see RestartAPI.swift
///
/// Requests arrive on SwiftNIO's event loops; work that may block on the
/// source runs on a dispatch queue of its own, so the loops never wait for I/O.
public enum ControlServer {
    /// The listener for `socketPath` (its directory is created, a stale socket removed); run it as a service.
    public static func make(
        socketPath: String,
        handler: some ControlHandler,
        onRunning: @escaping @Sendable () async -> Void
    ) throws -> HTTPListener {
        try prepareSocketPath(socketPath)
        return HTTPListener(
            target: .unixSocket(socketPath),
            makeHandler: { RespondingHandler { request in await answer(request, handler: handler) } },
            onRunning: { _ in
                chmod(socketPath, 0o600)
                await onRunning()
            }
        )
    }

    static func answer(_ request: HTTPMessage, handler: some ControlHandler) async -> HTTPMessage {
        switch (request.method, request.target) {
        case (.GET, "/stats"):
            return await onWorkQueue { () throws(ControlRequestError) in handler.stats() }
        case (.POST, "/warm/plan"):
            return await decoding(WarmPlanRequest.self, request) { body throws(ControlRequestError) in try handler.planWarm(body) }
        case (.POST, "/warm"):
            return await decoding(WarmRangeRequest.self, request) { body throws(ControlRequestError) in try handler.warm(body) }
        case (.POST, "/unpin"):
            return await decoding(UnpinRequest.self, request) { body throws(ControlRequestError) in try handler.unpin(body) }
        case (.POST, "/list"):
            return await decoding(ListRequest.self, request) { body throws(ControlRequestError) in try handler.list(body) }
        case (.POST, "/restart"):
            return await onWorkQueue { () throws(ControlRequestError) in try handler.restart() }
        case (_, "/stats"), (_, "/warm/plan"), (_, "/warm"), (_, "/unpin"), (_, "/list"), (_, "/restart"):
            return .text(.methodNotAllowed, "method not allowed")
        default:
            return .text(.notFound, "no such control request: \(request.target)")
        }
    }

    private static func decoding<Body: Decodable & Sendable, Answer: Encodable & Sendable>(
        _ type: Body.Type, _ request: HTTPMessage,
        _ work: @escaping @Sendable (Body) throws(ControlRequestError) -> Answer
    ) async -> HTTPMessage {
        let body: Body
        do {
            body = try JSONDecoder().decode(type, from: Data(buffer: request.body))
        } catch {
            return .text(.badRequest, "malformed request body: \(error)")
        }
        return await onWorkQueue { () throws(ControlRequestError) in try work(body) }
    }

    /// Blocking work: several warm requests run at once, each on its own thread.
    private static let workQueue = DispatchQueue(label: "cachefs.control.work", attributes: .concurrent)

    private static func onWorkQueue<Answer: Encodable & Sendable>(
        _ work: @escaping @Sendable () throws(ControlRequestError) -> Answer
    ) async -> HTTPMessage {
        let outcome: Result<Answer, ControlRequestError> = await withCheckedContinuation { continuation in
            workQueue.async { continuation.resume(returning: Result { () throws(ControlRequestError) in try work() }) }
        }
        switch outcome {
        case .success(let answer):
            do {
                return .response(.ok, contentType: "application/json", body: ByteBuffer(bytes: try JSONEncoder().encode(answer)))
            } catch {
                return .text(.internalServerError, "cannot encode the answer: \(error)")
            }
        case .failure(let error):
            return .text(HTTPResponseStatus(statusCode: error.status), error.message)
        }
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
