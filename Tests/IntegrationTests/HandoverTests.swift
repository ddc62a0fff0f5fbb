import ControlPlane
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Reads a file through the mount in 1 MiB reads on a thread of its own, comparing every byte with
/// the source's; records the first error or mismatch, and how far it got.
final class VerifyingReader: @unchecked Sendable {
    private let state = Mutex<(done: Int64, failure: String?, finished: Bool)>((0, nil, false))

    init(mounted: String, source: String) {
        Thread { [self] in
            let failure = Self.verify(mounted: mounted, source: source) { done in self.state.withLock { $0.done = done } }
            state.withLock { state in
                state.failure = failure
                state.finished = true
            }
        }.start()
    }

    private static func verify(mounted: String, source: String, progress: (Int64) -> Void) -> String? {
        let through = open(mounted, O_RDONLY), original = open(source, O_RDONLY)
        defer { close(through); close(original) }
        guard through >= 0, original >= 0 else { return "cannot open: \(String(cString: strerror(errno)))" }
        let chunk = 1 << 20
        var got = [UInt8](repeating: 0, count: chunk), expected = [UInt8](repeating: 0, count: chunk)
        var offset: Int64 = 0
        while true {
            let count = got.withUnsafeMutableBytes { pread(through, $0.baseAddress, chunk, off_t(offset)) }
            if count < 0 { return "read at \(offset) failed: \(String(cString: strerror(errno)))" }
            let want = expected.withUnsafeMutableBytes { pread(original, $0.baseAddress, chunk, off_t(offset)) }
            guard count == want else { return "read at \(offset) returned \(count) bytes, the source has \(want)" }
            if count == 0 { return nil }
            guard got.prefix(count) == expected.prefix(count) else { return "wrong bytes at \(offset)" }
            offset += Int64(count)
            progress(offset)
        }
    }

    var bytesVerified: Int64 { state.withLock { $0.done } }
    var finished: Bool { state.withLock { $0.finished } }
    var failure: String? { state.withLock { $0.failure } }

    /// Waits for the end of the file (or a failure); false if it did not finish in time.
    func wait(seconds: Double) -> Bool { eventually(within: seconds) { finished } }
}

/// The memory files of a process whose name says they are ledgers.
private func ledgerDescriptors(of pid: Int32) -> [String] {
    let directory = "/proc/\(pid)/fd"
    return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).compactMap { name in
        let path = directory + "/" + name
        return (try? FileManager.default.destinationOfSymbolicLink(atPath: path))?.contains("cachefs-block-ledger") == true ? path : nil
    }
}

@Suite("Hand-over: a new daemon takes a live mount over", .serialized)
struct HandoverTests {
    @Test(
        "A reader verifying every byte of a 1 GiB file reads on while `cachefs mount` runs again with another --capacity; the new daemon keeps the cache: a cached file opens in passthrough with nothing from the source"
    )
    func handOverDuringARead() throws {
        let tree = try MountedTree(
            "head -c 1073741824 /dev/urandom > big && head -c 33554432 /dev/urandom > cached", capacity: "1536M")
        var newPid: Int32?
        defer { stopBackgroundDaemon(pid: newPid, mountpoint: tree.mount.mountpoint); tree.stop() }
        let old = tree.mount, source = tree.source, mountpoint = tree.mount.mountpoint
        try shell("cat cached > /dev/null && cat cached > /dev/null", in: mountpoint) // loaded, then opened in passthrough
        let before = try old.stats()
        #expect(before[.passthroughOpens] >= 1 && before[.cachedBytes] >= 32 << 20)

        let reader = VerifyingReader(mounted: mountpoint + "/big", source: source + "/big")
        #expect(eventually(within: 30) { reader.bytesVerified >= 128 << 20 || reader.finished })
        let log = tree.scratch.path + "/new.log"
        let handOver = try run(
            cachefsBinary,
            [
                "mount", source, mountpoint, "--capacity", "1600M", "--control-socket", old.controlSocket,
                "--log-file", log,
            ])
        #expect(handOver.status == 0, "\(handOver.error)")
        let handedOverAt = reader.bytesVerified
        #expect(reader.wait(seconds: 120), "the reader did not finish")
        #expect(reader.failure == nil, "\(reader.failure ?? "")")
        #expect(handedOverAt < 1 << 30, "the reader finished before the hand-over")

        let after = try CachefsMount.stats(mountpoint: mountpoint, controlSocket: old.controlSocket)
        newPid = after.pid
        #expect(after.pid != old.pid)
        #expect(after.settings.capacity == 1600 << 20, "capacity \(after.settings.capacity)")
        #expect(
            after.continuity?.start == .handOver && after.continuity?.predecessorPid == old.pid, "\(String(describing: after.continuity))")
        #expect(
            after.continuity?.inheritedBytes ?? 0 >= 32 << 20 && after.continuity?.droppedFiles == [],
            "\(String(describing: after.continuity))")
        #expect(after[.cachedBytes] >= before[.cachedBytes], "cached bytes went from \(before[.cachedBytes]) to \(after[.cachedBytes])")

        // The file cached before is a memory hit: opened in passthrough, nothing from the source.
        let fromSource = after[.bytesFromSource]
        try shell("cmp \(source)/cached \(mountpoint)/cached")
        let hit = try CachefsMount.stats(mountpoint: mountpoint, controlSocket: old.controlSocket)
        #expect(
            hit[.bytesFromSource] == fromSource,
            "reading the cached file loaded \(hit[.bytesFromSource] - fromSource) bytes from the source")
        #expect(hit[.passthroughOpens] == after[.passthroughOpens] + 1, "the cached file was not opened in passthrough")

        // The old foreground daemon waits for SIGTERM, holding no memory file of the cache.
        #expect(old.isRunning, "the old foreground daemon exited (its supervisor would start it again)")
        #expect(ledgerDescriptors(of: old.pid).isEmpty, "the old daemon still holds the cache's files")
        #expect(old.log.contains("handed the mount over"))
    }

    @Test(
        "A change that needs a new mount (--block-size, --allow-other, another source) is refused with one line; the old daemon serves on with its cache"
    )
    func refusedChangesLeaveTheOldDaemon() throws {
        let tree = try MountedTree("head -c 8388608 /dev/urandom > model.bin")
        defer { tree.stop() }
        let other = try tree.scratch.make("other")
        try shell("cat model.bin > /dev/null", in: tree.mount.mountpoint)
        let before = try tree.mount.stats()
        for (arguments, expected) in [(["--block-size", "2M"], "--block-size"), (["--allow-other"], "--allow-other")] {
            let result = try run(
                cachefsBinary,
                [
                    "mount", tree.source, tree.mount.mountpoint, "--capacity", "128M",
                    "--control-socket", tree.mount.controlSocket,
                ] + arguments)
            #expect(result.status != 0, "\(arguments) was accepted")
            #expect(result.error.split(separator: "\n").count == 1 && result.error.contains(expected), "\(result.error)")
        }
        let moved = try run(
            cachefsBinary, ["mount", other, tree.mount.mountpoint, "--capacity", "128M", "--control-socket", tree.mount.controlSocket])
        #expect(moved.status != 0 && moved.error.contains("keeps the source"), "\(moved.error)")
        let after = try tree.mount.stats()
        #expect(after.pid == tree.mount.pid && after.continuity?.start == .mounted)
        #expect(after[.cachedBytes] == before[.cachedBytes])
        try shell("cmp \(tree.source)/model.bin \(tree.mount.mountpoint)/model.bin")
        #expect(try tree.mount.stats()[.bytesFromSource] == before[.bytesFromSource], "the old daemon lost its cache")
    }

    @Test(
        "A ledger altered before the hand-over is detected: that file's cache is dropped and read again from the source, the others are kept, every byte right"
    )
    func corruptedLedgerIsDropped() throws {
        let tree = try MountedTree("head -c 8388608 /dev/urandom > a.bin && head -c 8388608 /dev/urandom > b.bin")
        var newPid: Int32?
        defer { stopBackgroundDaemon(pid: newPid, mountpoint: tree.mount.mountpoint); tree.stop() }
        try shell("cat a.bin b.bin > /dev/null", in: tree.mount.mountpoint)
        let before = try tree.mount.stats()
        #expect(before[.cachedBytes] == 16 << 20)
        // Alter one ledger's record (a byte past its 64-byte header) through the daemon's descriptor.
        let ledgers = ledgerDescriptors(of: tree.mount.pid)
        try #require(ledgers.count == 2, "ledgers: \(ledgers)")
        let descriptor = open(ledgers[0], O_RDWR)
        try #require(descriptor >= 0)
        var byte: UInt8 = 0
        pread(descriptor, &byte, 1, 70)
        byte ^= 0xFF
        pwrite(descriptor, &byte, 1, 70)
        close(descriptor)

        let result = try run(
            cachefsBinary,
            ["mount", tree.source, tree.mount.mountpoint, "--capacity", "256M", "--control-socket", tree.mount.controlSocket])
        #expect(result.status == 0, "\(result.error)")
        let after = try tree.mount.stats()
        newPid = after.pid
        #expect(
            after.continuity?.droppedFiles.count == 1 && after.continuity?.droppedFiles.first?.contains("checksum") == true,
            "\(String(describing: after.continuity))")
        #expect(after[.cachedBytes] == 8 << 20, "cached \(after[.cachedBytes])")
        try dropKernelCaches()
        try shell("cmp \(tree.source)/a.bin \(tree.mount.mountpoint)/a.bin && cmp \(tree.source)/b.bin \(tree.mount.mountpoint)/b.bin")
        let read = try tree.mount.stats()
        #expect(read[.bytesFromSource] == 8 << 20, "loaded \(read[.bytesFromSource]) bytes from the source; the dropped file is 8 MiB")
    }

    @Test("cachefs restart: a new daemon takes the mount over with the running one's settings")
    func restartKeepsSettings() throws {
        let tree = try MountedTree("head -c 4194304 /dev/urandom > model.bin", extra: ["--prefetch-depth", "7"])
        var newPid: Int32?
        defer { stopBackgroundDaemon(pid: newPid, mountpoint: tree.mount.mountpoint); tree.stop() }
        try shell("cat model.bin > /dev/null", in: tree.mount.mountpoint)
        let result = try run(cachefsBinary, ["restart", tree.mount.mountpoint, "--control-socket", tree.mount.controlSocket])
        #expect(result.status == 0, "\(result.error)")
        let after = try tree.mount.stats()
        newPid = after.pid
        #expect(after.pid != tree.mount.pid && after.settings.prefetchDepth == 7 && after[.cachedBytes] == 4 << 20)
        #expect(after.settings.logFile == tree.mount.logFile)
    }
}
