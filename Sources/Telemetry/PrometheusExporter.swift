import ControlPlane
import Metrics
import Prometheus
import Reporting
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
    /// Each counter exported (by name and label) and the total it has been brought to. Lock order: a
    /// leaf; serializes scrapes.
    private let exported = Mutex<[CounterKey: (counter: Metrics.Counter, total: UInt64)]>([:])
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

    private struct CounterKey: Hashable {
        var name: String
        /// The label's name and value, for a figure with a value per label.
        var label: [String: String]
    }

    /// Updates the counters and gauges from `report` and returns the exposition text.
    public func render(_ report: StatsReport) -> String {
        exported.withLock { exported in
            for figure in Figure.all {
                if let value = report.figures[figure] {
                    switch figure.kind {
                    case .gauge: gauges[figure.prometheusName]?.record(Int64(clamping: value))
                    case .counter: advance(CounterKey(name: figure.prometheusName, label: [:]), to: value, in: &exported)
                    }
                } else if let label = figure.label, let values = report.figures[labelled: figure] {
                    for (labelValue, value) in values {
                        advance(CounterKey(name: figure.prometheusName, label: [label: labelValue]), to: value, in: &exported)
                    }
                }
            }
            gauges["cachefs_capacity_bytes"]?.record(report.settings.capacity)
            return registry.emitToString()
        }
    }

    /// Brings an exported counter up to a figure's total (counters only go up).
    private func advance(_ key: CounterKey, to value: UInt64, in exported: inout [CounterKey: (counter: Metrics.Counter, total: UInt64)]) {
        let entry = exported[key] ?? (Metrics.Counter(label: key.name, dimensions: key.label.map { ($0.key, $0.value) }), 0)
        if value > entry.total { entry.counter.increment(by: value - entry.total) }
        exported[key] = (entry.counter, max(entry.total, value))
    }
}
