import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every thread the daemon starts has an owner that stops and joins it: after the mount goes, the
/// process is gone within --shutdown-grace, and it says that every thread it owned was joined.
@Suite("Thread ownership", .serialized)
struct ThreadOwnershipTests {
    /// The names of the daemon's threads now (/proc/PID/task/*/comm).
    static func threadNames(_ pid: Int32) -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { readToEnd("/proc/\(pid)/task/\($0)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    @Test("After an unmount the daemon exits within --shutdown-grace, having joined every thread it started")
    func everyThreadJoinedAtExit() throws {
        let tree = try MountedTree("head -c 20000000 /dev/urandom > model.bin", extra: ["--shutdown-grace", "3"])
        defer { tree.stop() }
        let mount = tree.mount
        try shell("cat model.bin > /dev/null", in: mount.mountpoint)
        // The threads the daemon owns are there while it serves (a source-call thread is started per call
        // that finds none idle; prefetch threads from the start), so the check at exit is not an empty one.
        let serving = Self.threadNames(mount.pid)
        #expect(
            serving.contains("prefetch-0") && serving.contains("source-call") && serving.contains("fuse-loop")
                && serving.contains("signals"),
            "\(serving)")

        let unmounted = ContinuousClock.now
        try run("/bin/fusermount3", ["-u", mount.mountpoint])
        #expect(eventually(within: 3) { !mount.isRunning }, "the daemon outlived --shutdown-grace after the unmount")
        #expect(ContinuousClock.now - unmounted < .seconds(3))
        #expect(mount.log.contains("every owned thread joined"), "\(mount.log)")
        #expect(!mount.log.contains("threads still busy"), "\(mount.log)")
    }

    /// A read sent to a hung FUSE source cannot be interrupted, not even by the exit: the kernel lets the
    /// process go only once that read returns. The daemon's own part ends within the grace.
    @Test("A thread stuck in a hung source does not hold the daemon's shutdown past --shutdown-grace; it is named as the daemon ends")
    func stuckThreadDoesNotHoldTheShutdown() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 4000000 /dev/urandom > model.bin", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: [])
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--source-timeout", "1", "--shutdown-grace", "2", "--prefetch-depth", "0"])
        defer {
            source.signal(SIGUSR2) // the source answers again: the stuck read returns, and the process can go
            mount.stop()
        }
        source.signal(SIGHUP)
        usleep(100_000)
        _ = try? run("/usr/bin/cat", [mount.mountpoint + "/model.bin"], timeout: 10) // EIO after the source timeout
        let unmounted = ContinuousClock.now
        try run("/bin/fusermount3", ["-u", mount.mountpoint])
        #expect(eventually(within: 5) { mount.log.contains("threads still busy at exit") })
        let ended = ContinuousClock.now - unmounted
        #expect(ended >= .seconds(2) && ended < .seconds(4), "the daemon ended \(ended) after the unmount (grace 2 s)")
        #expect(mount.log.contains("source-call"), "\(mount.log)")
        source.signal(SIGUSR2)
        #expect(eventually(within: 5) { !mount.isRunning }, "the process did not go once the stuck read returned")
    }
}
