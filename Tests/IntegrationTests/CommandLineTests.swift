import Foundation
import Testing

@Suite("Command line", .serialized)
struct CommandLineTests {
    /// Runs cachefs expecting failure: one line on stderr, a non-zero exit, no mount left.
    /// - Parameter launcher: a command that runs cachefs (e.g. in another namespace), given before it.
    private func expectCleanFailure(
        _ arguments: [String], mentioning fragment: String, scratch: ScratchDirectory, launcher: [String] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let mountsBefore = mountedPaths(under: scratch.path)
        let command = launcher + [cachefsBinary] + arguments
        let result = try run(command[0], Array(command.dropFirst()), timeout: 30)
        #expect(result.status != 0, "\(arguments) succeeded", sourceLocation: sourceLocation)
        let lines = result.error.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(result.error)", sourceLocation: sourceLocation)
        #expect(
            result.error.hasPrefix("cachefs: ") && result.error.contains(fragment),
            "\(result.error) should mention \(fragment)", sourceLocation: sourceLocation)
        #expect(mountedPaths(under: scratch.path) == mountsBefore, "a mount was left behind", sourceLocation: sourceLocation)
    }

    @Test("Bad invocations fail with one clear line and leave nothing mounted")
    func badInvocations() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        try shell("echo x > file && mkdir inner", in: source)
        let file = source + "/file"
        let cases: [([String], String)] = [
            ([scratch.path + "/absent", mountpoint, "--capacity", "1G"], "No such file or directory"),
            ([file, mountpoint, "--capacity", "1G"], "is not a directory"),
            ([source, scratch.path + "/absent", "--capacity", "1G"], "No such file or directory"),
            ([source, file, "--capacity", "1G"], "is not a directory"),
            ([source, source, "--capacity", "1G"], "inside the source"),
            ([source, source + "/inner", "--capacity", "1G"], "inside the source"),
            ([source, mountpoint, "--capacity", "lots"], "lots"),
            ([source, mountpoint, "--capacity", "0"], "capacity"),
            ([source, mountpoint, "--capacity", "-5G"], "capacity"),
            ([source, mountpoint, "--capacity", "1.5X"], "1.5X"),
            ([source, mountpoint, "--capacity", "100T"], "--force"),
            ([source, mountpoint, "--capacity", "1G", "--block-size", "3M"], "power of two"),
            ([source, mountpoint], "capacity"),
            ([source, mountpoint, "--capacity", "64M", "--control-socket", "/proc/none/control.sock"], "cannot create /proc/none"),
        ]
        for (arguments, fragment) in cases {
            try expectCleanFailure(arguments, mentioning: fragment, scratch: scratch)
        }
    }

    @Test(
        "In a PID namespace whose /proc is another's (unshare without --mount-proc), a mount is refused in one line: libdispatch would crash the daemon at a random moment"
    )
    func foreignProc() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        for extra in [[], ["--foreground"]] {
            try expectCleanFailure(
                [source, mountpoint, "--capacity", "64M"] + extra, mentioning: "/proc belongs to another PID namespace", scratch: scratch,
                launcher: ["unshare", "--pid", "--fork"])
        }
    }

    @Test("A mountpoint that is already mounted is refused")
    func alreadyMounted() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        try expectCleanFailure([source, mount.mountpoint, "--capacity", "64M"], mentioning: "already a mount point", scratch: scratch)
        #expect(isMounted(mount.mountpoint), "the first mount must survive")
    }

    @Test("By default the command returns once the mount answers; fusermount3 -u ends the daemon")
    func backgroundDaemon() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        try shell("echo served > file", in: source)
        let started = try run(cachefsBinary, [source, mountpoint, "--capacity", "64M"], timeout: 30)
        #expect(started.status == 0, "\(started.error)")
        #expect(started.error.isEmpty && started.output.isEmpty)
        #expect(try shell("cat file", in: mountpoint) == "served\n")
        let stats = try run(cachefsBinary, ["stats", mountpoint], timeout: 30)
        #expect(stats.status == 0 && statsRows(stats.output)["capacity"] == "64 MiB", "\(stats.output)\(stats.error)")
        let json = try run(cachefsBinary, ["stats", mountpoint, "--json"], timeout: 30)
        let pid = try JSONDecoder().decode(StatsShape.self, from: Data(json.output.utf8)).pid

        try shell("fusermount3 -u \(mountpoint)")
        #expect(eventually(within: 5) { kill(pid, 0) != 0 }, "the daemon outlived its mount")
        #expect(!isMounted(mountpoint))
    }

    /// Guards that each way of ending the daemon ends the process itself, not only the mount:
    /// `stop()` would SIGTERM a daemon that lingered (and get exit 0 from it), so the test
    /// waits for the process to exit by itself before asking for its status.
    @Test("SIGTERM and SIGINT unmount cleanly and exit 0; umount ends the daemon too")
    func signalsAndUmount() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        for signal in [SIGTERM, SIGINT] {
            let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt-\(signal)"))
            defer { mount.stop() }
            kill(mount.pid, signal)
            #expect(eventually(within: 10) { !isMounted(mount.mountpoint) })
            #expect(eventually(within: 10) { !mount.isRunning }, "the daemon did not exit after signal \(signal)")
            #expect(mount.stop() == 0)
        }
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt-umount"))
        defer { mount.stop() }
        try shell("umount \(mount.mountpoint)")
        #expect(eventually(within: 10) { !isMounted(mount.mountpoint) })
        #expect(eventually(within: 10) { !mount.isRunning }, "the daemon outlived a umount from outside")
        #expect(mount.stop() == 0)
    }

    @Test("mount(8)-style -o options work, as mount.fuse3 and /etc/fstab pass them")
    func mountHelperOptions() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        let started = try run(
            cachefsBinary, [source, mountpoint, "-o", "capacity=96M,allow_other,_netdev,nodev,rw,block_size=2M"], timeout: 30)
        #expect(started.status == 0, "\(started.error)")
        defer { _ = try? run("/bin/fusermount3", ["-u", mountpoint]) }
        let stats = try run(cachefsBinary, ["stats", mountpoint], timeout: 30)
        #expect(statsRows(stats.output)["capacity"] == "96 MiB" && statsRows(stats.output)["blockSize"] == "2 MiB", "\(stats.output)")
        #expect(try shell("grep ' \(mountpoint) ' /proc/mounts").contains("allow_other"))
        let unknown = try run(cachefsBinary, [source, scratch.path, "-o", "capacity=1G,colour=blue"])
        #expect(unknown.status != 0 && unknown.error.contains("colour"))
    }

    @Test("--help shows usage and examples")
    func help() throws {
        let result = try run(cachefsBinary, ["--help"])
        #expect(result.status == 0)
        #expect(result.output.contains("cachefs /data-slow /data-fast --capacity 20G"))
        let mountHelp = try run(cachefsBinary, ["mount", "--help"])
        #expect(mountHelp.output.contains("--capacity") && mountHelp.output.contains("--allow-other"))
    }

    private struct StatsShape: Decodable { var pid: Int32 }
}
