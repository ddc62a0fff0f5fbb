import CLinux
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A thread with an owner: started by its owner, stopped by it (each owner has its own way of
/// telling its thread to return: a flag and a wake-up, a closed queue), and joined by it, so that
/// nothing the thread uses is torn down under it. The daemon starts no thread any other way
/// (libfuse's workers and SwiftNIO's are owned and joined by those libraries).
///
/// Every owned thread is listed in `OwnedThread.unjoined` from its start until it is joined; the
/// daemon reports that list as it exits, so a thread whose owner forgot to join it shows.
public final class OwnedThread: Sendable {
    public let name: String
    private let thread: pthread_t
    /// Set when the body has returned. Lock order: last, after `OwnedThreads.threads`.
    private let finished = Condition(false)
    private let joined = Atomic<Bool>(false)

    /// Starts `body` on a new thread. `name` (at most 15 bytes are kept) is what `ps -L` and /proc show.
    public init(name: String, _ body: @escaping @Sendable () -> Void) {
        self.name = name
        let finished = self.finished
        let start = ThreadStart(name: name) {
            body()
            finished.set()
        }
        var thread = pthread_t()
        let context = Unmanaged.passRetained(start).toOpaque()
        let result = pthread_create(
            &thread, nil,
            { context in
                let start = Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue()
                cachefs_set_thread_name(start.name)
                start.body()
                return nil
            }, context)
        precondition(result == 0, "cannot start thread \(name): \(String(cString: strerror(result)))")
        self.thread = thread
        Self.registry.withLock { $0[ObjectIdentifier(self)] = name }
    }

    /// Waits until the thread's body has returned, then joins it; returns false (and leaves it
    /// running) if `deadline` comes first: a thread stuck in a system call (a read of a hung source)
    /// cannot be made to return, and the process may have to exit without it.
    @discardableResult
    public func join(until deadline: ContinuousClock.Instant? = nil) -> Bool {
        guard finished.waitUntilSet(until: deadline) else { return false }
        guard !joined.exchange(true, ordering: .acquiringAndReleasing) else { return true }
        pthread_join(thread, nil)
        Self.registry.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
        return true
    }

    /// Whether the thread's body has returned (it may not be joined yet).
    public var hasFinished: Bool { finished.withLock { $0 } }

    /// Sends a signal to this thread alone: how its owner wakes a thread blocked in `sigwait`.
    public func send(_ signal: Int32) {
        pthread_kill(thread, signal)
    }

    /// Threads started and not joined yet, by name. Lock order: a leaf.
    private static let registry = Mutex<[ObjectIdentifier: String]>([:])

    /// The names of the owned threads started and not yet joined, sorted.
    public static var unjoined: [String] { registry.withLock { $0.values.sorted() } }
}

/// A thread's name and body, handed to it through pthread_create's context pointer.
private final class ThreadStart: @unchecked Sendable {
    // @unchecked: created before the thread starts and only read by it.
    let name: String
    let body: @Sendable () -> Void

    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

/// A pool's threads, which come and go (an elastic pool starts threads on demand and lets idle
/// ones leave): those that left are joined as new ones start, and `join` joins the rest.
public final class OwnedThreads: Sendable {
    /// Guards the list of threads. Lock order: before each thread's `finished` (asked while the list is
    /// pruned); never held while joining.
    private let threads = Mutex<[OwnedThread]>([])

    public init() {}

    /// Starts a thread (see `OwnedThread.init`), first joining those whose bodies have returned.
    public func start(name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = OwnedThread(name: name, body)
        let done: [OwnedThread] = threads.withLock { threads in
            let done = threads.filter(\.hasFinished)
            threads.removeAll { $0.hasFinished }
            threads.append(thread)
            return done
        }
        for thread in done { thread.join() } // instant: their bodies have returned
    }

    /// Joins every thread whose body returns before `deadline`; returns the names of those that did not.
    @discardableResult
    public func join(until deadline: ContinuousClock.Instant? = nil) -> [String] {
        let all = threads.withLock { $0 }
        let stuck = all.filter { !$0.join(until: deadline) }
        let joined = Set(all.map(ObjectIdentifier.init)).subtracting(stuck.map(ObjectIdentifier.init))
        threads.withLock { $0.removeAll { joined.contains(ObjectIdentifier($0)) } }
        return stuck.map(\.name)
    }

    /// Threads started and not yet joined.
    public var count: Int { threads.withLock { $0.count } }
}
