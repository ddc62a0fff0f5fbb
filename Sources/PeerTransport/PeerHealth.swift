import Synchronization

/// Which peers to skip for now: a peer that failed (refused, timed out, sent a
/// bad block, refused our token) is skipped for `backoff`, then tried again;
/// each failure in a row doubles the pause, up to `maximumBackoff`. A 404 is
/// an answer, not a failure.
///
/// Thread safety: called from every thread that fetches blocks; one mutex, held briefly.
public final class PeerHealth: Sendable {
    public let backoff: Duration
    public let maximumBackoff: Duration
    private let clock: @Sendable () -> ContinuousClock.Instant
    /// Each failing peer's failures and backoff. Lock order: a leaf.
    private let states = Mutex<[PeerAddress: State]>([:])

    private struct State {
        var consecutiveFailures = 0
        var skipUntil: ContinuousClock.Instant
    }

    public init(
        backoff: Duration = .seconds(10), maximumBackoff: Duration = .seconds(60),
        clock: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.backoff = backoff
        self.maximumBackoff = maximumBackoff
        self.clock = clock
    }

    public func isAvailable(_ peer: PeerAddress) -> Bool {
        let now = clock()
        return states.withLock { states in
            guard let state = states[peer] else { return true }
            return now >= state.skipUntil
        }
    }

    public func recordSuccess(_ peer: PeerAddress) {
        states.withLock { _ = $0.removeValue(forKey: peer) }
    }

    public func recordFailure(_ peer: PeerAddress) {
        let now = clock()
        states.withLock { states in
            var state = states[peer] ?? State(skipUntil: now)
            state.consecutiveFailures += 1
            let pause = min(backoff * (1 << min(state.consecutiveFailures - 1, 16)), maximumBackoff)
            state.skipUntil = now + pause
            states[peer] = state
        }
    }

    /// Peers currently skipped.
    public var skippedCount: Int {
        let now = clock()
        return states.withLock { $0.values.count { now < $0.skipUntil } }
    }
}
