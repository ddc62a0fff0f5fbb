import CFuse
import CLinux
import Logging
import MirrorFS
import Reporting
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The kernel features cachefs uses that libfuse 3.14 predates, negotiated by the daemon itself:
/// - FUSE passthrough: the kernel reads a wholly cached file straight from its memory file,
///   without a request to the daemon;
/// - mmap of direct-I/O opens (FUSE_DIRECT_IO_ALLOW_MMAP): a file whose blocks are still being
///   loaded can be opened with direct I/O, so that each reply is copied straight into the
///   reader's buffer instead of into the mount's page cache and out again, and a reader that
///   maps the file (safetensors) still can.
///
/// libfuse reads and writes /dev/fuse through `FuseChannel` (`fuse_session_custom_io`), which
/// shows this object the kernel's INIT request, to note which of the two it offers, and
/// libfuse's INIT reply, to add them (passthrough with a stack depth of 1, unless turned off).
/// Backing files are then registered with ioctls on the session's descriptor (`register`),
/// which needs CAP_SYS_ADMIN in the initial user namespace.
///
/// Threads: the negotiation runs on libfuse's worker threads; `register` and `unregister` on
/// whichever thread opens or releases a file; `probe` once, after the mount answers.
public final class FuseKernelFeatures: KernelFeatures {
    private let passthroughEnabled: Bool
    private let directIOEnabled: Bool
    private let logger: Logger
    private let sessionFD = Atomic<Int32>(-1)
    /// The flags2 bits the INIT reply is to add (those of ours the kernel offered).
    private let offeredFlags2 = Atomic<UInt32>(0)
    /// Whether the kernel serves passthrough opens, and if not, why. Lock order: after a node's
    /// `opens` (asked and set while an open is admitted); a leaf.
    private let state = Mutex(PassthroughState(available: false, reason: "the kernel has not been asked yet"))
    private let directIOMayMap = Atomic<Bool>(false)

    /// - Parameters:
    ///   - passthrough: `--passthrough on`; off, the kernel is never asked for it.
    ///   - directIO: `--direct-io on`; off, direct-I/O mapping is not asked for, and so no open uses direct I/O.
    public init(passthrough: Bool, directIO: Bool, logger: Logger) {
        self.passthroughEnabled = passthrough
        self.directIOEnabled = directIO
        self.logger = logger
        if !passthrough { state.withLock { $0 = PassthroughState(available: false, reason: "--passthrough off") } }
    }

    public var passthroughState: PassthroughState { state.withLock { $0 } }

    public var passthroughAvailable: Bool { state.withLock { $0.available } }

    /// Whether an open with direct I/O may still be mapped (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+);
    /// without it the kernel refuses to map such a file with ENODEV.
    public var directIOMayBeMapped: Bool { directIOMayMap.load(ordering: .acquiring) }

    // MARK: Negotiation (through FuseChannel, libfuse's io)

    /// The flags2 bits the kernel was told in the INIT reply of this connection: by this daemon, or
    /// by the one it took the connection over from (passed to `inherit`). Nil until known. Lock order: a leaf.
    private let toldFlags2 = Mutex<UInt32?>(nil)

    /// Taking over a live connection: only what the kernel was told at its INIT can be used.
    func inherit(kernelFlags2: UInt32) {
        toldFlags2.withLock { $0 = kernelFlags2 }
    }

    /// What the kernel was told (for the next daemon).
    var kernelFlags2: UInt32? { toldFlags2.withLock { $0 } }

    func attach(to session: OpaquePointer) {
        sessionFD.store(fuse_session_fd(session), ordering: .releasing)
    }

    /// Notes which of our features an INIT request offers (FuseChannel calls this for the INIT only).
    func noteInit(_ request: UnsafeRawPointer, count: Int) {
        guard count >= MemoryLayout<cachefs_fuse_in_header>.size + MemoryLayout<cachefs_fuse_init_in>.size else {
            return setUnavailable("the kernel's FUSE protocol is too old for passthrough")
        }
        let arguments = request.loadUnaligned(fromByteOffset: MemoryLayout<cachefs_fuse_in_header>.size, as: cachefs_fuse_init_in.self)
        var offered = arguments.flags & CACHEFS_FUSE_INIT_EXT != 0 ? arguments.flags2 : 0
        if let told = kernelFlags2 { offered &= told } // a connection taken over: what its INIT settled
        var wanted = directIOEnabled ? offered & CACHEFS_FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 : 0
        if passthroughEnabled {
            if offered & CACHEFS_FUSE_PASSTHROUGH_FLAGS2 != 0 {
                wanted |= CACHEFS_FUSE_PASSTHROUGH_FLAGS2
            } else if kernelFlags2 != nil {
                setUnavailable(
                    "the mount was set up without passthrough (its first daemon ran with --passthrough off); a new mount is needed to turn it on"
                )
            } else {
                setUnavailable(
                    "the kernel does not offer FUSE passthrough (protocol \(arguments.major).\(arguments.minor); Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH)"
                )
            }
        }
        offeredFlags2.store(wanted, ordering: .relaxed)
    }

    /// Adds what `noteInit` found (and, for passthrough, a stack depth of 1) to libfuse's reply to
    /// the INIT, and records what the kernel is told (FuseChannel calls this for that reply only).
    func amendInitReply(_ vectors: UnsafeMutablePointer<iovec>, count: Int) {
        guard count >= 2, vectors[0].iov_len >= MemoryLayout<cachefs_fuse_out_header>.size,
            vectors[0].iov_base.loadUnaligned(as: cachefs_fuse_out_header.self).error == 0,
            vectors[1].iov_len >= MemoryLayout<cachefs_fuse_init_out>.size, let reply = vectors[1].iov_base
        else { return setUnavailable("libfuse's INIT reply has no room for passthrough") }
        var arguments = reply.loadUnaligned(as: cachefs_fuse_init_out.self)
        let wanted = offeredFlags2.load(ordering: .relaxed)
        if wanted != 0 {
            guard arguments.flags & CACHEFS_FUSE_INIT_EXT != 0 else { return setUnavailable("libfuse did not answer with FUSE_INIT_EXT") }
            arguments.flags2 |= wanted
            if wanted & CACHEFS_FUSE_PASSTHROUGH_FLAGS2 != 0 { arguments.max_stack_depth = 1 }
            reply.storeBytes(of: arguments, as: cachefs_fuse_init_out.self)
        }
        toldFlags2.withLock { told in told = told ?? arguments.flags2 }
        directIOMayMap.store(wanted & CACHEFS_FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 != 0, ordering: .releasing)
        if wanted & CACHEFS_FUSE_PASSTHROUGH_FLAGS2 != 0 { state.withLock { $0 = PassthroughState(available: true, reason: nil) } }
    }

    // MARK: Backing files

    /// Checks once, with a small memory file, that the kernel accepts backing files here,
    /// and logs why not. Call after the mount answers (the INIT reply has been processed).
    public func probe() {
        if directIOEnabled && !directIOMayBeMapped {
            logger.notice(
                "the kernel cannot map direct-I/O opens (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6+); cold reads go through its page cache")
        }
        guard passthroughAvailable else {
            logger.notice(
                "FUSE passthrough is off; every read goes through the daemon", metadata: ["reason": "\(passthroughState.reason ?? "-")"])
            return
        }
        let memfd = cachefs_memfd_create("cachefs-passthrough-probe", UInt32(CACHEFS_MFD_CLOEXEC))
        defer { if memfd >= 0 { close(memfd) } }
        do throws(Errno) {
            unregister(try register(memfd))
            logger.info("FUSE passthrough is on: the kernel reads wholly cached files from memory itself")
        } catch {
            logger.notice(
                "FUSE passthrough is off; every read goes through the daemon", metadata: ["reason": "\(passthroughState.reason ?? "-")"])
        }
    }

    public func register(_ descriptor: Int32) throws(Errno) -> Int32 {
        guard passthroughAvailable else { throw .notSupported }
        let id = cachefs_backing_open(sessionFD.load(ordering: .acquiring), descriptor)
        guard id >= 0 else {
            let error = Errno(rawValue: errno)
            // Short of memory or descriptors: this open goes through the daemon, later ones may try again.
            if [.noMemory, .tooManyOpenFiles, .tooManyOpenFilesInSystem].contains(error) { throw error }
            setUnavailable(
                error == .notPermitted
                    ? "the kernel refused a backing file (EPERM): passthrough needs CAP_SYS_ADMIN in the initial user namespace"
                    : "the kernel refused a backing file: \(error)")
            throw error
        }
        return id
    }

    public func unregister(_ id: Int32) {
        guard cachefs_backing_close(sessionFD.load(ordering: .acquiring), id) != 0 else { return }
        let error = Errno(rawValue: errno)
        // The kernel keeps the memory file open under this id until the mount goes; nothing more to do than tell.
        logger.error("the kernel refused to close a backing file", metadata: ["backing id": "\(id)", "error": "\(error)"])
    }

    private func setUnavailable(_ reason: String) {
        guard passthroughEnabled else { return } // the status keeps saying why: turned off
        state.withLock { $0 = PassthroughState(available: false, reason: reason) }
    }
}
