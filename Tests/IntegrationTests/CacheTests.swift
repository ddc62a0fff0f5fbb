import Foundation
import Testing

@Suite("Caching", .serialized)
struct CacheTests {
    @Test("A file read twice is served from daemon memory the second time")
    func secondReadHitsMemory() throws {
        // Passthrough off: a wholly cached file would otherwise be read by the kernel without the daemon
        // (PassthroughTests covers that path); this test is about the daemon's own memory hits.
        let tree = try MountedTree("head -c 20000000 /dev/urandom > model.safetensors", extra: ["--passthrough", "off"])
        defer { tree.stop() }
        let (source, mount) = (tree.source, tree.mount)
        let file = mount.mountpoint + "/model.safetensors"

        try shell("cat \(file) > /dev/null")
        let first = try mount.stats()
        #expect(first[.bytesFromSource] == 20_000_000)
        #expect(first[.misses] == 20) // 1 MiB blocks

        try dropKernelCaches() // the second read must reach the daemon, not the page cache
        #expect(try run("/usr/bin/cmp", [source + "/model.safetensors", file]).status == 0)
        let second = try mount.stats()
        #expect(second[.bytesFromSource] == first[.bytesFromSource], "the second read went to the source")
        #expect(second[.hits] >= first[.hits] + 20)
        #expect(second[.cachedBytes] == 20_000_000)
    }

    @Test("An unchanged file keeps the kernel page cache between opens")
    func pageCacheKeptAcrossOpens() throws {
        let tree = try MountedTree("head -c 8000000 /dev/urandom > model.ckpt")
        defer { tree.stop() }
        let mount = tree.mount
        try shell("cat model.ckpt > /dev/null", in: mount.mountpoint) // first open: hash
        let afterFirst = try mount.stats()
        try shell("cat model.ckpt > /dev/null", in: mount.mountpoint) // second open: load
        let afterSecond = try mount.stats()
        #expect(afterSecond[.readRequests] == afterFirst[.readRequests], "the second open re-read through the daemon")
    }

    /// Reads MIRROR whole through one descriptor, checks it against SOURCE, and prints the bytes of
    /// MIRROR in the mount's page cache (cachestat(2)) while that descriptor is still open.
    static let pageCacheAfterRead = #"""
        import ctypes, os, sys
        mirror, source = sys.argv[1:3]
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(mirror, os.O_RDONLY)
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        assert data == open(source, "rb").read(), "bytes differ"
        span, stat = (ctypes.c_uint64 * 2)(0, 0), (ctypes.c_uint64 * 5)()
        if libc.syscall(451, fd, span, stat, 0) != 0:  # cachestat(2)
            raise OSError(ctypes.get_errno(), "cachestat")
        print(stat[0] * os.sysconf("SC_PAGE_SIZE"))
        """#

    @Test(
        "A cold read bypasses the mount's page cache (direct I/O, one copy per reply); once the file is wholly cached, reads fill the page cache again; --direct-io off reads through it from the start"
    )
    func coldReadsBypassPageCache() throws {
        // Passthrough off, so that the warm open is daemon-served too and its use of the page cache shows.
        let tree = try MountedTree("head -c 12000000 /dev/urandom > model.bin", extra: ["--passthrough", "off"])
        defer { tree.stop() }
        let arguments = ["-c", Self.pageCacheAfterRead, tree.mount.mountpoint + "/model.bin", tree.source + "/model.bin"]
        let cold = try run("python3", arguments)
        #expect(cold.status == 0 && cold.output == "0\n", "cold: \(cold.output)\(cold.error)")
        #expect(try tree.mount.stats()[.directIOOpens] == 1)
        let warm = try run("python3", arguments)
        #expect(warm.status == 0 && (Int(warm.output.dropLast()) ?? 0) >= 12_000_000, "warm: \(warm.output)\(warm.error)")
        #expect(try tree.mount.stats()[.directIOOpens] == 1, "a wholly cached file was opened with direct I/O")

        let cached = try MountedTree("head -c 12000000 /dev/urandom > model.bin", extra: ["--direct-io", "off"])
        defer { cached.stop() }
        let read = try run(
            "python3", ["-c", Self.pageCacheAfterRead, cached.mount.mountpoint + "/model.bin", cached.source + "/model.bin"])
        #expect(read.status == 0 && (Int(read.output.dropLast()) ?? 0) >= 12_000_000, "--direct-io off, cold: \(read.output)\(read.error)")
        #expect(try cached.mount.stats()[.directIOOpens] == 0)
    }

    @Test("Reading four times the capacity keeps peak RSS under capacity + 64 MiB")
    func memoryStaysBounded() throws {
        let tree = try MountedTree("for i in 1 2 3 4; do head -c 67108864 /dev/urandom > part$i; done", capacity: "64M")
        defer { tree.stop() }
        let mount = tree.mount
        try shell("cat part1 part2 part3 part4 > /dev/null", in: mount.mountpoint)
        let stats = try mount.stats()
        #expect(stats[.bytesFromSource] == 4 * 67_108_864)
        #expect(stats[.cachedBytes] <= 64 << 20)
        #expect(stats[.evictions] > 0)
        let peak = try mount.peakResidentBytes()
        #expect(peak < (64 << 20) + (64 << 20), "peak RSS \(peak >> 20) MiB")
    }

    @Test("A missing name reaches the reader as ENOENT, and the daemon keeps serving")
    func missingNameIsENOENT() throws {
        let tree = try MountedTree("echo ok > present")
        defer { tree.stop() }
        let mount = tree.mount
        let missing = try run("/bin/cat", [mount.mountpoint + "/absent"])
        #expect(missing.status != 0 && missing.error.contains("No such file or directory"))
        #expect(try shell("cat present", in: mount.mountpoint) == "ok\n")
    }
}
