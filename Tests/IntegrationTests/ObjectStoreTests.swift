import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// cachefs over object-store FUSE clients (issue 16). s3fs, and ossfs which is its fork,
/// give a file a new inode number each time the kernel forgets it and looks it up again;
/// cachefs must still recognise the file (its path, size and mtime are unchanged) and
/// serve it from memory, and must still tell a replaced object by its new mtime.
@Suite("Object-store sources", .serialized)
struct ObjectStoreTests {
    /// Guards issue 16: a model read again after the kernel forgot it must come from memory,
    /// not from the object store, even though the source renumbered the file.
    @Test(
        "A file read three times, the kernel's caches dropped before each read, is read from the source once",
        arguments: ObjectStoreKind.allCases)
    func readFromSourceOnceDespiteNewInodes(kind: ObjectStoreKind) throws {
        let size = 64 << 20 // a second's worth of moto_server
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("mkdir models && head -c \(size) /dev/urandom > models/model.bin", in: data)
        let source = try kind.mount(data: data, at: try scratch.make("source"))
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }

        var sourceInodes: [UInt64] = []
        for read in 1...3 {
            try dropKernelCachesOfBothLayers()
            sourceInodes.append(UInt64(try fileStatus(source.mountpoint + "/models/model.bin").st_ino))
            let compared = try run("/usr/bin/cmp", [data + "/models/model.bin", mount.mountpoint + "/models/model.bin"])
            #expect(compared.status == 0, "read \(read): \(compared.output)\(compared.error)")
        }
        // Otherwise this test would not test anything: the source must really renumber the file.
        #expect(Set(sourceInodes).count == 3, "the source kept its inode numbers: \(sourceInodes)")
        let fromSource = try mount.stats()[.bytesFromSource]
        #expect(
            Double(fromSource) <= 1.05 * Double(size),
            "\(fromSource) bytes read from the source for a \(size)-byte file read 3 times (\(String(format: "%.2f", Double(fromSource) / Double(size)))x); source inodes \(sourceInodes)"
        )
    }

    /// Every byte cachefs caches would otherwise sit in memory once more, in the source mount's
    /// page cache, and reading through it cost the daemon about twice the CPU (see SourceAccess).
    @Test(
        "Over an object-store client's mount, a file reads exactly and leaves none of its bytes in the source's page cache (O_DIRECT)",
        arguments: PageCachedClient.allCases)
    func sourcePageCacheStaysEmpty(client: PageCachedClient) throws {
        let size = 32 << 20
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c \(size) /dev/urandom > model.bin", in: data)
        let source = try client.mount(data: data, at: try scratch.make("source"))
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        try dropKernelCaches()
        let probe = try run(
            "python3", ["-c", sourcePageCacheProbe, source.mountpoint + "/model.bin", data + "/model.bin", mount.mountpoint + "/model.bin"])
        #expect(probe.status == 0, "the mirror's bytes differ, or the probe failed: \(probe.output)\(probe.error)")
        let cached = Dictionary(
            probe.output.split(separator: "\n").compactMap { line -> (String, Int)? in
                let words = line.split(separator: " ")
                return words.count == 2 ? (String(words[0]), Int(words[1]) ?? -1) : nil
            }
        ) { $1 }
        #expect(try mount.stats()[.bytesFromSource] >= UInt64(size), "the bytes did not come from the source")
        #expect(cached["mirror-read"] == 0, "bytes of the source's page cache after reading the mirror")
        // Otherwise this test would not test anything: a plain read of the source does fill its page cache.
        #expect((cached["source-read"] ?? 0) > size / 2, "bytes of the source's page cache after reading it")
    }

    /// Guards the identity change against staleness: with the inode out of the identity, a
    /// replaced object must still be told by its new mtime (size unchanged), promptly, and each
    /// version must still be read from the source only once.
    @Test(
        "A replaced file is served with its new bytes within --metadata-timeout, never its old ones after, each version read from the source once",
        arguments: ObjectStoreKind.allCases)
    func replacedFileIsFreshAndReadOnce(kind: ObjectStoreKind) throws {
        let size = 16 << 20
        let metadataTimeout = 0.5
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        let newFile = scratch.path + "/new.bin"
        try shell("mkdir models && head -c \(size) /dev/urandom > models/model.bin && head -c \(size) /dev/urandom > \(newFile)", in: data)
        let oldBytes = try Data(contentsOf: URL(fileURLWithPath: data + "/models/model.bin"))
        let newBytes = try Data(contentsOf: URL(fileURLWithPath: newFile))
        let source = try kind.mount(data: data, at: try scratch.make("source"))
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--metadata-timeout", "\(metadataTimeout)"])
        defer { mount.stop() }
        let mirrored = mount.mountpoint + "/models/model.bin", sourceFile = source.mountpoint + "/models/model.bin"

        #expect(try Data(contentsOf: URL(fileURLWithPath: mirrored)) == oldBytes)
        let oldModified = try modificationTime(sourceFile)
        try source.replace("models/model.bin", with: newFile)
        // cachefs answers for freshness from the moment its source shows the change
        // (s3fs: after its attribute timeout and its stat cache, about 2 s).
        try #require(
            try eventually(within: 10) { try modificationTime(sourceFile) != oldModified },
            "the source never showed the new mtime")
        let sourceChanged = Date()

        var firstNewRead: Double?
        while firstNewRead == nil && Date().timeIntervalSince(sourceChanged) < metadataTimeout + 2 {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: mirrored)) // a new open each time
            if bytes == newBytes {
                firstNewRead = Date().timeIntervalSince(sourceChanged)
            } else {
                #expect(bytes == oldBytes, "bytes of neither version")
                usleep(50_000)
            }
        }
        #expect(
            firstNewRead.map { $0 <= metadataTimeout + 1 } == true,
            "new bytes \(firstNewRead.map { String(format: "%.2f s", $0) } ?? "never seen") after the source showed them, with --metadata-timeout \(metadataTimeout)"
        )
        for read in 1...3 {
            try dropKernelCachesOfBothLayers()
            #expect(try Data(contentsOf: URL(fileURLWithPath: mirrored)) == newBytes, "read \(read) after the change: old bytes")
        }
        let fromSource = try mount.stats()[.bytesFromSource]
        #expect(
            Double(fromSource) <= 1.05 * Double(2 * size),
            "\(fromSource) bytes read from the source for two versions of \(size) bytes (\(String(format: "%.2f", Double(fromSource) / Double(size)))x one version)"
        )
    }

    /// Guards the warm-up's open against a source that never answers it (a hard-mounted NAS,
    /// an object-store client stuck fetching metadata): `cachefs warm` must give up after
    /// --source-timeout, as reads through the mount do, instead of hanging with the source.
    @Test("cachefs warm of a file whose source open stalls fails after --source-timeout instead of hanging")
    func warmOfStalledOpenTimesOut() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 4000000 /dev/urandom > stalled.bin", in: data)
        let stallSeconds = 10
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-open", "stalled.bin", "--stall-seconds", "\(stallSeconds)"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"), extra: ["--source-timeout", "1"])
        defer { mount.stop() }
        defer { source.signal(SIGUSR2) } // ends the stalls first, so that the source can stop
        let file = mount.mountpoint + "/stalled.bin"

        // An open through the mount already has the deadline (and shows --stall-open stalls opens).
        let opened = try run("python3", ["-c", FaultTests.timedReader, file], timeout: 60).output
        #expect(opened.hasPrefix("errno \(EIO) "), "open through the mount: \(opened)")
        #expect(
            (Double(opened.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? .infinity) < 2.5,
            "open through the mount: \(opened)")

        let start = Date()
        let warmed = try run(cachefsBinary, ["warm", file, "--control-socket", mount.controlSocket], timeout: 60)
        let seconds = Date().timeIntervalSince(start)
        #expect(warmed.status != 0, "warm succeeded after \(String(format: "%.1f", seconds)) s, the open having stalled \(stallSeconds) s")
        #expect(seconds < 3, "warm took \(String(format: "%.1f", seconds)) s with --source-timeout 1 (status \(warmed.status))")
    }
}
