import DequeModule
import Dispatch
import Foundation
import Synchronization
import SystemPackage

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
/// completes or times out.
public final class SourceCallPool: Sendable {
    public let timeout: Duration
    public let maximumThreads: Int
    private let idleExit: Duration
    private let state = Mutex(State())
    private let queued = DispatchSemaphore(value: 0)
    private let timeouts = Atomic<UInt64>(0)

    private struct State: ~Copyable {
        var calls = Deque<Call>()
        var threads = 0
        var idle = 0
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

    /// Runs `work` on a pool thread and returns its result, or throws `ETIMEDOUT` once `timeout` has passed.
    ///
    /// `work` may go on running after a timeout: it must own (retain) everything
    /// it touches, and its result is then dropped.
    public func run<Result: Sendable>(_ work: @escaping @Sendable () throws(Errno) -> Result) throws(Errno) -> Result {
        let call = Call(work)
        let startThread = state.withLock { state in
            state.calls.append(call)
            guard state.calls.count > state.idle, state.threads < maximumThreads else { return false }
            state.threads += 1
            return true
        }
        if startThread {
            let thread = Thread { [self] in serve() }
            thread.name = "cachefs-source"
            thread.start()
        }
        queued.signal()
        guard call.done.wait(timeout: .now() + timeout / .seconds(1)) == .success else {
            call.abandoned.store(true, ordering: .relaxed)
            timeouts.add(1, ordering: .relaxed)
            throw Errno.timedOut
        }
        return try call.outcome.withLock { $0! }.get() as! Result
    }

    private func serve() {
        while true {
            state.withLock { $0.idle += 1 }
            let signalled = queued.wait(timeout: .now() + idleExit / .seconds(1)) == .success
            let call: Call? = state.withLock { state in
                state.idle -= 1
                if let call = state.calls.popFirst() { return call }
                if !signalled { state.threads -= 1 }
                return nil
            }
            guard let call else {
                if signalled { continue } // another thread took the call this signal was for
                return
            }
            guard !call.abandoned.load(ordering: .relaxed) else { continue }
            call.outcome.withLock { $0 = call.work() }
            call.done.signal()
        }
    }

    private final class Call: Sendable {
        let work: @Sendable () -> Swift.Result<any Sendable, Errno>
        let outcome = Mutex<Swift.Result<any Sendable, Errno>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let abandoned = Atomic<Bool>(false)

        init<Result: Sendable>(_ work: @escaping @Sendable () throws(Errno) -> Result) {
            self.work = {
                do throws(Errno) { return .success(try work()) } catch { return .failure(error) }
            }
        }
    }
}
