/// Tells sequential reading from random reading in one open file.
///
/// The kernel splits a sequential read into requests that worker threads may
/// deliver slightly out of order, so a read counts as sequential when it starts
/// near where the previous one ended, not only exactly there.
public struct SequentialDetector: Sendable {
    /// How far (in bytes) a read may start from the previous end and still continue the run.
    public let tolerance: Int64
    /// Sequential reads needed before the run is trusted.
    public let threshold: Int
    /// Where the run's next read would start (-1 before the first read).
    public private(set) var nextOffset: Int64 = -1
    private var run = 0

    public init(tolerance: Int64, threshold: Int = 2) {
        self.tolerance = tolerance
        self.threshold = threshold
    }

    /// Whether a read at `offset` would continue the run.
    public func continues(offset: Int64) -> Bool {
        nextOffset >= 0 && abs(offset - nextOffset) <= tolerance
    }

    /// Whether the last read recorded was judged sequential.
    public var isSequential: Bool { run >= threshold - 1 }

    /// Records a read that skipped ahead inside the run's prefetch window: the run goes on from there.
    public mutating func recordSkip(offset: Int64, length: Int) -> Bool {
        run += 1
        nextOffset = max(offset + Int64(length), nextOffset)
        return isSequential
    }

    /// Records a read; returns true while the file is being read sequentially.
    public mutating func record(offset: Int64, length: Int) -> Bool {
        let continues = continues(offset: offset)
        // A read from the start of the file is how sequential loads begin.
        run = continues ? run + 1 : (offset == 0 ? threshold - 1 : 0)
        nextOffset = max(offset + Int64(length), continues ? nextOffset : 0)
        return run >= threshold - 1 && (continues || offset == 0)
    }
}
