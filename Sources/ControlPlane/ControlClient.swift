import AsyncHTTPClient
import Foundation
import NIOCore

public struct ControlError: Error, CustomStringConvertible {
    public let description: String
}

/// Talks to a running daemon's control socket.
public struct ControlClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    public func stats() async throws -> StatsReport {
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw ControlError(description: "no cachefs daemon answers at \(socketPath)")
        }
        let encodedSocket = socketPath.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? socketPath
        let request = HTTPClientRequest(url: "http+unix://\(encodedSocket)/stats")
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(5))
        } catch {
            throw ControlError(description: "cannot reach the cachefs daemon at \(socketPath): \(error)")
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw ControlError(description: "the cachefs daemon answered \(response.status)")
        }
        return try JSONDecoder().decode(StatsReport.self, from: Data(buffer: body))
    }
}
