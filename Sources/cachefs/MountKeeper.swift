import ArgumentParser
import CLinux
import FuseBridge
import Threading

#if canImport(Glibc)
import Glibc
#endif

/// Removes a mount once no daemon can serve it any more: cachefs's own auto_unmount. libfuse's
/// (a fusermount3 helper that unmounts when the one daemon that mounted dies) cannot let the mount
/// outlive that daemon, which a hand-over and a restart after a crash must.
///
/// The keeper is a small process holding one end of a socket; every daemon serving the mount holds
/// the other end (handed over with the mount, and kept in systemd's store with it), so the keeper
/// sees the end of the stream only when none is left. It then lazily unmounts the mount, if the
/// mountpoint still holds that mount (same device) and nothing else. A daemon that takes over starts
/// a keeper of its own and retires the old one, which then exits without unmounting.
enum MountKeeper {
    static let retireByte = UInt8(ascii: "R")
    /// The keeper's end of the socket, as it receives it.
    static let socketDescriptor: Int32 = 3

    /// Starts a keeper for the mount at `mountpoint` of device `device` (`major:minor`); returns the
    /// daemon's end of its socket (close-on-exec).
    static func start(mountpoint: String, device: String) throws -> Int32 {
        var ends: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, CACHEFS_SOCK_STREAM_CLOEXEC, 0, &ends) == 0 else {
            throw UsageError("cannot create the mount keeper's socket: \(String(cString: strerror(errno)))")
        }
        defer { close(ends[1]) }
        let arguments = ["cachefs", KeepMountCommand.configuration.commandName!, "--mountpoint", mountpoint, "--device", device]
        do {
            _ = try SelfSpawn.spawn(arguments, descriptors: [(ends[1], socketDescriptor)])
        } catch {
            close(ends[0])
            throw UsageError("cannot start the mount keeper: \(String(cString: strerror(error.rawValue)))")
        }
        return ends[0]
    }

    /// Tells a keeper that its mount is in another keeper's care: it exits without unmounting.
    static func retire(_ socket: Int32) {
        var byte = retireByte
        _ = send(socket, &byte, 1, Int32(MSG_NOSIGNAL))
        close(socket)
    }
}

/// The keeper process (see MountKeeper). Not for users.
struct KeepMountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keep-mount", shouldDisplay: false)

    @Option var mountpoint: String
    @Option var device: String

    func run() throws {
        closeInheritedDescriptors(keeping: MountKeeper.socketDescriptor)
        var all = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_BLOCK, &all, nil) // only the end of the socket ends a keeper (or SIGKILL)
        cachefs_set_thread_name("cachefs-keeper") // the keeper is single-threaded: its process name
        chdir("/")
        var byte: UInt8 = 0
        while true {
            let count = recv(MountKeeper.socketDescriptor, &byte, 1, 0)
            if count == 1 {
                if byte == MountKeeper.retireByte { return }
                continue
            }
            if count < 0 && errno == EINTR { continue }
            break
        }
        // No daemon and no store holds the mount's channel: nobody can serve it again.
        guard let entry = MountTable.current().last(where: { $0.mountpoint == mountpoint }),
            entry.type == "fuse.cachefs", entry.device == device
        else { return }
        FuseServer.detach(mountpoint)
    }
}

/// What a daemon that handed over its mount becomes when something watches its process (the
/// foreground, a supervisor, a container runtime): a process that waits for SIGTERM, SIGINT or
/// SIGHUP and exits 0, so that its supervisor does not start it again. It holds only what the daemon
/// inherited when it started (see InheritedDescriptors): a supervisor may watch one of those. Not for users.
struct HandedOverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "handed-over", shouldDisplay: false)

    @Option var mountpoint: String

    func run() throws {
        SignalListener.block(Daemon.shutdownSignals)
        var signals = SignalListener.set(of: Daemon.shutdownSignals)
        // A supervisor that dies (the spec form's) takes its waiters with it, whoever stops it.
        cachefs_set_parent_death_signal(SIGTERM)
        var received: Int32 = 0
        sigwait(&signals, &received)
    }
}

/// Closes every descriptor above standard error but `kept`: the keeper outlives the daemon and must
/// hold none of its sockets (a listener held here would leave its clients waiting forever), nor a
/// supervisor's pipe (which would take the keeper for the daemon).
private func closeInheritedDescriptors(keeping kept: Int32?) {
    for descriptor in InheritedDescriptors.openDescriptors() where descriptor > STDERR_FILENO && descriptor != kept { close(descriptor) }
}

/// The descriptors a daemon was started with (standard streams, a supervisor's pipes). When the
/// daemon turns into a waiter after a hand-over, everything else it opened is closed by the exec,
/// and these stay: a supervisor that watches a pipe for the process's end must not see it early.
enum InheritedDescriptors {
    nonisolated(unsafe) private static var atStart: Set<Int32> = []

    /// Call first thing, before any thread or descriptor is made.
    static func record() { atStart = Set(openDescriptors()) }

    /// Marks every descriptor the daemon opened itself close-on-exec (libraries do not all do it).
    static func closeOwnOnExec() {
        for descriptor in openDescriptors() where !atStart.contains(descriptor) {
            _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
        }
    }

    static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        var open: [Int32] = []
        while let entry = readdir(directory) {
            // The name read in place: a dirent is only as long as its name (d_reclen), so copying the
            // declared 256-byte d_name can read past the end of readdir's buffer (Foundation's
            // Process.run crashes on exactly that, swift-corelibs-foundation #5472).
            let name = String(cString: UnsafeRawPointer(entry).advanced(by: direntNameOffset).assumingMemoryBound(to: CChar.self))
            if let descriptor = Int32(name), descriptor != dirfd(directory) { open.append(descriptor) }
        }
        return open
    }
}

private let direntNameOffset = MemoryLayout<dirent>.offset(of: \.d_name)!
