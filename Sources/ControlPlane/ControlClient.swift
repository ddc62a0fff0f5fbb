import AsyncHTTPClient
import Foundation
import NIOCore

public struct ControlError: Error, CustomStringConvertible {
    public let description: String

    public init(description: String) { self.description = description }
}

/// Talks to a running daemon's control socket.
public struct ControlClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    public func stats() async throws -> StatsReport {
        try await send(HTTPClientRequest(url: url("stats")), timeout: .seconds(5))
    }

    public func planWarm(_ request: WarmPlanRequest) async throws -> WarmPlan {
        try await post("warm/plan", request, timeout: .seconds(300))
    }

    /// One range may wait on a slow source for a long time: the timeout is generous.
    public func warm(_ request: WarmRangeRequest) async throws -> WarmRangeResult {
        try await post("warm", request, timeout: .seconds(3600))
    }

    public func unpin(_ request: UnpinRequest) async throws -> UnpinResult {
        try await post("unpin", request, timeout: .seconds(300))
    }

    private func url(_ path: String) -> String {
        let encodedSocket = socketPath.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? socketPath
        return "http+unix://\(encodedSocket)/\(path)"
    }

    private func post<Body: Encodable, Answer: Decodable>(_ path: String, _ body: Body, timeout: TimeAmount) async throws -> Answer {
        var request = HTTPClientRequest(url: url(path))
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(body)))
        return try await send(request, timeout: timeout)
    }

    private func send<Answer: Decodable>(_ request: HTTPClientRequest, timeout: TimeAmount) async throws -> Answer {
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw ControlError(description: "no cachefs daemon answers at \(socketPath)")
        }
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: timeout)
        } catch {
            throw ControlError(description: "cannot reach the cachefs daemon at \(socketPath): \(error)")
        }
        let body = try await response.body.collect(upTo: 16 << 20)
        guard response.status == .ok else {
            let reason = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ControlError(description: reason.isEmpty ? "the cachefs daemon answered \(response.status)" : reason)
        }
        return try JSONDecoder().decode(Answer.self, from: Data(buffer: body))
    }
}
