import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Shutdown grace", .serialized)
struct ShutdownGraceTests {
    @Test(
        "SIGTERM during a read waiting on the source: the mount stays through the grace, the read finishes with the right bytes, then the mount goes"
    )
    func readInFlightFinishes() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 2000000 /dev/urandom > stalled.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stalled.bin", "--stall-seconds", "2"])
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--shutdown-grace", "10", "--prefetch-depth", "0"])
        defer { mount.stop() }

        let reader = ChildProcess()
        reader.executableURL = URL(fileURLWithPath: "/usr/bin/cmp")
        reader.arguments = [data + "/stalled.bin", mount.mountpoint + "/stalled.bin"]
        try reader.run()
        // The first block's load is now stalled at the source for 2 s.
        #expect(eventually(within: 5) { mount.log.contains("stalled") || (try? mount.stats()[.misses]) ?? 0 > 0 })
        kill(mount.pid, SIGTERM)
        // Within the grace, the mount stays while the read waits on the source (without one it goes at once).
        usleep(500_000)
        #expect(isMounted(mount.mountpoint), "unmounted during the grace while a read was in progress")
        reader.waitUntilExit()
        #expect(reader.terminationStatus == 0, "the read in flight at SIGTERM failed or returned wrong bytes")
        #expect(eventually(within: 10) { !isMounted(mount.mountpoint) })
        #expect(mount.stop() == 0)
        #expect(mount.log.contains("reads in progress=1"), "\(mount.log)")
    }
}
