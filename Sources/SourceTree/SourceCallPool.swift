import DequeModule
import Reporting
import Synchronization
import SystemPackage
import Threading

/// Runs blocking source calls on threads of its own, so that the caller stops
/// waiting after `timeout` while a stalled call (a hung NAS, a stuck
/// object-store mount) keeps only its pool thread.
///
/// Threads are started when more calls are queued than threads are idle, up to
/// `maximumThreads`, and leave after `idleExit` without work: a source that
/// stalls many calls and recovers shrinks back to a few threads. When every
/// thread is stuck, new calls wait in the queue and time out like the rest, and
/// a call whose caller gave up is skipped rather than started late.
///
/// Threads: `run` may be called from any thread and blocks it until the call
/// completes or times out. The pool's threads are its own: `stop` sends them away,
/// `join` joins them (a thread stuck in the source cannot be, and is named instead).
public final class SourceCallPool: Sendable {
    public let timeout: Duration
    public let maximumThreads: Int
    private let idleExit: Duration
    /// The queued calls and the threads' counts. Lock order: a leaf (a call's own `outcome` is
    /// taken only after this is released).
    private let state = Condition(State())
    private let threads = OwnedThreads()
    private let timeouts = Atomic<UInt64>(0)

    private struct State {
        var calls = Deque<any PoolCall>()
        var threads = 0
        var idle = 0
        var stopped = false
    }

    public init(timeout: Duration, maximumThreads: Int = 256, idleExit: Duration = .seconds(30)) {
        precondition(timeout > .zero && maximumThreads > 0)
        self.timeout = timeout
        self.maximumThreads = maximumThreads
        self.idleExit = idleExit
    }

    /// Calls that timed out since the pool was made.
    public var timedOutCalls: UInt64 { timeouts.load(ordering: .relaxed) }

    /// Threads alive now, busy or idle.
    public var threadCount: Int { state.withLock { $0.threads } }

    /// Runs `work` on a pool thread and returns its result, or throws `ETIMEDOUT` once `timeout` has
    /// passed (or at once, once the pool is stopped).
    ///
    /// `work` may go on running after a timeout: it must own (retain) everything
    /// it touches, and its result is then dropped.
    public func run<Result: Sendable>(_ work: @escaping @Sendable () throws(Errno) -> Result) throws(Errno) -> Result {
        let call = Call(work)
        let needed: Bool? = state.update { state in
            guard !state.stopped else { return nil }
            state.calls.append(call)
            guard state.calls.count > state.idle, state.threads < maximumThreads else { return false }
            state.threads += 1
            return true
        }
        guard let needed else { throw Errno.timedOut }
        if needed { threads.start(name: "source-call") { [self] in serve() } } // no thread idle for it
        guard let outcome = call.outcome.wait(until: .now + timeout, for: { $0 }) else {
            call.abandoned.store(true, ordering: .relaxed)
            timeouts.add(1, ordering: .relaxed)
            throw Errno.timedOut
        }
        return try outcome.get()
    }

    /// Sends the threads away: idle ones at once, busy ones when their call returns. Calls still
    /// queued are not started (their callers time out). For the daemon's shutdown, then `join`.
    public func stop() {
        state.update { $0.stopped = true }
    }

    /// Joins the threads that have left by `deadline`; returns the names of those still in a source call.
    @discardableResult
    public func join(until deadline: ContinuousClock.Instant? = nil) -> [String] {
        threads.join(until: deadline)
    }

    private enum Next {
        case run(any PoolCall)
        case leave
    }

    private func serve() {
        while true {
            let deadline = ContinuousClock.now + idleExit
            state.withLock { $0.idle += 1 }
            // Taking a call and leaving change the counts in the same hold of the lock as the decision,
            // so a caller never counts this thread idle while it is not (and starts none when it should).
            var next: Next?
            while next == nil {
                next = state.wait(until: deadline) { state -> Next? in
                    if !state.stopped, let call = state.calls.popFirst() {
                        state.idle -= 1
                        return .run(call)
                    }
                    guard state.stopped || ContinuousClock.now >= deadline else { return nil } // stopped, or idle for `idleExit`
                    state.idle -= 1
                    state.threads -= 1
                    return .leave
                }
            }
            guard case .run(let call) = next else { return }
            call.runUnlessAbandoned()
        }
    }
}

extension SourceCallPool: FigureReporter {
    public func report(into figures: inout FigureValues) {
        figures[.sourceTimeouts] = timedOutCalls
    }
}

/// A queued call, whatever its result type.
private protocol PoolCall: Sendable {
    /// Runs the work and hands its outcome to the caller, unless the caller has stopped waiting.
    func runUnlessAbandoned()
}

private final class Call<Result: Sendable>: PoolCall {
    let work: @Sendable () throws(Errno) -> Result
    /// The outcome once the work has run, which the caller waits for. Lock order: a leaf.
    let outcome = Condition<Swift.Result<Result, Errno>?>(nil)
    let abandoned = Atomic<Bool>(false)

    init(_ work: @escaping @Sendable () throws(Errno) -> Result) { self.work = work }

    func runUnlessAbandoned() {
        guard !abandoned.load(ordering: .relaxed) else { return }
        let result: Swift.Result<Result, Errno>
        do throws(Errno) { result = .success(try work()) } catch { result = .failure(error) }
        outcome.update { $0 = result }
    }
}
