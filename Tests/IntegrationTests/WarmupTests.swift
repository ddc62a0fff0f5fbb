import ControlPlane
import Foundation
import Reporting
import Testing

/// `cachefs warm`/`unpin` against a mount started by the test, through its control socket.
private func cachefs(_ arguments: [String], _ mount: CachefsMount) throws -> CommandResult {
    try run(cachefsBinary, arguments + ["--control-socket", mount.controlSocket], timeout: 120)
}

@Suite("Warm-up and pinning", .serialized)
struct WarmupTests {
    @Test("A pinned directory stays in memory while more than the capacity of other data is read; unpin releases it")
    func pinnedDirectorySurvivesPressure() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell(
            """
            mkdir -p models/base models/other
            head -c 16000000 /dev/urandom > models/base/unet.safetensors
            head -c 8000000 /dev/urandom > models/base/vae.safetensors
            for i in 1 2 3; do head -c 30000000 /dev/urandom > models/other/lora$i.safetensors; done
            """, in: source)
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"), capacity: "64M")
        defer { mount.stop() }
        let base = mount.mountpoint + "/models/base"

        let warmed = try cachefs(["warm", base, "--pin"], mount)
        #expect(warmed.status == 0, "\(warmed.error)")
        #expect(warmed.output.contains("warmed and pinned 2 files"), "\(warmed.output)")
        let afterWarm = try mount.stats()
        #expect(afterWarm[.pinnedBytes] == 24_000_000 && afterWarm[.pinnedFiles] == 2)
        #expect(afterWarm[.pinnedCachedBytes] == 24_000_000)
        #expect(afterWarm[.bytesFromSource] == 24_000_000)
        #expect(afterWarm[.readRequests] == 0, "warming must not go through the kernel")

        // 90 MB of other files through a 64 MiB cache: everything evictable is evicted.
        try shell("cat models/other/* > /dev/null", in: mount.mountpoint)
        let afterPressure = try mount.stats()
        #expect(afterPressure[.evictions] > 0)
        #expect(afterPressure[.pinnedCachedBytes] == 24_000_000)

        try dropKernelCaches()
        for name in ["unet", "vae"] {
            let file = "/models/base/\(name).safetensors"
            #expect(try run("/usr/bin/cmp", [source + file, mount.mountpoint + file]).status == 0)
        }
        let afterReread = try mount.stats()
        #expect(afterReread[.bytesFromSource] == afterPressure[.bytesFromSource], "a pinned file was read from the source again")
        // Pinned files are wholly in memory, so the kernel reads them from there itself (passthrough).
        #expect(afterReread[.passthroughOpens] == afterPressure[.passthroughOpens] + 2, "a pinned file was not opened from memory")
        #expect(afterReread[.readRequests] == afterPressure[.readRequests], "a pinned file was read through the daemon")

        // More than the capacity left is refused whole, with one line and a non-zero exit.
        let refused = try cachefs(["warm", mount.mountpoint + "/models/other", "--pin"], mount)
        #expect(refused.status != 0)
        #expect(
            refused.error.split(separator: "\n").count == 1 && refused.error.hasPrefix("cachefs: cannot pin 3 files"), "\(refused.error)")
        let afterRefusal = try mount.stats()
        #expect(afterRefusal[.pinnedBytes] == 24_000_000 && afterRefusal[.pinnedFiles] == 2)

        let unpinned = try cachefs(["unpin", base], mount)
        #expect(unpinned.status == 0 && unpinned.output.contains("unpinned 2 files"), "\(unpinned.output)\(unpinned.error)")
        let afterUnpin = try mount.stats()
        #expect(afterUnpin[.pinnedBytes] == 0 && afterUnpin[.pinnedFiles] == 0 && afterUnpin[.pinnedCachedBytes] == 0)
        #expect(afterUnpin[.cachedBytes] <= 64 << 20)
    }

    @Test("warm without --pin loads files that later reads find in memory; bad paths fail with one line")
    func warmWithoutPinAndBadPaths() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 5000000 /dev/urandom > model.bin && ln -s model.bin alias && mkdir empty", in: source)
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"), capacity: "64M")
        defer { mount.stop() }

        let warmed = try cachefs(["warm", mount.mountpoint + "/model.bin"], mount)
        #expect(warmed.status == 0 && warmed.output.contains("warmed model.bin (1/1 files"), "\(warmed.output)\(warmed.error)")
        #expect(try mount.stats()[.cachedBytes] == 5_000_000)
        #expect(try mount.stats()[.pinnedBytes] == 0)
        try shell("cat \(mount.mountpoint)/model.bin > /dev/null")
        let afterRead = try mount.stats()
        #expect(afterRead[.bytesFromSource] == 5_000_000, "the read after warm-up went to the source")
        #expect(afterRead[.sourceReads] == 0)

        let empty = try cachefs(["warm", mount.mountpoint + "/empty"], mount)
        #expect(empty.status == 0 && empty.output.contains("warmed 0 files"), "\(empty.output)\(empty.error)")

        for (path, fragment) in [(mount.mountpoint + "/absent", "No such file"), (scratch.path, "not inside a cachefs mount")] {
            let result = try cachefs(["warm", path], mount)
            #expect(result.status != 0)
            #expect(result.error.split(separator: "\n").count == 1 && result.error.contains(fragment), "\(result.error)")
        }
        let noDaemon = try run(cachefsBinary, ["warm", mount.mountpoint, "--control-socket", scratch.path + "/none.sock"])
        #expect(noDaemon.status != 0 && noDaemon.error.contains("no cachefs daemon answers"), "\(noDaemon.error)")
    }

    @Test("--preload warms (and with --preload-pin, pins) matching files at start, without any read")
    func preloadAtStart() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell(
            """
            mkdir -p models/sd other
            head -c 3000000 /dev/urandom > models/sd/base.safetensors
            head -c 2000000 /dev/urandom > models/sd/refiner.safetensors
            head -c 1000000 /dev/urandom > models/sd/notes.txt
            head -c 4000000 /dev/urandom > other/big.safetensors
            """, in: source)
        let mount = try CachefsMount(
            source: source, mountpoint: try scratch.make("mnt"), capacity: "64M",
            extra: ["--preload", "models/*.safetensors", "--preload", "absent/*", "--preload-pin"])
        defer { mount.stop() }
        #expect(try eventually(within: 20) { try mount.stats()[.cachedBytes] == 5_000_000 }, "\(mount.log)")
        let stats = try mount.stats()
        #expect(stats[.readRequests] == 0)
        #expect(stats[.bytesFromSource] == 5_000_000, "only the matching files are loaded")
        #expect(stats[.pinnedBytes] == 5_000_000 && stats[.pinnedFiles] == 2)
        #expect(mount.log.contains("preload: done"))
    }
}
