import ControlPlane
import Foundation
import Reporting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A mount started in the background (the default, and what fstab does) runs with
/// exactly the settings it was given: the launcher hands them to the daemon whole.
@Suite("Settings reach the daemon", .serialized)
struct SettingsTests {
    /// Mounts in the background (no -f) and returns the daemon's pid, from its own stats.
    private func backgroundMount(_ arguments: [String], controlSocket: String) throws -> Int32 {
        let result = try run(cachefsBinary, arguments + ["--control-socket", controlSocket], timeout: 60)
        guard result.status == 0 else { throw TestFailure("background mount failed: \(result.error)") }
        let stats = try run(cachefsBinary, ["stats", arguments[1], "--json", "--control-socket", controlSocket], timeout: 30)
        guard stats.status == 0 else { throw TestFailure("stats failed: \(stats.error)") }
        return try JSONDecoder().decode(StatsReport.self, from: Data(stats.output.utf8)).pid
    }

    @Test("A background mount with every option away from its default reports each of them in stats --json")
    func backgroundMountKeepsEverySetting() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 100000 /dev/urandom > src/a.bin && echo secret-token > token", in: scratch.path)
        let mountpoint = try scratch.make("mnt")
        let socket = scratch.path + "/control.sock"
        let log = scratch.path + "/daemon.log"
        let pid = try backgroundMount(
            [
                source, mountpoint, "--capacity", "96M", "--block-size", "256K", "--metadata-timeout", "0.5",
                "--source-timeout", "7", "--threads", "5", "--prefetch-depth", "6", "--prefetch-threads", "3",
                "--prefetch-chunk", "2", "--read-ahead", "2M", "--allow-other", "--log-level", "debug", "--log-file", log,
                "--metrics", "127.0.0.1:0", "--preload", "*.bin", "--preload-pin", "--shutdown-grace", "2",
                "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:9", "--peer-token-file", scratch.path + "/token",
                "--passthrough", "off", "--direct-io", "off",
            ], controlSocket: socket)
        defer { stopBackgroundDaemon(pid: pid, mountpoint: mountpoint) }
        let stats = try run(cachefsBinary, ["stats", mountpoint, "--json", "--control-socket", socket])
        let settings = try JSONDecoder().decode(StatsReport.self, from: Data(stats.output.utf8)).settings
        var expected = MountSettings(source: source, mountpoint: mountpoint, capacity: 96 << 20)
        expected.blockSize = 256 << 10
        expected.metadataTimeout = 0.5
        expected.sourceTimeout = 7
        expected.threads = 5
        expected.prefetchDepth = 6
        expected.prefetchThreads = 3
        expected.prefetchChunk = 2
        expected.readAhead = 2 << 20
        expected.allowOther = true
        expected.controlSocket = socket
        expected.logLevel = .debug
        expected.logFile = log
        expected.metrics = .init(host: "127.0.0.1", port: 0)
        expected.preload = ["*.bin"]
        expected.preloadPin = true
        expected.shutdownGrace = 2
        expected.listen = .init(host: "127.0.0.1", port: 0)
        expected.peers = [.init(host: "127.0.0.1", port: 9)]
        expected.peerTokenFile = scratch.path + "/token"
        expected.passthrough = false
        expected.directIO = false
        #expect(settings == expected)
        // Every setting differs from its default here, so none can have been dropped on the way.
        for (name, value) in zip(Mirror(reflecting: expected).children, Mirror(reflecting: MountSettings.defaults).children)
        where !["source", "mountpoint", "capacity"].contains(name.label!) {
            #expect("\(name.value)" != "\(value.value)", "\(name.label!) is at its default in the test")
        }
        #expect(!stats.output.contains("secret-token"), "the peer token must never be shown")
        // The debug level and the log file took effect.
        #expect(eventually(within: 5) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains(" debug ") })
    }

    @Test("A background mount honours --source-timeout: a stalled source gives EIO within 3 s")
    func backgroundMountHonoursSourceTimeout() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 2000000 /dev/urandom > stall.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stall*", "--stall-seconds", "20"])
        defer { source.stop() }
        defer { source.signal(SIGUSR2) }
        let mountpoint = try scratch.make("mnt")
        let pid = try backgroundMount(
            [source.mountpoint, mountpoint, "--capacity", "64M", "--source-timeout", "1"],
            controlSocket: scratch.path + "/control.sock")
        defer { stopBackgroundDaemon(pid: pid, mountpoint: mountpoint) }
        let started = Date()
        let read = try run("/bin/dd", ["if=\(mountpoint)/stall.bin", "of=/dev/null", "bs=1M"], timeout: 30)
        let seconds = Date().timeIntervalSince(started)
        #expect(read.status != 0 && read.error.contains("Input/output error"), "\(read.error)")
        #expect(seconds < 3, "the reader waited \(seconds) s with --source-timeout 1")
    }
}
