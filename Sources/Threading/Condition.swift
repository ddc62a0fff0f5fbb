#if canImport(Glibc)
import Glibc
#endif

/// State that threads wait on: a value behind a pthread mutex, with a condition variable
/// (on CLOCK_MONOTONIC) that wakes waiters when the value changes.
///
/// This is the daemon's one way to wait for another thread: state nobody waits on is a
/// `Mutex` (or an `Atomic` for a counter or a flag); state a thread waits on is a
/// `Condition`. (Dispatch's semaphores and groups, and Foundation's `NSCondition`, are not
/// used outside the peer layer; see ARCHITECTURE's concurrency section.)
///
/// Like `Mutex`, the lock is held only for the closures given to it, never across I/O, and
/// it is not recursive: a closure must not call back into the same condition.
public final class Condition<State>: @unchecked Sendable {
    // @unchecked: `state` is read and written only with `mutex` held.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC) // deadlines do not move with the wall clock
        pthread_cond_init(changed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` on the state with the lock held; waiters are not woken.
    public func withLock<Result>(_ body: (inout State) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }

    /// Runs `body` on the state with the lock held, then wakes every waiter to look at it again.
    public func update<Result>(_ body: (inout State) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        return try body(&state)
    }

    /// Waits until `ready` returns a value, and returns it; nil if `deadline` came first.
    /// `ready` runs with the lock held: at once, then each time the state is updated.
    public func wait<Result>(until deadline: ContinuousClock.Instant? = nil, for ready: (inout State) throws -> Result?) rethrows -> Result?
    {
        let wakeAt = deadline.map(Self.monotonicTime)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let result = try ready(&state) { return result }
            if var wakeAt {
                if pthread_cond_timedwait(changed, mutex, &wakeAt) == ETIMEDOUT { return try ready(&state) }
            } else {
                pthread_cond_wait(changed, mutex)
            }
        }
    }

    /// A ContinuousClock instant as CLOCK_MONOTONIC time, the clock the condition variable waits on.
    private static func monotonicTime(_ instant: ContinuousClock.Instant) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let remaining = max(.zero, instant - .now).components
        var nanoseconds = Int(now.tv_nsec) + Int(remaining.attoseconds / 1_000_000_000)
        let seconds = Int(now.tv_sec) + Int(remaining.seconds) + nanoseconds / 1_000_000_000
        nanoseconds %= 1_000_000_000
        return timespec(tv_sec: seconds, tv_nsec: nanoseconds)
    }
}

extension Condition where State == Bool {
    /// Sets the flag and wakes its waiters: a one-shot event.
    public func set() { update { $0 = true } }

    /// Waits until the flag is set; false if `deadline` came first.
    public func waitUntilSet(until deadline: ContinuousClock.Instant? = nil) -> Bool {
        wait(until: deadline) { $0 ? true : nil } ?? false
    }
}
