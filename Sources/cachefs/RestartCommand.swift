import ArgumentParser
import ControlPlane
import Foundation

/// `cachefs restart MOUNTPOINT`: a new daemon, from the binary installed now, takes the mount over
/// from the running one with the same settings (the hand-over); the mount, its open files and its
/// cache stay. Under systemd (its file descriptor store keeps the mount), the daemon exits instead and
/// systemd starts it again with the unit's settings, keeping the mount and the cache the same way.
struct RestartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restart",
        abstract: "Start a new daemon for a mount, which takes the mount and its cache over from the running one.",
        discussion: """
            The new daemon runs the cachefs binary installed now, with the running daemon's settings; \
            readers see no error. To change settings, run `cachefs mount SOURCE MOUNTPOINT ...` with them instead.
            """
    )

    @Argument(help: "The mountpoint of a running cachefs daemon.")
    var mountpoint: String

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    func run() throws {
        let socket = MountLocator.controlSocket(for: StatsCommand.canonicalMountpoint(mountpoint), explicit: controlSocket)
        let report: StatsReport
        do {
            report = try runBlocking { try await ControlClient(socketPath: socket).stats() }
        } catch {
            throw UsageError("no cachefs daemon answers for \(mountpoint) at \(socket): \(error)")
        }
        guard report.continuity?.keptBySystemd == true else {
            try BackgroundLauncher.launch(settings: report.settings)
            return
        }
        // systemd keeps the mount and the cache: the daemon exits, and systemd starts the binary installed now.
        let answer = try runBlocking { try await ControlClient(socketPath: socket).restart() }
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let now = try? runBlocking({ try await ControlClient(socketPath: socket).stats() }), now.pid != answer.pid { return }
            usleep(100_000)
        }
        throw UsageError(
            "the daemon exited for systemd to restart it, but no new daemon answers for \(mountpoint) after 60 s (see journalctl)")
    }
}
