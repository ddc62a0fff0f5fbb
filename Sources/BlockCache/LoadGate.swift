import SystemPackage
import Threading

/// Lets loads into block memory run, or stops new ones and waits for those running: a daemon
/// handing its cache to another must not write a byte into a memory file once the other may
/// have read its ledger. A load refused at the gate fails with EAGAIN, like any failed load
/// (not cached; prefetch drops it, a warm request reports it).
final class LoadGate: Sendable {
    /// Whether loads may start, and how many are running; guards nothing else, never held around I/O.
    /// `close` waits on it for the running loads to leave. Lock order: after the cache's `state`; a leaf.
    private let state = Condition<(open: Bool, running: Int)>((true, 0))

    func enter() throws(Errno) {
        let entered = state.withLock { state in
            guard state.open else { return false }
            state.running += 1
            return true
        }
        guard entered else { throw .resourceTemporarilyUnavailable }
    }

    func leave() { state.update { $0.running -= 1 } }

    /// Stops new loads and waits until none runs, or `deadline`; returns whether none runs.
    func close(waitingUntil deadline: ContinuousClock.Instant) -> Bool {
        state.withLock { $0.open = false }
        return state.wait(until: deadline) { $0.running == 0 ? true : nil } ?? false
    }

    func open() { state.withLock { $0.open = true } }
}
