import ControlPlane
import Logging
import ServiceLifecycle
import Telemetry

extension Daemon {
    /// The `--metrics` server: Prometheus text rendered from the daemon's statistics at each scrape.
    func makeMetricsService(_ exporter: PrometheusExporter, handler: DaemonControl, logger: Logger) -> any Service {
        let address = settings.metrics!
        return MetricsServer.make(
            address: address,
            render: { exporter.render(handler.stats()) },
            onRunning: { port in
                var bound = address
                bound.port = port
                handler.metricsAddress.withLock { $0 = bound.description }
                logger.info("metrics", metadata: ["url": "http://\(bound)/metrics"])
            }
        )
    }
}
