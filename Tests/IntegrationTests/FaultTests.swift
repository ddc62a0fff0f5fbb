import Foundation
import Testing

/// Faults between cachefs and its source: the reader sees the right bytes or an
/// errno, never wrong bytes and never a hang beyond --source-timeout plus a second.
@Suite("Source faults", .serialized)
struct FaultTests {
    /// Reads `path` in 1 MiB requests; prints "ok SECONDS", or "errno N SECONDS" at the first error.
    static let timedReader = """
        import os, sys, time
        start = time.monotonic()
        try:
            fd = os.open(sys.argv[1], os.O_RDONLY)
            while os.read(fd, 1 << 20): pass
            print('ok %.2f' % (time.monotonic() - start))
        except OSError as error:
            print('errno %d %.2f' % (error.errno, time.monotonic() - start))
        """

    private func timedRead(_ path: String) throws -> (outcome: String, seconds: Double) {
        let words = try run("python3", ["-c", Self.timedReader, path], timeout: 60).output.split(separator: " ")
        return (
            words.dropLast().joined(separator: " "), Double(words.last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? .infinity
        )
    }

    @Test("A stalled source read is EIO after --source-timeout; other files keep being served")
    func stalledReadTimesOut() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 4000000 /dev/urandom > stalled.bin && head -c 4000000 /dev/urandom > fine.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stalled.bin", "--stall-seconds", "60"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"), extra: ["--source-timeout", "1"])
        defer { mount.stop() }
        defer { source.signal(SIGUSR2) } // ends the stalls first, so that the source can stop

        let stalled = try timedRead(mount.mountpoint + "/stalled.bin")
        #expect(stalled.outcome == "errno \(EIO)", "\(stalled)")
        #expect(stalled.seconds < 2.5, "the reader waited \(stalled.seconds) s with a 1 s source timeout")
        // Stalled loads still hold threads; the daemon serves other files all the same.
        #expect(try run("/usr/bin/cmp", [data + "/fine.bin", mount.mountpoint + "/fine.bin"], timeout: 10).status == 0)
        let again = try timedRead(mount.mountpoint + "/stalled.bin")
        #expect(again.outcome == "errno \(EIO)" && again.seconds < 2.5, "\(again)")
    }

    @Test("A source that hangs (an unreachable NAS) gives EIO promptly, and reads succeed again when it answers")
    func hangingSourceRecovers() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 8000000 /dev/urandom > model.bin", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: [])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"), extra: ["--source-timeout", "1"])
        defer { mount.stop() }

        source.signal(SIGHUP)
        usleep(100_000)
        let during = try timedRead(mount.mountpoint + "/model.bin")
        #expect(during.outcome == "errno \(EIO)" && during.seconds < 2.5, "\(during)")
        source.signal(SIGUSR2)
        usleep(100_000)
        #expect(try run("/usr/bin/cmp", [data + "/model.bin", mount.mountpoint + "/model.bin"], timeout: 30).status == 0)
    }

    @Test("A source whose FUSE daemon crashes gives EIO, never a hang; once it is mounted again, reads succeed without a restart")
    func sourceCrashesAndComesBack() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("mkdir models && head -c 8000000 /dev/urandom > models/model.bin", in: data)
        let slow = try scratch.make("slow")
        let source = try TestSourceMount(root: data, mountpoint: slow, arguments: [])
        defer { source.stop() }
        let mount = try CachefsMount(source: slow, mountpoint: try scratch.make("mnt"), extra: ["--source-timeout", "2"])
        defer { mount.stop() }
        let file = mount.mountpoint + "/models/model.bin"
        #expect(try run("/usr/bin/cmp", [data + "/models/model.bin", file]).status == 0)

        // A crash, then the cleanup a supervisor does (fusermount3 -uz): the path is a bare, empty directory.
        source.signal(SIGKILL)
        source.stop()
        try dropKernelCaches()
        let during = try timedRead(file)
        #expect(during.outcome == "errno \(EIO)" && during.seconds < 3, "\(during)")
        let listing = try run("/bin/ls", [mount.mountpoint + "/models"])
        #expect(listing.status != 0, "the bare directory under the dead mount must not be mirrored as the source")

        let restarted = try TestSourceMount(root: data, mountpoint: slow, arguments: [])
        defer { restarted.stop() }
        #expect(
            try eventually(within: 5) {
                try run("/usr/bin/cmp", [data + "/models/model.bin", file]).status == 0
            }, "reads did not recover: \(mount.log)")
        #expect(try run("/bin/ls", [mount.mountpoint + "/models"]).output == "model.bin\n")
        #expect(try mount.stats()[.cachedBytes] > 0)
    }

    /// Reads a file through the mount while the source file is changed after the first MiB;
    /// every byte returned must be the opened version's, and an error must be ESTALE or EIO.
    static let readerDuringChange = """
        import os, sys, errno
        mirrored, source, original, how = sys.argv[1:5]
        expected = open(original, 'rb').read()
        fd = os.open(mirrored, os.O_RDONLY)
        got = bytearray(os.read(fd, 1 << 20))
        if how == 'truncate':
            os.truncate(source, 3 << 20)
        elif how == 'rewrite':
            with open(source, 'r+b') as f: f.write(os.urandom(len(expected)))
        elif how == 'replace':
            with open(source + '.new', 'wb') as f: f.write(os.urandom(5 << 20))
            os.rename(source + '.new', source)
        outcome = 'complete'
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk: break
                got += chunk
        except OSError as error:
            outcome = 'errno ' + errno.errorcode[error.errno]
        if bytes(got) != expected[:len(got)]: print('WRONG BYTES at', next(i for i in range(len(got)) if got[i] != expected[i])); sys.exit(1)
        if outcome == 'complete' and len(got) != len(expected): print('SHORT', len(got)); sys.exit(1)
        print(outcome)
        """

    @Test(
        "A file truncated, rewritten in place or replaced while it is read gives the opened version's bytes or an errno, never others",
        arguments: ["truncate", "rewrite", "replace"])
    func fileChangedWhileRead(how: String) throws {
        let tree = try MountedTree(
            "head -c 67108864 /dev/urandom > model.bin && cp model.bin /tmp/cachefs-fault-original-$$ && mv /tmp/cachefs-fault-original-$$ ../original.bin"
        )
        defer { tree.stop() }
        let original = (tree.source as NSString).deletingLastPathComponent + "/original.bin"
        let result = try run(
            "python3",
            [
                "-c", Self.readerDuringChange, tree.mount.mountpoint + "/model.bin",
                tree.source + "/model.bin", original, how,
            ], timeout: 120)
        #expect(result.status == 0, "\(result.output)\(result.error)")
        let outcome = result.output.trimmingCharacters(in: .whitespacesAndNewlines)
        if how == "replace" {
            #expect(outcome == "complete", "an open file keeps its inode after a rename-over: \(outcome)")
        } else {
            #expect(["complete", "errno ESTALE", "errno EIO"].contains(outcome), "\(outcome)")
        }
        // A fresh open sees the new content exactly (after the metadata timeout).
        #expect(
            try eventually(within: 5) {
                try run("/usr/bin/cmp", [tree.source + "/model.bin", tree.mount.mountpoint + "/model.bin"]).status == 0
            })
    }
}
