import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Lets loads into block memory run, or stops new ones and waits for those running: a daemon
/// handing its cache to another must not write a byte into a memory file once the other may
/// have read its ledger. A load refused at the gate fails with EAGAIN, like any failed load
/// (not cached; prefetch drops it, a warm request reports it).
final class LoadGate: Sendable {
    /// Whether loads may start, and how many are running; guards nothing else, never held around I/O.
    /// Lock order: after the cache's `state`; a leaf.
    private let state = Mutex<(open: Bool, running: Int)>((true, 0))

    func enter() throws(Errno) {
        try state.withLock { (state) throws(Errno) in
            guard state.open else { throw .resourceTemporarilyUnavailable }
            state.running += 1
        }
    }

    func leave() { state.withLock { $0.running -= 1 } }

    /// Stops new loads and waits until none runs, or `deadline`; returns whether none runs.
    func close(waitingUntil deadline: ContinuousClock.Instant) -> Bool {
        state.withLock { $0.open = false }
        while state.withLock({ $0.running }) > 0 {
            guard ContinuousClock.now < deadline else { return false }
            usleep(2_000)
        }
        return true
    }

    func open() { state.withLock { $0.open = true } }
}
