import ArgumentParser
import ControlPlane
import Foundation

/// The background daemon, as the launcher starts it: the mount's settings arrive whole as JSON
/// on standard input, and readiness (or the reason for failing) goes to `--ready-fd`. Not for users.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", shouldDisplay: false)

    @Option(help: "The pipe on which the daemon reports that it is ready, or why it failed.")
    var readyFD: Int32

    @Flag(help: "A supervisor watches this daemon: after handing its mount over, wait for SIGTERM rather than exit.")
    var supervised = false

    func run() throws {
        let readiness = ReadinessPipe(readyFD)
        if let reason = ProcFilesystem.foreignNamespace() {
            readiness.fail(reason)
            throw UsageError(reason)
        }
        let settings: MountSettings
        do {
            settings = try JSONDecoder().decode(MountSettings.self, from: FileHandle.standardInput.readToEnd() ?? Data())
        } catch {
            readiness.fail("cannot read the daemon's settings: \(error)")
            throw error
        }
        try Daemon(settings: settings, readiness: readiness, supervised: supervised).run()
    }
}
