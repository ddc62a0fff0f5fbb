#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Starts the daemon as a detached copy of this program and waits until it
/// reports that the mount answers, so that `cachefs SRC DST` returns only once
/// DST is usable, and fails with the daemon's own message otherwise.
enum BackgroundLauncher {
    /// glibc's POSIX_SPAWN_SETSID, hidden from Swift behind _GNU_SOURCE.
    private static let spawnSetSID: Int16 = 0x80

    static func launch(settings: MountSettings) throws {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { throw UsageError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        let (readEnd, writeEnd) = (ends[0], ends[1])
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC) // the child gets it again as fd 3, without the flag
        let readyDescriptor: Int32 = 3

        markInheritedDescriptorsCloseOnExec()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, readyDescriptor)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, spawnSetSID)

        // The daemon gets canonical absolute paths: it leaves the working directory for "/".
        var arguments = ["cachefs", "mount", settings.source, settings.mountpoint,
                         "--capacity", String(settings.capacity), "--block-size", String(settings.blockSize),
                         "--metadata-timeout", String(settings.metadataTimeout), "--threads", String(settings.threads),
                         "--prefetch-depth", String(settings.prefetchDepth), "--prefetch-threads", String(settings.prefetchThreads),
                         "--prefetch-chunk", String(settings.prefetchChunk),
                         "--read-ahead", String(settings.readAhead),
                         "--control-socket", settings.controlSocket, "--log-level", settings.logLevel.rawValue,
                         "--force", "--ready-fd", String(readyDescriptor)]
        if settings.allowOther { arguments.append("--allow-other") }
        if let logFile = settings.logFile { arguments += ["--log-file", logFile] }
        if let metrics = settings.metrics { arguments += ["--metrics", metrics.description] }
        for pattern in settings.preload { arguments += ["--preload", pattern] }
        if settings.preloadPin { arguments.append("--preload-pin") }
        arguments += ["--shutdown-grace", String(settings.shutdownGrace)]
        arguments += settings.peers.arguments
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }

        var pid = pid_t()
        let spawned = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, environ)
        close(writeEnd)
        guard spawned == 0 else {
            close(readEnd)
            throw UsageError("cannot start the daemon: \(String(cString: strerror(spawned)))")
        }
        let answer = readLine(readEnd).trimmingCharacters(in: .whitespacesAndNewlines)
        close(readEnd)
        if answer == "ok" { return }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        throw UsageError(answer.isEmpty ? "the daemon exited before the mount was ready" : answer)
    }

    /// A daemon must not hold descriptors its launcher inherited: a caller waiting
    /// for the launcher's pipes or sockets to close would wait for the daemon instead.
    private static func markInheritedDescriptorsCloseOnExec() {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for descriptor in entries.compactMap(Int32.init) where descriptor > STDERR_FILENO {
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
