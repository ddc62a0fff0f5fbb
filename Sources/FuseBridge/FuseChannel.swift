import CFuse
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a daemon taking over this connection needs of its INIT exchange: the kernel's request as
/// it came (protocol version, flags offered, read-ahead) and the flags2 the kernel was told.
public struct FuseNegotiation: Sendable, Equatable {
    public var initRequest: [UInt8]
    public var kernelFlags2: UInt32

    public init(initRequest: [UInt8], kernelFlags2: UInt32) {
        self.initRequest = initRequest
        self.kernelFlags2 = kernelFlags2
    }

    /// Whether the kernel was told this connection serves passthrough opens (only a new mount can change it).
    public var passthroughNegotiated: Bool { kernelFlags2 & CACHEFS_FUSE_PASSTHROUGH_FLAGS2 != 0 }

    /// Whether the kernel sends again the requests a dead daemon had read, when asked (FUSE_HAS_RESEND, Linux 6.9+).
    public var kernelResends: Bool {
        let headerSize = MemoryLayout<cachefs_fuse_in_header>.size
        guard initRequest.count >= headerSize + MemoryLayout<cachefs_fuse_init_in>.size else { return false }
        let arguments = initRequest.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: headerSize, as: cachefs_fuse_init_in.self) }
        return arguments.flags & CACHEFS_FUSE_INIT_EXT != 0 && arguments.flags2 & CACHEFS_FUSE_HAS_RESEND_FLAGS2 != 0
    }
}

/// The daemon's end of the kernel's FUSE connection, as libfuse reads and writes it (its custom io):
///
/// - It shows `FuseKernelFeatures` the kernel's INIT and libfuse's reply, and keeps the INIT for a successor.
/// - A daemon taking over a live connection hands libfuse, on its first read, an INIT rebuilt from
///   the one recorded at mount, and drops libfuse's reply (the kernel had its reply from the first
///   daemon). Only then are real requests read, and the kernel is first asked to queue again any
///   request a dead predecessor had read and not answered (FUSE_NOTIFY_RESEND): it is answered here.
/// - It knows which requests are read and not yet answered, and can stop reading (`pause`), so that a
///   daemon handing over lets what it started finish while new requests wait in the kernel's queue.
///
/// Threads: the hooks run on libfuse's workers, any number at once; `pause` and `resume` on the
/// hand-over's thread. Locks: `reading` and `inFlight` guard only their sets, never held across I/O
/// (bar `pthread_kill`, which must reach a thread still inside the hook).
final class FuseChannel: Sendable {
    private let kernelFeatures: FuseKernelFeatures?
    private let logger: Logger
    /// The INIT to replay when taking over, until a worker has read it. Lock order: a leaf.
    private let replay: Mutex<[UInt8]?>
    private let takingOver: Bool
    /// Whether libfuse has answered the replayed INIT: real requests are read only after.
    private let initialized = Atomic<Bool>(false)
    /// The INIT request's unique while its reply is due (0: none).
    private let initUnique = Atomic<UInt64>(0)
    /// The INIT request as the kernel sent it, for a successor's replay. Lock order: a leaf.
    private let recordedInit = Mutex<[UInt8]?>(nil)
    /// Uniques of requests read and not yet answered. Lock order: a leaf.
    private let inFlight = Mutex<Set<UInt64>>([])
    /// Whether workers may read, and the threads inside read(2) now (to interrupt them when pausing).
    /// Lock order: a leaf (held across `pthread_kill` only, which does not block).
    ///
    /// Workers poll it (and `initialized`) rather than wait on a `Condition`: libfuse cancels its
    /// workers at exit (pthread_cancel) while they are in this read hook, and a thread cancelled in
    /// pthread_cond_wait would go with the condition's lock held, leaving the others stuck on it. A
    /// cancellation in read(2) or usleep happens with no lock held.
    private let reading = Mutex<(open: Bool, threads: Set<UInt>)>((true, []))

    /// The unique of a replayed INIT; its reply never reaches the kernel.
    private static let replayedInitUnique: UInt64 = 0x7FFF_FFFF_FFFF_FFFE
    /// Interrupts a worker's read(2) when pausing: a handler that does nothing, installed without SA_RESTART.
    private static let interruptSignal = SIGURG

    /// - Parameter replaying: the negotiation of a connection taken over; nil for one this daemon mounted.
    init(kernelFeatures: FuseKernelFeatures?, replaying: FuseNegotiation?, logger: Logger) {
        self.kernelFeatures = kernelFeatures
        self.logger = logger
        takingOver = replaying != nil
        replay = Mutex(replaying?.initRequest)
        if let replaying {
            kernelFeatures?.inherit(kernelFlags2: replaying.kernelFlags2)
            recordedInit.withLock { $0 = replaying.initRequest }
        }
        Self.installInterruptHandler
    }

    private static let installInterruptHandler: Void = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0 // no SA_RESTART: a read(2) on /dev/fuse returns EINTR
        sigaction(interruptSignal, &action, nil)
    }()

    /// Lets the calling thread, and the workers libfuse starts from it, be interrupted by `pause`:
    /// a thread started from a Swift concurrency or Dispatch thread has nearly every signal blocked.
    func prepareLoopThread() {
        var interrupt = sigset_t()
        sigemptyset(&interrupt)
        sigaddset(&interrupt, Self.interruptSignal)
        pthread_sigmask(SIG_UNBLOCK, &interrupt, nil)
    }

    /// The INIT exchange, once there has been one (for the next daemon).
    var negotiation: FuseNegotiation? {
        guard let request = recordedInit.withLock({ $0 }), let flags2 = kernelFeatures?.kernelFlags2 else { return nil }
        return FuseNegotiation(initRequest: request, kernelFlags2: flags2)
    }

    /// Makes libfuse read and write `descriptor` through this channel.
    func install(on session: OpaquePointer, descriptor: Int32) -> Bool {
        var io = fuse_custom_io()
        io.read = { fd, buffer, length, userData in
            guard let buffer, let userData else { return Glibc.read(fd, buffer, length) }
            return Unmanaged<FuseServer>.fromOpaque(userData).takeUnretainedValue().channel.read(fd, buffer, length)
        }
        io.writev = { fd, vectors, count, userData in
            guard let vectors, let userData else { return Glibc.writev(fd, vectors, count) }
            return Unmanaged<FuseServer>.fromOpaque(userData).takeUnretainedValue().channel.write(fd, vectors, Int(count))
        }
        return fuse_session_custom_io(session, &io, descriptor) == 0
    }

    // MARK: The hooks

    private func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ length: Int) -> Int {
        if takingOver {
            if let request = replay.withLock({ (pending: inout [UInt8]?) -> [UInt8]? in
                defer { pending = nil }; return pending
            }) {
                guard request.count <= length else { return fail(EINVAL) }
                request.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                buffer.storeBytes(of: Self.replayedInitUnique, toByteOffset: 8, as: UInt64.self) // in_header.unique
                note(buffer, count: request.count)
                return request.count
            }
            while !initialized.load(ordering: .acquiring) { usleep(1_000) }
        }
        while true {
            let entered = reading.withLock { state in
                guard state.open else { return false }
                state.threads.insert(UInt(pthread_self()))
                return true
            }
            guard entered else {
                usleep(1_000) // paused for a hand-over: the request waits in the kernel's queue
                continue
            }
            let count = Glibc.read(fd, buffer, length)
            let error = errno
            reading.withLock { _ = $0.threads.remove(UInt(pthread_self())) }
            if count < 0 && error == EINTR { continue }
            if count >= MemoryLayout<cachefs_fuse_in_header>.size { note(buffer, count: count) }
            errno = error
            return count
        }
    }

    private func note(_ request: UnsafeRawPointer, count: Int) {
        let header = request.loadUnaligned(as: cachefs_fuse_in_header.self)
        switch header.opcode {
        case CACHEFS_FUSE_FORGET, CACHEFS_FUSE_BATCH_FORGET, CACHEFS_FUSE_INTERRUPT:
            return // never answered
        case CACHEFS_FUSE_INIT:
            recordedInit.withLock { $0 = $0 ?? Array(UnsafeRawBufferPointer(start: request, count: count)) }
            kernelFeatures?.noteInit(request, count: count)
            initUnique.store(header.unique, ordering: .releasing)
        default:
            break
        }
        inFlight.withLock { _ = $0.insert(header.unique) }
    }

    private func write(_ fd: Int32, _ vectors: UnsafeMutablePointer<iovec>, _ count: Int) -> Int {
        guard count >= 1, vectors[0].iov_len >= MemoryLayout<cachefs_fuse_out_header>.size else { return writev(fd, vectors, Int32(count)) }
        let unique = vectors[0].iov_base.loadUnaligned(as: cachefs_fuse_out_header.self).unique
        if unique != 0, unique == initUnique.load(ordering: .acquiring) {
            initUnique.store(0, ordering: .relaxed)
            kernelFeatures?.amendInitReply(vectors, count: count)
            if unique == Self.replayedInitUnique {
                inFlight.withLock { _ = $0.remove(unique) }
                requestResend(fd)
                initialized.store(true, ordering: .releasing)
                return (0..<count).reduce(0) { $0 + vectors[$1].iov_len } // the kernel had its reply long ago
            }
        }
        let written = writev(fd, vectors, Int32(count))
        let error = errno
        if unique != 0 { inFlight.withLock { _ = $0.remove(unique) } }
        errno = error
        return written
    }

    /// Asks the kernel to queue again the requests a predecessor read and did not answer (it died, or
    /// handed over with some unfinished): they come back with FUSE_UNIQUE_RESEND in their unique.
    private func requestResend(_ fd: Int32) {
        guard let negotiation, negotiation.kernelResends else {
            logger.notice("the kernel cannot send again the requests a previous daemon left unanswered (FUSE_NOTIFY_RESEND, Linux 6.9+)")
            return
        }
        var header = cachefs_fuse_out_header(
            len: UInt32(MemoryLayout<cachefs_fuse_out_header>.size), error: CACHEFS_FUSE_NOTIFY_RESEND, unique: 0)
        if Glibc.write(fd, &header, MemoryLayout<cachefs_fuse_out_header>.size) < 0 {
            logger.warning(
                "could not ask the kernel to send unanswered requests again", metadata: ["error": "\(String(cString: strerror(errno)))"])
        }
    }

    private func fail(_ error: Int32) -> Int {
        errno = error
        return -1
    }

    // MARK: Pausing

    /// Stops reading new requests and waits until every request read has been answered, or `deadline`.
    /// Returns whether none is left; reading stays stopped either way until `resume`.
    func pause(until deadline: ContinuousClock.Instant) -> Bool {
        reading.withLock { $0.open = false }
        while true {
            // Under the lock: a thread in the set is still inside the hook, so it exists.
            let reading = reading.withLock { state in
                for thread in state.threads { pthread_kill(pthread_t(thread), Self.interruptSignal) }
                return state.threads.count
            }
            if reading == 0 && inFlight.withLock({ $0.isEmpty }) { return true }
            guard ContinuousClock.now < deadline else { return false }
            usleep(2_000)
        }
    }

    /// Requests read and not yet answered.
    var requestsInFlight: Int { inFlight.withLock { $0.count } }

    func resume() {
        reading.withLock { $0.open = true }
    }
}
