import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A program the tests start, with the part of Foundation's `Process` they use, on posix_spawn.
///
/// Foundation's `Process.run` on this toolchain copies the whole 256-byte `d_name` of each
/// /proc/self/fd entry while it lists the descriptors to close in the child, which reads past the
/// end of readdir's buffer now and then and crashed a CI run (swift-corelibs-foundation #5472, fixed
/// after 6.3.1). This starts the child as Process does (its own process group, descriptors above
/// standard error closed, pipe ends the parent does not use closed) and reads names in place.
final class ChildProcess: @unchecked Sendable {
    // @unchecked: set up by one thread before `run`; afterwards only `processIdentifier` (set once) and `waitStatus` are read.
    var executableURL: URL?
    var arguments: [String] = []
    /// Where the child starts (through `env --chdir`, since glibc's addchdir is hidden from Swift).
    var currentDirectoryURL: URL?
    /// The child's whole environment; nil: this process's.
    var environment: [String: String]?
    /// A `FileHandle` or a `Pipe` for each stream; nil: this process's own.
    var standardInput: Any?
    var standardOutput: Any?
    var standardError: Any?
    private(set) var processIdentifier: pid_t = 0
    /// The child's wait status once reaped. Lock order: a leaf; waitpid runs outside it.
    private let waitStatus = Mutex<Int32?>(nil)

    func run() throws {
        guard let executable = executableURL?.path else { throw TestFailure("no executable to run") }
        let command =
            currentDirectoryURL.map { ["/usr/bin/env", "--chdir=\($0.path)", executable] + arguments } ?? [executable] + arguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (stream, target) in [(standardInput, STDIN_FILENO), (standardOutput, STDOUT_FILENO), (standardError, STDERR_FILENO)] {
            let source: Int32? =
                switch stream {
                case let handle as FileHandle: handle.fileDescriptor
                case let pipe as Pipe:
                    target == STDIN_FILENO ? pipe.fileHandleForReading.fileDescriptor : pipe.fileHandleForWriting.fileDescriptor
                default: nil
                }
            if let source { posix_spawn_file_actions_adddup2(&actions, source, target) }
        }
        // After the dup2s above: the child keeps standard input, output and error, and nothing else.
        for descriptor in Self.openDescriptors() where descriptor > STDERR_FILENO {
            posix_spawn_file_actions_addclose(&actions, descriptor)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        let variables = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let argv = command.map { strdup($0) } + [nil]
        let envp = variables.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, command[0], &actions, &attributes, argv, envp)
        guard spawned == 0 else { throw TestFailure("cannot start \(command[0]): \(String(cString: strerror(spawned)))") }
        processIdentifier = pid
        // As Process does: the parent keeps only its own ends of the pipes.
        if let pipe = standardInput as? Pipe { try? pipe.fileHandleForReading.close() }
        if let pipe = standardOutput as? Pipe { try? pipe.fileHandleForWriting.close() }
        if let pipe = standardError as? Pipe { try? pipe.fileHandleForWriting.close() }
    }

    var isRunning: Bool { reap(blocking: false) == nil }

    func waitUntilExit() { _ = reap(blocking: true) }

    /// The exit status, or the signal that ended the child (as Process reports it).
    var terminationStatus: Int32 {
        guard let status = reap(blocking: false) else { return 0 }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : status & 0x7f
    }

    func terminate() { kill(processIdentifier, SIGTERM) }

    /// The wait status once the child has ended (waiting for it if `blocking`); nil while it runs.
    private func reap(blocking: Bool) -> Int32? {
        guard processIdentifier > 0 else { return nil }
        while true {
            if let status = waitStatus.withLock({ $0 }) { return status }
            var status: Int32 = 0
            let reaped = waitpid(processIdentifier, &status, blocking ? 0 : WNOHANG)
            if reaped == processIdentifier {
                waitStatus.withLock { $0 = status }
                return status
            }
            if reaped == 0 { return nil } // still running
            if errno == EINTR { continue }
            // ECHILD: another thread reaped it and is about to record the status.
            usleep(1_000)
        }
    }

    /// This process's open descriptors, each /proc/self/fd name read in place.
    private static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        let nameOffset = MemoryLayout<dirent>.offset(of: \.d_name)!
        var open: [Int32] = []
        while let entry = readdir(directory) {
            let name = String(cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
            if let descriptor = Int32(name), descriptor != dirfd(directory) { open.append(descriptor) }
        }
        return open
    }
}
