import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// Serves the daemon's control API on a Unix socket:
///
///     GET /stats    the StatsReport, as JSON
///
/// Requests run on SwiftNIO's event loops, never on FUSE threads; `report` must be thread safe.
public enum ControlServer {
    public static func make(
        socketPath: String,
        report: @escaping @Sendable () -> StatsReport,
        onRunning: @escaping @Sendable () async -> Void,
        logger: Logger
    ) throws -> some Service {
        try prepareSocketPath(socketPath)
        let router = Router()
        router.get("stats") { _, _ -> Response in
            let body = try JSONEncoder().encode(report())
            return Response(
                status: .ok,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: body))
            )
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
