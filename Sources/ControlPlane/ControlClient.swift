import Foundation
import HTTPServing
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

public struct ControlError: Error, CustomStringConvertible {
    public let description: String

    public init(description: String) { self.description = description }
}

/// Talks to a running daemon's control socket.
public struct ControlClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    public func stats() async throws -> StatsReport {
        try await send(.request(.GET, "/stats"), timeout: .seconds(5))
    }

    public func planWarm(_ request: WarmPlanRequest) async throws -> WarmPlan {
        try await post("/warm/plan", request, timeout: .seconds(300))
    }

    /// One range may wait on a slow source for a long time: the timeout is generous.
    public func warm(_ request: WarmRangeRequest) async throws -> WarmRangeResult {
        try await post("/warm", request, timeout: .seconds(3600))
    }

    public func unpin(_ request: UnpinRequest) async throws -> UnpinResult {
        try await post("/unpin", request, timeout: .seconds(300))
    }

    public func restart() async throws -> RestartAnswer {
        try await send(.request(.POST, "/restart"), timeout: .seconds(60))
    }

    public func list(_ request: ListRequest) async throws -> Listing {
        let answer: ListAnswer = try await post("/list", request, timeout: .seconds(300))
        guard let listing = answer.listing else { throw ControlError(description: "the cachefs daemon's listing is malformed") }
        return listing
    }

    private func post<Body: Encodable, Answer: Decodable>(_ target: String, _ body: Body, timeout: Duration) async throws -> Answer {
        let request = HTTPMessage.request(
            .POST, target, headers: ["Content-Type": "application/json"],
            body: ByteBuffer(bytes: try JSONEncoder().encode(body)))
        return try await send(request, timeout: timeout)
    }

    private func send<Answer: Decodable>(_ request: HTTPMessage, timeout: Duration) async throws -> Answer {
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw ControlError(description: "no cachefs daemon answers at \(socketPath)")
        }
        let response: HTTPMessage
        do {
            response = try await HTTPExchange.send(request, toUnixSocket: socketPath, timeout: timeout)
        } catch {
            throw ControlError(description: "cannot reach the cachefs daemon at \(socketPath): \(error)")
        }
        guard response.status == .ok else {
            let reason = response.bodyText.trimmingCharacters(in: .whitespacesAndNewlines)
            throw ControlError(description: reason.isEmpty ? "the cachefs daemon answered \(response.status)" : reason)
        }
        return try JSONDecoder().decode(Answer.self, from: response.body)
    }
}
