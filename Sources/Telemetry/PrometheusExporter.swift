import Metrics
import MirrorFS
import Prometheus
import Synchronization

/// The daemon's metrics as Prometheus text, through swift-metrics with
/// swift-prometheus as its backend.
///
/// Counters and gauges are brought up to date from the daemon's own statistics
/// when scraped, so they cost the read path nothing; only read latency is
/// recorded as it happens (`ReadTelemetry`).
///
/// Threads: `render` may be called from any thread; scrapes are serialized.
public final class PrometheusExporter: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let state = Mutex(State())
    private let gauges: [String: Metrics.Gauge]

    private struct State {
        var counters: [String: Metrics.Counter] = [:]
        var exported: [String: UInt64] = [:]
    }

    /// Latency buckets from a page-cache-speed read (microseconds) to a stalled source (seconds).
    public static let latencyBuckets: [Duration] = [
        .microseconds(5), .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100),
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    private static let gaugeNames = [
        "cachefs_capacity_bytes", "cachefs_resident_bytes", "cachefs_resident_blocks", "cachefs_reserved_bytes",
        "cachefs_pinned_bytes", "cachefs_pinned_files", "cachefs_pinned_resident_bytes", "cachefs_known_nodes",
    ]

    /// Bootstraps the process-wide `MetricsSystem`: call once, before making `ReadTelemetry`.
    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[ReadTelemetry.latencyLabel] = Self.latencyBuckets
        MetricsSystem.bootstrap(factory)
        gauges = Dictionary(uniqueKeysWithValues: Self.gaugeNames.map { ($0, Metrics.Gauge(label: $0)) })
    }

    /// Updates the counters and gauges from `statistics` and `tiers`, and returns the exposition text.
    public func render(statistics: MirrorStatistics, tiers: [ReadTelemetry.TierTotals]) -> String {
        let cache = statistics.cache
        var totals: [(String, [(String, String)], UInt64)] = [
            ("cachefs_cache_hits_total", [], cache.hits),
            ("cachefs_cache_misses_total", [], cache.misses),
            ("cachefs_cache_coalesced_misses_total", [], cache.coalescedMisses),
            ("cachefs_source_bytes_total", [], statistics.origins.fromSource),
            ("cachefs_source_errors_total", [], statistics.sourceErrors),
            ("cachefs_evictions_total", [], cache.evictions),
            ("cachefs_evicted_bytes_total", [], cache.evictedBytes),
            ("cachefs_read_requests_total", [], statistics.readRequests),
            ("cachefs_prefetched_blocks_total", [], statistics.prefetch?.loadedBlocks ?? 0),
            ("cachefs_prefetch_skipped_blocks_total", [], statistics.prefetch?.cancelledBlocks ?? 0),
        ]
        for tier in tiers {
            totals.append(("cachefs_read_bytes_total", [("tier", tier.tier.description)], tier.bytes))
        }
        let gaugeValues: [String: Int] = [
            "cachefs_capacity_bytes": cache.capacity, "cachefs_resident_bytes": cache.residentBytes,
            "cachefs_resident_blocks": cache.residentBlocks, "cachefs_reserved_bytes": cache.reservedBytes,
            "cachefs_pinned_bytes": cache.pinnedBytes, "cachefs_pinned_files": cache.pinnedFiles,
            "cachefs_pinned_resident_bytes": cache.pinnedResidentBytes, "cachefs_known_nodes": statistics.knownNodes,
        ]
        return state.withLock { state in
            for (label, dimensions, total) in totals {
                let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
                let counter = state.counters[key] ?? Metrics.Counter(label: label, dimensions: dimensions)
                state.counters[key] = counter
                let previous = state.exported[key] ?? 0
                if total > previous { counter.increment(by: total - previous) }
                state.exported[key] = max(previous, total)
            }
            for (name, value) in gaugeValues { gauges[name]?.record(value) }
            return registry.emitToString()
        }
    }
}
