#if canImport(Glibc)
import Glibc
#endif

/// A thread that takes `signals` with sigwait and hands each to `handle`, until `stop`. The signals
/// must be blocked in every thread (`block`, before any other thread exists), so that only this
/// one takes them.
public final class SignalListener: Sendable {
    private let thread: OwnedThread
    /// Set before the thread is woken to end. Lock order: a leaf.
    private let stopping = Condition(false)
    private let wake: Int32

    /// Blocks `signals` in the calling thread, and so in every thread it starts from now on.
    public static func block(_ signals: [Int32]) {
        var set = set(of: signals)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public init(name: String = "signals", signals: [Int32], _ handle: @escaping @Sendable (Int32) -> Void) {
        precondition(!signals.isEmpty)
        wake = signals[0]
        let (stopping, set) = (stopping, Self.set(of: signals))
        thread = OwnedThread(name: name) {
            var waitedFor = set
            while true {
                var received: Int32 = 0
                guard sigwait(&waitedFor, &received) == 0 else { continue }
                if stopping.withLock({ $0 }) { return } // woken by `stop`
                handle(received)
            }
        }
    }

    /// Wakes the thread from sigwait with one of its signals, telling it to end, and joins it.
    public func stop() {
        stopping.set()
        thread.send(wake)
        thread.join()
    }

    /// `signals` as a signal set, for sigwait or sigprocmask.
    public static func set(of signals: [Int32]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for number in signals { sigaddset(&set, number) }
        return set
    }
}
