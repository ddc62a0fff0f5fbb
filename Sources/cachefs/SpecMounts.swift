import ControlPlane
import Foundation
import Threading

#if canImport(Glibc)
import Glibc
#endif

/// `cachefs mount --spec FILE`: each cache entry of a service description mounted as
/// `cachefs SOURCE MOUNTPOINT --capacity SIZE` with the other options given, all or none.
///
/// Every entry is checked before any is mounted, and a daemon that fails to start stops those
/// started before it, so a bad spec leaves nothing mounted. In the background (the default)
/// each mount gets a daemon of its own, as a plain mount does. With -f (systemd, a container)
/// this process stays as their supervisor, each daemon logging to its standard error: it tells
/// systemd it is ready once every mount answers, passes SIGTERM, SIGINT and SIGHUP on, and
/// ends once they have. If a daemon fails, it stops the others and exits non-zero, so that the
/// service manager starts them all again; one unmounted from outside just ends.
enum SpecMounts {
    static func mount(_ spec: ServiceSpec, options: MountCommand) throws {
        // Before any thread or child exists: the supervisor takes these signals with sigwait, and it alone
        // talks to systemd (NOTIFY_SOCKET leaves the environment the daemons inherit).
        if options.foreground { SignalListener.block(supervisedSignals) }
        let systemd = options.foreground ? SystemdNotifier.fromEnvironment() : nil
        let settings = try check(spec, options: options)
        for line in spec.skipped { note(line) } // after the checks: a refused spec says one line
        let daemons = try launch(settings, keepingOutput: options.foreground)
        if options.foreground { try supervise(daemons, systemd: systemd) }
    }

    /// Each entry's settings, checked as its own command line would be.
    static func check(_ spec: ServiceSpec, options: MountCommand) throws -> [MountSettings] {
        if spec.mounts.count > 1, options.controlSocket != nil {
            throw UsageError(
                "--control-socket is one daemon's socket; with \(spec.mounts.count) cache entries leave it out (each mount gets its own)")
        }
        var all: [MountSettings] = []
        for entry in spec.mounts {
            var single = options
            single.spec = nil
            single.source = entry.source
            single.mountpoint = entry.mountpoint
            single.capacity = entry.capacity
            do {
                try single.validate()
                all.append(try single.mountSettings())
            } catch {
                throw UsageError("cache at \(entry.mountpoint): \(MountCommand.message(for: error))")
            }
        }
        if all.count > 1 {
            for (name, address) in [("--listen", all[0].listen), ("--metrics", all[0].metrics)] {
                guard let address, address.port != 0 else { continue }
                throw UsageError(
                    "\(name) \(address) is one port, for one of the \(all.count) cache mounts; give port 0, or one cache entry per spec")
            }
        }
        let total = all.reduce(0) { $0 + $1.capacity }, memory = MemoryLimit.usable()
        if all.count > 1, total > memory, !options.force {
            throw UsageError(
                "the caches' capacities add up to \(ByteCount.format(total)), more than this machine's memory "
                    + "(\(ByteCount.format(memory))); pass --force to use them anyway")
        }
        return all
    }

    /// Starts a daemon per mount, in order; if one fails, those already started are stopped.
    private static func launch(_ all: [MountSettings], keepingOutput: Bool) throws -> [pid_t: String] {
        var started: [pid_t: String] = [:]
        for settings in all {
            do {
                started[try BackgroundLauncher.launch(settings: settings, keepingOutput: keepingOutput)] = settings.mountpoint
            } catch {
                stop(Array(started.keys))
                throw UsageError("cache at \(settings.mountpoint): \(error)")
            }
        }
        return started
    }

    /// SIGTERM to each daemon, which unmounts once its reads in progress finish; waits for them.
    private static func stop(_ daemons: [pid_t]) {
        for pid in daemons { kill(pid, SIGTERM) }
        for pid in daemons {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    private static let supervisedSignals = [SIGTERM, SIGINT, SIGHUP, SIGCHLD]

    /// Waits for the daemons to end, passing shutdown signals on; throws if one failed.
    private static func supervise(_ daemons: [pid_t: String], systemd: SystemdNotifier?) throws {
        systemd?.ready(status: "serving " + daemons.values.sorted().joined(separator: ", "))
        var running = daemons
        var failure: String?
        var stopping = false
        func stopAll() {
            if !stopping { systemd?.stopping() }
            stopping = true
            for pid in running.keys { kill(pid, SIGTERM) }
        }
        var signals = SignalListener.set(of: supervisedSignals)
        while !running.isEmpty {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            guard received == SIGCHLD else {
                stopAll()
                continue
            }
            var status: Int32 = 0
            while case let pid = waitpid(-1, &status, WNOHANG), pid > 0 {
                // As PID 1 of a container this process also inherits the daemons' orphaned helpers.
                guard let mountpoint = running.removeValue(forKey: pid) else { continue }
                let (exited, code) = (status & 0x7f == 0, (status >> 8) & 0xff)
                guard !(exited && code == 0), !stopping else { continue }
                failure =
                    "the daemon serving \(mountpoint) " + (exited ? "exited with status \(code)" : "was killed by signal \(status & 0x7f)")
                note(failure! + "; stopping the others")
                stopAll()
            }
        }
        if let failure { throw UsageError(failure) }
    }

    private static func note(_ line: String) {
        FileHandle.standardError.write(Data("cachefs: \(line)\n".utf8))
    }
}
