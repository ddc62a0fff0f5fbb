import ControlPlane
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Starts the daemon as a detached copy of this program (`cachefs serve`) and waits
/// until it reports that the mount answers, so that `cachefs SRC DST` returns only
/// once DST is usable, and fails with the daemon's own message otherwise.
///
/// The daemon gets the settings whole, as JSON on its standard input, never
/// re-spelled as options: a setting added to `MountSettings` reaches it by itself.
enum BackgroundLauncher {
    /// - Parameter keepingOutput: the daemon writes to this process's standard output and error (a
    ///   supervisor's journal, see SpecMounts) instead of /dev/null.
    /// - Returns: the daemon's process ID, once it is ready.
    @discardableResult
    static func launch(settings: MountSettings, keepingOutput: Bool = false) throws -> pid_t {
        let (readEnd, writeEnd) = try makePipe()
        let (settingsReadEnd, settingsWriteEnd) = try makePipe()
        let readyDescriptor: Int32 = 3

        markInheritedDescriptorsCloseOnExec()
        let arguments =
            ["cachefs", ServeCommand.configuration.commandName!, "--ready-fd", String(readyDescriptor)]
            + (keepingOutput ? ["--supervised"] : [])
        let pid: pid_t
        do {
            defer {
                close(writeEnd) // the daemon's ends are its own now
                close(settingsReadEnd)
            }
            pid = try SelfSpawn.spawn(
                arguments, standardInput: settingsReadEnd, keepingOutput: keepingOutput, descriptors: [(writeEnd, readyDescriptor)])
        } catch {
            close(readEnd)
            close(settingsWriteEnd)
            throw UsageError("cannot start the daemon: \(String(cString: strerror(error.rawValue)))")
        }
        // A pipe holds 64 KiB, far more than the settings; the daemon reads them before anything else.
        let encoded = try JSONEncoder().encode(settings)
        _ = encoded.withUnsafeBytes { write(settingsWriteEnd, $0.baseAddress, $0.count) }
        close(settingsWriteEnd)
        let answer = readLine(readEnd).trimmingCharacters(in: .whitespacesAndNewlines)
        close(readEnd)
        if answer == "ok" { return pid }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard answer.isEmpty else { throw UsageError(answer) }
        let end = status & 0x7f == 0 ? "with status \((status >> 8) & 0xff)" : "killed by signal \(status & 0x7f)"
        throw UsageError("the daemon exited (\(end)) before the mount was ready")
    }

    /// A pipe whose ends are closed on exec (the child gets the ends it needs through dup2, without the flag).
    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw UsageError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return (ends[0], ends[1])
    }

    /// A daemon must not hold descriptors its launcher inherited: a caller waiting
    /// for the launcher's pipes or sockets to close would wait for the daemon instead.
    private static func markInheritedDescriptorsCloseOnExec() {
        for descriptor in InheritedDescriptors.openDescriptors() where descriptor > STDERR_FILENO {
            _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
        }
    }

    /// Reads the daemon's one-line answer; an empty string if it exited without one.
    private static func readLine(_ descriptor: Int32) -> String {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let count = read(descriptor, &byte, 1)
            if count == 1 {
                if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
                bytes.append(byte)
                continue
            }
            if count < 0 && errno == EINTR { continue }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}
