import HTTPServing
import NIOCore

/// Serves Prometheus text at `GET /metrics` on a TCP address (`--metrics HOST:PORT`).
///
/// `render` runs for each scrape off the event loop's critical work; it must be quick and never block on I/O.
public enum MetricsServer {
    public static func make(
        address: HostPort,
        render: @escaping @Sendable () -> String,
        onRunning: @escaping @Sendable (_ boundPort: Int) async -> Void
    ) -> HTTPListener {
        HTTPListener(
            target: .tcp(address),
            idleTimeout: .seconds(60),
            makeHandler: {
                RespondingHandler { request in
                    guard request.target == "/metrics" else { return .text(.notFound, "only /metrics is served here") }
                    guard request.method == .GET else { return .text(.methodNotAllowed, "GET only") }
                    return .response(.ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: ByteBuffer(string: render()))
                }
            },
            onRunning: { port in await onRunning(port ?? address.port) }
        )
    }
}
