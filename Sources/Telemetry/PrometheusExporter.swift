import Metrics
import ControlPlane
import Prometheus
import Synchronization

/// The daemon's metrics as Prometheus text, through swift-metrics with
/// swift-prometheus as its backend.
///
/// Counters and gauges are the figures of the daemon's one statistics snapshot
/// (`StatsReport`, `Figure`), brought up to date at each scrape, so they cost the
/// read path nothing and carry the same names as `cachefs stats`; only read
/// latency is recorded as it happens (`ReadTelemetry`).
///
/// Threads: `render` may be called from any thread; scrapes are serialized.
public final class PrometheusExporter: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let exported = Mutex<[String: (counter: Metrics.Counter, total: UInt64)]>([:])
    private let gauges: [String: Metrics.Gauge]

    /// Latency buckets from a page-cache-speed read (microseconds) to a stalled source (seconds).
    public static let latencyBuckets: [Duration] = [
        .microseconds(5), .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100),
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    /// Bootstraps the process-wide `MetricsSystem`: call once, before making `ReadTelemetry`.
    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[ReadTelemetry.latencyLabel] = Self.latencyBuckets
        MetricsSystem.bootstrap(factory)
        let gauges = Figure.all.filter { $0.kind == .gauge }.map(\.prometheusName) + ["cachefs_capacity_bytes"]
        self.gauges = Dictionary(uniqueKeysWithValues: gauges.map { ($0, Metrics.Gauge(label: $0)) })
    }

    /// Updates the counters and gauges from `report` and returns the exposition text.
    public func render(_ report: StatsReport) -> String {
        exported.withLock { exported in
            for figure in Figure.all where report.has(figure) {
                let name = figure.prometheusName
                let value = report[figure]
                switch figure.kind {
                case .gauge:
                    gauges[name]?.record(Int64(clamping: value))
                case .counter:
                    let entry = exported[name] ?? (Metrics.Counter(label: name), 0)
                    if value > entry.total { entry.counter.increment(by: value - entry.total) }
                    exported[name] = (entry.counter, max(entry.total, value))
                }
            }
            gauges["cachefs_capacity_bytes"]?.record(report.settings.capacity)
            return registry.emitToString()
        }
    }
}
