import ArgumentParser
import ControlPlane
import Foundation

/// `cachefs restart MOUNTPOINT`: a new daemon, from the binary installed now, takes the mount over
/// from the running one with the same settings (the hand-over); the mount, its open files and its
/// cache stay. Under systemd, `systemctl reload cachefs@NAME` does the same with the unit's settings.
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
        let socket = controlSocket.map(MountSettings.absolute)
            ?? ControlSocket.defaultPath(forMountpoint: StatsCommand.canonicalMountpoint(mountpoint))
        let report: StatsReport
        do {
            report = try runBlocking { try await ControlClient(socketPath: socket).stats() }
        } catch {
            throw UsageError("no cachefs daemon answers for \(mountpoint) at \(socket): \(error)")
        }
        try BackgroundLauncher.launch(settings: report.settings)
    }
}
