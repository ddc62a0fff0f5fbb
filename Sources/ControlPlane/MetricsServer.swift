import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// Serves Prometheus text at `GET /metrics` on a TCP address (`--metrics HOST:PORT`).
///
/// `render` runs on a SwiftNIO event loop for each scrape: it must be quick and never block on I/O.
public enum MetricsServer {
    public static func make(
        host: String,
        port: Int,
        render: @escaping @Sendable () -> String,
        onRunning: @escaping @Sendable (_ boundPort: Int) async -> Void,
        logger: Logger
    ) -> some Service {
        let router = Router()
        router.get("metrics") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: render()))
            )
        }
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "cachefs"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? port) },
            logger: logger
        )
    }
}

/// A `HOST:PORT` to listen on: `127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:0` (any free port).
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
