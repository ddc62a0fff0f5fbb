import Foundation
import Testing

/// cachefs over a source that behaves like an object store: every read pays a
/// latency, nothing is page-cached, and faults can be injected.
@Suite("Slow and failing sources", .serialized)
struct SlowSourceTests {
    let scratch: ScratchDirectory
    let data: String
    let source: TestSourceMount
    let mount: CachefsMount

    init() throws {
        scratch = try ScratchDirectory()
        data = try scratch.make("data")
        try shell(
            "head -c 40000000 /dev/urandom > model.bin && echo healthy > ok.txt && head -c 3000000 /dev/urandom > broken.bin", in: data)
        source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--latency-ms", "3", "--fail-file", "broken.bin", "--fail-offset", "2000000"])
        mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
    }

    @Test("Every byte read through a latency-bound source is right, and sequential reads are prefetched")
    func latencyBoundSequentialRead() throws {
        defer { mount.stop(); source.stop() }
        #expect(try shell("ls", in: mount.mountpoint) == "broken.bin\nmodel.bin\nok.txt\n")
        #expect(try run("/usr/bin/cmp", [data + "/model.bin", mount.mountpoint + "/model.bin"]).status == 0)
        let stats = try mount.stats()
        #expect(stats[.bytesFromSource] == 40_000_000, "each block is read from the source once")
        #expect(stats[.prefetchedBlocks] > 20, "sequential reading prefetched \(stats[.prefetchedBlocks]) blocks")
        // Random 4 KiB reads after a drop of the page cache: correct, and served from memory.
        try dropKernelCaches()
        let script = """
            import os, random, sys
            random.seed(1)
            a, b = open(sys.argv[1], 'rb'), open(sys.argv[2], 'rb')
            for _ in range(2000):
                offset = random.randrange(0, 40_000_000)
                a.seek(offset); b.seek(offset)
                assert a.read(4096) == b.read(4096), offset
            print('ok')
            """
        #expect(try run("python3", ["-c", script, data + "/model.bin", mount.mountpoint + "/model.bin"]).output == "ok\n")
        #expect(try mount.stats()[.bytesFromSource] == 40_000_000)
    }

    @Test("A source read error reaches the reader as EIO; the rest of the file and other files still read")
    func sourceErrorIsEIO() throws {
        defer { mount.stop(); source.stop() }
        let failed = try run(
            "python3",
            [
                "-c",
                """
                import os, sys
                fd = os.open(sys.argv[1], os.O_RDONLY)
                head = os.pread(fd, 4096, 0)
                try:
                    os.pread(fd, 4096, 2_500_000)
                    print('no error')
                except OSError as error:
                    print('errno', error.errno)
                """, mount.mountpoint + "/broken.bin",
            ])
        #expect(failed.output == "errno \(EIO)\n", "\(failed.output)\(failed.error)")
        #expect(try shell("cat ok.txt", in: mount.mountpoint) == "healthy\n")
        #expect(try mount.stats()[.sourceErrors] > 0)
    }

    @Test("A source that disappears gives EIO, and reads succeed again when it returns, without a restart")
    func sourceOutageAndRecovery() throws {
        defer { mount.stop(); source.stop() }
        source.signal(SIGUSR1)
        usleep(100_000)
        let during = try run("/bin/cat", [mount.mountpoint + "/model.bin"])
        #expect(during.status != 0 && during.error.contains("Input/output error"), "\(during.error)")
        source.signal(SIGUSR2)
        usleep(100_000)
        #expect(try run("/usr/bin/cmp", [data + "/model.bin", mount.mountpoint + "/model.bin"]).status == 0)
    }
}
