import BlockCache
import FuseBridge
import Metrics
import Reporting
import Synchronization

/// Counts reads by tier and, once metrics are enabled, records their latency
/// in a swift-metrics `Timer` per tier (a Prometheus histogram).
///
/// Threads: `didRead` runs on FUSE worker threads for every read. Per-tier
/// counts are relaxed atomics; the timer takes only its own tier's histogram
/// lock, and none at all while metrics are off.
public final class ReadTelemetry: ReadObserver {
    public static let latencyLabel = "cachefs_read_duration_seconds"

    private final class TierCounters: Sendable {
        let reads = Atomic<UInt64>(0)
        let bytes = Atomic<UInt64>(0)
    }

    private let counters: [TierCounters] // indexed by tier order
    private let timers: [Timer]?

    /// - Parameter recordLatency: create the latency timers; `MetricsSystem` must be bootstrapped first.
    public init(recordLatency: Bool) {
        counters = ReadTier.allCases.map { _ in TierCounters() }
        timers = recordLatency ? ReadTier.allCases.map { Timer(label: Self.latencyLabel, dimensions: [("tier", $0.description)]) } : nil
    }

    public func didRead(bytes: Int, tier: ReadTier, nanoseconds: UInt64) {
        let index = ReadTier.allCases.firstIndex(of: tier)!
        counters[index].reads.add(1, ordering: .relaxed)
        counters[index].bytes.add(UInt64(bytes), ordering: .relaxed)
        timers?[index].recordNanoseconds(Int64(truncatingIfNeeded: nanoseconds))
    }

    public struct TierTotals: Sendable, Equatable {
        public var tier: ReadTier
        public var reads: UInt64
        public var bytes: UInt64
    }

    /// Reads and bytes served from each tier since start, in tier order.
    public var totals: [TierTotals] {
        zip(ReadTier.allCases, counters).map { tier, counters in
            TierTotals(tier: tier, reads: counters.reads.load(ordering: .relaxed), bytes: counters.bytes.load(ordering: .relaxed))
        }
    }
}

extension ReadTelemetry: FigureReporter {
    public func report(into figures: inout FigureValues) {
        for total in totals {
            let (reads, bytes): (Figure, Figure) =
                switch total.tier {
                case .memory: (.memoryReads, .memoryReadBytes)
                case .peer: (.peerReads, .peerReadBytes)
                case .source: (.sourceReads, .sourceReadBytes)
                }
            figures[reads] = total.reads
            figures[bytes] = total.bytes
        }
    }
}
