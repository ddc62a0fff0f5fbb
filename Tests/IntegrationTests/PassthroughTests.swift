import ControlPlane
import Foundation
import Reporting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// FUSE passthrough: an open of a wholly cached file is handed to the kernel, which reads
/// the file's memory itself; no read request reaches the daemon, and the bytes stay right
/// through eviction pressure and changes in the source.
@Suite("Passthrough", .serialized)
struct PassthroughTests {
    /// Reads a file whole in 1 MiB reads; with a second path, compares every byte with it.
    static let verifyingReader = """
        import os, sys
        mirror, source = sys.argv[1], sys.argv[2]
        with open(mirror, 'rb') as m, open(source, 'rb') as s:
            offset = 0
            while True:
                a, b = m.read(1 << 20), s.read(1 << 20)
                if a != b:
                    print('differs at', offset); sys.exit(1)
                if not a: break
                offset += len(a)
        print('ok', offset)
        """

    private func readsOK(_ mirror: String, _ source: String) throws -> Bool {
        let result = try run("python3", ["-c", Self.verifyingReader, mirror, source], timeout: 120)
        return result.status == 0 && result.output.hasPrefix("ok ")
    }

    @Test(
        "A file opened cold is daemon-served; once it is wholly cached, the next open is passthrough: no read request reaches the daemon, and every byte is right"
    )
    func residentFileIsOpenedInPassthrough() throws {
        let tree = try MountedTree("head -c 48000000 /dev/urandom > model.bin")
        defer { tree.stop() }
        let (mirror, source) = (tree.mount.mountpoint + "/model.bin", tree.source + "/model.bin")
        let state = try tree.mount.stats().passthrough
        #expect(state?.available == true, "passthrough is not on: \(String(describing: state))")
        #expect(try readsOK(mirror, source), "cold read")
        let afterCold = try tree.mount.stats()
        #expect(afterCold[.passthroughOpens] == 0 && afterCold[.readRequests] > 0)

        try dropKernelCaches()
        #expect(try readsOK(mirror, source), "passthrough read")
        let afterResident = try tree.mount.stats()
        #expect(afterResident[.passthroughOpens] == 1)
        #expect(
            afterResident[.readRequests] == afterCold[.readRequests],
            "the daemon served \(afterResident[.readRequests] - afterCold[.readRequests]) reads of a passthrough open")
        #expect(afterResident[.passthroughFiles] == 0, "the hold ends with the last release")
    }

    @Test("safetensors maps a passthrough-opened model and reads every tensor right")
    func safetensorsThroughPassthrough() throws {
        let tree = try MountedTree("true")
        defer { tree.stop() }
        let model = tree.source + "/model.safetensors"
        #expect(try run("python3", ["-c", RealClientTests.makeModel, model]).status == 0)
        let warm = try run(
            cachefsBinary, ["warm", tree.mount.mountpoint + "/model.safetensors", "--control-socket", tree.mount.controlSocket])
        #expect(warm.status == 0, "\(warm.error)")
        try dropKernelCaches()
        let before = try tree.mount.stats()
        let result = try run("python3", ["-c", RealClientTests.compareModel, model, tree.mount.mountpoint + "/model.safetensors"])
        #expect(result.status == 0 && result.output == "tensors 5\n", "\(result.output)\(result.error)")
        let after = try tree.mount.stats()
        #expect(after[.passthroughOpens] > before[.passthroughOpens], "the warmed model was not opened in passthrough")
        #expect(after[.readRequests] == before[.readRequests], "mmap reads reached the daemon")
    }

    @Test("A passthrough reader verifying every byte under eviction pressure never sees a wrong byte")
    func evictionPressureNeverShowsWrongBytes() throws {
        // 24 MB held by the reader, 80 MB of other files read through a 48 MiB cache meanwhile.
        let tree = try MountedTree(
            """
            head -c 24000000 /dev/urandom > held.bin
            for i in 1 2 3 4; do head -c 20000000 /dev/urandom > other-$i.bin; done
            """, capacity: "48M")
        defer { tree.stop() }
        let mirror = tree.mount.mountpoint
        #expect(try run(cachefsBinary, ["warm", mirror + "/held.bin", "--control-socket", tree.mount.controlSocket]).status == 0)
        let reader = ChildProcess()
        reader.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let outcome = tree.scratch.path + "/reader.out"
        // Re-reads the held file for as long as the pressure lasts, through one open, comparing each pass.
        reader.arguments = [
            "python3", "-c",
            """
            import os, sys, time
            mirror, source, out, stop = sys.argv[1:5]
            expected = open(source, 'rb').read()
            passes = 0
            with open(mirror, 'rb') as f:
                while not os.path.exists(stop) or passes < 2:
                    f.seek(0)
                    if f.read() != expected:
                        open(out, 'w').write('wrong bytes in pass %d' % passes); sys.exit(1)
                    passes += 1
            open(out, 'w').write('ok %d' % passes)
            """, mirror + "/held.bin", tree.source + "/held.bin", outcome, tree.scratch.path + "/stop",
        ]
        try reader.run()
        defer { if reader.isRunning { reader.terminate() } }
        #expect(eventually(within: 10) { ((try? tree.mount.stats()[.passthroughFiles]) ?? 0) == 1 }, "the reader's open is not passthrough")
        for i in 1...4 { try shell("cat other-\(i).bin > /dev/null", in: mirror) }
        try dropKernelCaches()
        for i in 1...4 { try shell("cat other-\(i).bin > /dev/null", in: mirror) }
        let stats = try tree.mount.stats()
        #expect(stats[.evictions] > 0, "no pressure was made")
        _ = FileManager.default.createFile(atPath: tree.scratch.path + "/stop", contents: nil)
        #expect(eventually(within: 60) { !reader.isRunning })
        let result = (try? String(contentsOfFile: outcome, encoding: .utf8)) ?? "no outcome"
        #expect(result.hasPrefix("ok "), "\(result)")
        #expect(try readsOK(mirror + "/held.bin", tree.source + "/held.bin"))
    }

    @Test("A source rewrite while a passthrough reader is open: the old reader keeps the old bytes, a fresh open gets the new ones")
    func rewriteWhilePassthroughReaderIsOpen() throws {
        let tree = try MountedTree(
            "head -c 16000000 /dev/urandom > model.bin && cp model.bin ../old.bin",
            extra: ["--metadata-timeout", "0.3"])
        defer { tree.stop() }
        let (mirror, scratch) = (tree.mount.mountpoint + "/model.bin", tree.scratch.path)
        #expect(try run(cachefsBinary, ["warm", mirror, "--control-socket", tree.mount.controlSocket]).status == 0)
        // Holds one open across the rewrite: reads a MiB, says so, waits for the word, then reads
        // the rest and compares the whole with the old version. In a process of its own, so that a
        // reader that never ends fails the test instead of hanging it.
        let reader = ChildProcess()
        reader.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        reader.arguments = [
            "python3", "-c",
            """
            import os, sys, time
            mirror, old, ready, go, out = sys.argv[1:6]
            with open(mirror, 'rb') as f:
                first = f.read(1 << 20)
                open(ready, 'w').close()
                while not os.path.exists(go): time.sleep(0.01)
                data = first + f.read()
            open(out, 'w').write('old' if data == open(old, 'rb').read() else 'changed (%d bytes)' % len(data))
            """, mirror, scratch + "/old.bin", scratch + "/ready", scratch + "/go", scratch + "/reader.out",
        ]
        try reader.run()
        defer { if reader.isRunning { reader.terminate() } }
        try #require(eventually(within: 10) { FileManager.default.fileExists(atPath: scratch + "/ready") }, "the reader did not start")
        #expect(try tree.mount.stats()[.passthroughFiles] == 1, "the reader's open is not passthrough")

        // Rewritten in place (same inode), new bytes, new mtime.
        try shell(
            "head -c 16000000 /dev/urandom > ../new.bin && cat ../new.bin > model.bin && touch -d '2031-01-01' model.bin", in: tree.source)
        usleep(400_000) // past --metadata-timeout
        #expect(
            try run("/usr/bin/cmp", [scratch + "/new.bin", mirror], timeout: 30).status == 0,
            "a new open after the rewrite did not get the new bytes")
        _ = FileManager.default.createFile(atPath: scratch + "/go", contents: nil)
        #expect(eventually(within: 30) { !reader.isRunning }, "the old reader never finished")
        let outcome = (try? String(contentsOfFile: scratch + "/reader.out", encoding: .utf8)) ?? "no outcome"
        #expect(outcome == "old", "the passthrough reader's bytes: \(outcome)")
        // Once the new version is cached, it is opened in passthrough too, on a new node.
        let passthroughBefore = try tree.mount.stats()[.passthroughOpens]
        #expect(try run("/usr/bin/cmp", [scratch + "/new.bin", mirror], timeout: 30).status == 0)
        #expect(try tree.mount.stats()[.passthroughOpens] > passthroughBefore)
    }

    @Test("--passthrough off serves every read through the daemon, with correct bytes")
    func passthroughOff() throws {
        let tree = try MountedTree("head -c 8000000 /dev/urandom > model.bin", extra: ["--passthrough", "off"])
        defer { tree.stop() }
        let (mirror, source) = (tree.mount.mountpoint + "/model.bin", tree.source + "/model.bin")
        let state = try tree.mount.stats().passthrough
        #expect(state?.available == false && state?.reason == "--passthrough off", "\(String(describing: state))")
        #expect(try readsOK(mirror, source))
        try dropKernelCaches()
        let before = try tree.mount.stats()[.readRequests]
        #expect(try readsOK(mirror, source))
        let after = try tree.mount.stats()
        #expect(after[.passthroughOpens] == 0 && after[.readRequests] > before)
    }

    /// Root in a user namespace may mount FUSE but may not register backing files (they need
    /// CAP_SYS_ADMIN in the initial namespace): the daemon says so and serves every read itself.
    @Test("Without the privilege for backing files, the daemon falls back to serving reads, and says why")
    func unprivilegedFallsBack() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 8000000 /dev/urandom > model.bin", in: source)
        let mountpoint = try scratch.make("mnt")
        let script = """
            set -e
            '\(cachefsBinary)' '\(source)' '\(mountpoint)' --capacity 64M --control-socket '\(scratch.path)/c.sock'
            cat '\(mountpoint)/model.bin' > /dev/null
            cmp '\(source)/model.bin' '\(mountpoint)/model.bin'
            '\(cachefsBinary)' stats '\(mountpoint)' --json --control-socket '\(scratch.path)/c.sock'
            fusermount3 -u '\(mountpoint)' 2>/dev/null || umount '\(mountpoint)'
            """
        let result = try run(
            "/usr/bin/unshare", ["--user", "--map-root-user", "--mount", "--propagation", "private", "/bin/bash", "-c", script], timeout: 60
        )
        try #require(result.status == 0, "\(result.error)")
        let json = String(result.output[result.output.firstIndex(of: "{")!...])
        let report = try JSONDecoder().decode(StatsReport.self, from: Data(json.utf8))
        #expect(report.passthrough?.available == false, "\(String(describing: report.passthrough))")
        #expect(report.passthrough?.reason?.contains("CAP_SYS_ADMIN") == true, "\(String(describing: report.passthrough?.reason))")
        #expect(report[.passthroughOpens] == 0 && report[.readRequests] > 0)
    }
}
