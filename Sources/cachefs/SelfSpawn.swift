import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Starts this program again (`/proc/self/exe`) as one of its hidden subcommands, detached: in a
/// session of its own, with no signal blocked (the child blocks what it needs; the caller's blocked
/// set is not its business). The background daemon (`BackgroundLauncher`) and the mount keeper
/// (`MountKeeper`) are started this way.
enum SelfSpawn {
    /// glibc's POSIX_SPAWN_SETSID, hidden from Swift behind _GNU_SOURCE.
    private static let setSID: Int16 = 0x80

    /// - Parameters:
    ///   - arguments: the child's argv, `cachefs` and the subcommand first.
    ///   - standardInput: the child's standard input; /dev/null if nil.
    ///   - keepingOutput: the child writes to this process's standard output and error, not /dev/null.
    ///   - descriptors: each `source` becomes descriptor `target` in the child (without close-on-exec).
    /// - Returns: the child's process ID.
    /// - Throws: the error posix_spawn(3) gave.
    static func spawn(
        _ arguments: [String], standardInput: Int32? = nil, keepingOutput: Bool = false, descriptors: [(source: Int32, target: Int32)]
    ) throws(Errno) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let standardInput {
            posix_spawn_file_actions_adddup2(&actions, standardInput, STDIN_FILENO)
        } else {
            posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        }
        if !keepingOutput {
            posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0)
        }
        for (source, target) in descriptors { posix_spawn_file_actions_adddup2(&actions, source, target) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setflags(&attributes, setSID | Int16(POSIX_SPAWN_SETSIGMASK))

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, environ)
        guard spawned == 0 else { throw Errno(rawValue: spawned) }
        return pid
    }
}
