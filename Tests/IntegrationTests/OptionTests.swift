import ControlPlane
import Foundation
import Reporting
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Each documented option, and each documented behaviour not covered elsewhere, has a test
/// here that fails when the option is ignored or the behaviour is gone. Timing assertions
/// are lower bounds wherever the expected behaviour is the slower one (a load on the machine
/// can only make them longer), and upper bounds only with seconds of margin.
@Suite("Documented options take effect", .serialized)
struct OptionTests {
    /// `cachefs warm` against a mount started by the test.
    private func warm(_ arguments: [String], _ mount: CachefsMount, timeout: Double = 120) throws -> CommandResult {
        try run(cachefsBinary, ["warm"] + arguments + ["--control-socket", mount.controlSocket], timeout: timeout)
    }

    /// Starts a program without waiting for it; the caller waits (`finish`) or it is killed at the end of the test.
    private func start(_ executable: String, _ arguments: [String]) throws -> ChildProcess {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Waits for a started program, killing it after `timeout`; returns its exit status (nil if it had to be killed).
    @discardableResult
    private func finish(_ process: ChildProcess, timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    /// Seconds `body` took.
    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        let started = Date()
        try body()
        return Date().timeIntervalSince(started)
    }

    // MARK: Kernel-facing options

    /// --read-ahead: the window in force on the mount's backing device is the one asked for
    /// (neither FUSE's 128K nor cachefs's default 1M), as stats report it and as sysfs shows it.
    @Test("--read-ahead sets the kernel's read-ahead window on the mount")
    func readAheadWindow() throws {
        let tree = try MountedTree("echo x > f", extra: ["--read-ahead", "512K"])
        defer { tree.stop() }
        let report = try tree.mount.stats()
        #expect(report.readAhead?.windowBytes == 512 << 10, "stats: \(String(describing: report.readAhead))")
        #expect(report.readAhead?.error == nil)
        let sysfs = try shell("cat /sys/class/bdi/$(mountpoint -d '\(tree.mount.mountpoint)')/read_ahead_kb")
        #expect(sysfs == "512\n", "the kernel's window is \(sysfs) KiB")
    }

    /// --threads: at most N FUSE requests are served at once. Four readers of four files whose
    /// source reads each stall 1.5 s need two rounds with --threads 2 (3 s or more); with the
    /// default 16 threads all four stall together (about 1.5 s).
    @Test("--threads bounds the requests served at once")
    func threadsBoundRequestsInFlight() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("for i in 1 2 3 4; do head -c 100000 /dev/urandom > s$i.bin; done", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "s*.bin", "--stall-seconds", "1.5"])
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--threads", "2", "--prefetch-depth", "0"])
        defer { mount.stop() }
        var statuses: [Int32?] = []
        let elapsed = try seconds {
            let readers = try (1...4).map { try start("/usr/bin/cmp", [data + "/s\($0).bin", mount.mountpoint + "/s\($0).bin"]) }
            statuses = readers.map { finish($0, timeout: 60) }
        }
        #expect(statuses == [0, 0, 0, 0], "every reader got the right bytes")
        #expect(elapsed >= 2.9, "four 1.5 s source reads finished in \(elapsed) s with --threads 2: more than two were served at once")
    }

    /// --metadata-timeout: a change in the source is not visible through the mount before the
    /// timeout since the kernel last asked, and is visible soon after it.
    @Test("--metadata-timeout 3: a changed size shows after 3 s, not before")
    func metadataTimeout() throws {
        let tree = try MountedTree("printf 0123456789 > f", extra: ["--metadata-timeout", "3"])
        defer { tree.stop() }
        let path = tree.mount.mountpoint + "/f"
        func size() -> Int64 {
            var attributes = stat()
            return stat(path, &attributes) == 0 ? Int64(attributes.st_size) : -1
        }
        // Held open, so that another test's drop_caches cannot evict the inode and its cached attributes.
        let holder = open(path, O_RDONLY)
        defer { if holder >= 0 { close(holder) } }
        let cached = Date()
        #expect(size() == 10)
        try shell("printf 0123456789 >> f", in: tree.source)
        #expect(size() == 10, "the kernel's cached attributes answer until the timeout")
        #expect(eventually(within: 10) { size() == 20 }, "the new size never showed")
        let shown = Date().timeIntervalSince(cached)
        #expect(shown >= 2.9, "the new size showed after \(shown) s, before the 3 s metadata timeout")
        #expect(shown < 6, "the new size showed only after \(shown) s")
    }

    /// --source-timeout 0: no deadline; a read of a source that stalls 2.5 s waits and gets its bytes
    /// (with any deadline under 2.5 s it would get EIO).
    @Test("--source-timeout 0 waits for a stalled source and gets the bytes")
    func sourceTimeoutZeroWaits() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 3000000 /dev/urandom > stalled.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stalled.bin", "--stall-seconds", "2.5"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"), extra: ["--source-timeout", "0"])
        defer { mount.stop() }
        var result: CommandResult?
        let elapsed = try seconds {
            result = try run("/usr/bin/cmp", [data + "/stalled.bin", mount.mountpoint + "/stalled.bin"], timeout: 60)
        }
        #expect(result?.status == 0, "\(result?.error ?? "")")
        #expect(elapsed >= 2.4, "the read took \(elapsed) s: the source did not stall")
        let stats = try mount.stats()
        #expect(stats[.sourceTimeouts] == 0 && stats[.sourceErrors] == 0)
    }

    /// --force: a capacity above the machine's memory is refused without it and mounts with it.
    @Test("--force accepts a capacity above physical memory")
    func forceAcceptsLargeCapacity() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("echo forced > f", in: source)
        let mountpoint = try scratch.make("mnt")
        let refused = try run(cachefsBinary, [source, mountpoint, "--capacity", "100T"], timeout: 30)
        #expect(refused.status != 0 && refused.error.contains("--force"), "\(refused.error)")
        #expect(!isMounted(mountpoint))
        let mount = try CachefsMount(source: source, mountpoint: mountpoint, capacity: "100T", extra: ["--force"])
        defer { mount.stop() }
        #expect(try shell("cat f", in: mount.mountpoint) == "forced\n")
        #expect(try mount.stats().settings.capacity == 100 << 40)
    }

    // MARK: Prefetch options

    /// --block-size: the unit of caching and of source reads. One 4 KiB read loads one block:
    /// 256 KiB with --block-size 256K (1 MiB with the default).
    @Test("--block-size is the unit of source reads")
    func blockSize() throws {
        let tree = try MountedTree(
            "head -c 5000000 /dev/urandom > f.bin",
            extra: ["--block-size", "256K", "--prefetch-depth", "0", "--read-ahead", "128K"])
        defer { tree.stop() }
        let reader = try HeldReader(tree.mount.mountpoint, files: ["f.bin"])
        defer { reader.close() }
        #expect(try tree.mount.stats()[.bytesFromSource] == 256 << 10)
    }

    /// --prefetch-depth: a sequential reader gets that many blocks queued ahead of it, at most a
    /// quarter of the capacity's blocks; 0 turns prefetching off. The queue is filled inside the
    /// read request, so once the reader's first read has returned the count is final.
    @Test(
        "--prefetch-depth sets the window, at most a quarter of the capacity; 0 turns prefetching off",
        arguments: [("5", "256M", 5), ("16", "16M", 4), ("0", "256M", 0)])
    func prefetchDepth(depth: String, capacity: String, queued: Int) throws {
        let tree = try MountedTree("truncate -s 40M f.bin", capacity: capacity, extra: ["--prefetch-depth", depth, "--read-ahead", "128K"])
        defer { tree.stop() }
        let reader = try HeldReader(tree.mount.mountpoint, files: ["f.bin"])
        defer { reader.close() }
        #expect(try tree.mount.stats()[.prefetchQueuedBlocks] == UInt64(queued))
        if queued == 0 {
            try shell("cat f.bin > /dev/null", in: tree.mount.mountpoint)
            let stats = try tree.mount.stats()
            #expect(stats[.prefetchQueuedBlocks] == 0 && stats[.prefetchedBlocks] == 0, "a whole sequential read prefetched nothing")
        }
    }

    /// --prefetch-threads: at most that many prefetch reads reach the source at once. Four readers
    /// each read the first block of their own file and keep it open, so 4 × 16 blocks are
    /// prefetched from a source whose every read waits 40 ms: one prefetch thread needs at least
    /// 2.56 s for them; the default 8 would load the four files' lanes side by side (about 0.7 s).
    @Test("--prefetch-threads bounds the prefetch reads at the source")
    func prefetchThreads() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("for i in 1 2 3 4; do truncate -s 17M f$i.bin; done", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: ["--latency-ms", "40"])
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--prefetch-threads", "1", "--prefetch-depth", "16", "--read-ahead", "128K"])
        defer { mount.stop() }
        let started = Date()
        let reader = try HeldReader(mount.mountpoint, files: (1...4).map { "f\($0).bin" })
        defer { reader.close() }
        let loaded = try eventually(within: 60) { try mount.stats()[.prefetchedBlocks] == 64 }
        let elapsed = Date().timeIntervalSince(started)
        let prefetched = try mount.stats()[.prefetchedBlocks]
        #expect(loaded, "prefetched \(prefetched) of 64 blocks")
        #expect(elapsed >= 2.4, "64 prefetch reads of 40 ms took \(elapsed) s with one prefetch thread")
    }

    /// --prefetch-chunk: a lane takes that many blocks at a time. Every source read of fail.bin
    /// past its first block fails, so a lane gives up each chunk at its first block: the 16-block
    /// window costs one source error per chunk, 2 with --prefetch-chunk 8 (4 with the default 4).
    @Test("--prefetch-chunk sets the blocks a lane takes at a time")
    func prefetchChunk() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 20000000 /dev/urandom > fail.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--fail-file", "fail.bin", "--fail-offset", "1048576"])
        defer { source.stop() }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: [
                "--prefetch-chunk", "8", "--prefetch-depth", "16", "--prefetch-threads", "1",
                "--read-ahead", "128K",
            ])
        defer { mount.stop() }
        // A sequential reader of block 0: blocks 1…16 are queued. The file stays open until the test has counted.
        let reader = try HeldReader(mount.mountpoint, files: ["fail.bin"])
        defer { reader.close() }
        // Every queued block is accounted for once the lane has given up on each chunk.
        let settled = try eventually(within: 20) {
            let stats = try mount.stats()
            return stats[.prefetchQueuedBlocks] == 16 && stats[.prefetchedBlocks] + stats[.prefetchSkippedBlocks] == 16
        }
        let stats = try mount.stats()
        #expect(
            settled, "queued \(stats[.prefetchQueuedBlocks]), loaded \(stats[.prefetchedBlocks]), skipped \(stats[.prefetchSkippedBlocks])")
        #expect(stats[.sourceErrors] == 2, "\(stats[.sourceErrors]) chunks were tried for a 16-block window with --prefetch-chunk 8")
        #expect(stats[.bytesFromSource] == 1 << 20, "only block 0 loaded")
    }

    // MARK: cachefs warm

    /// --chunk: the file is warmed in ranges of that size, loaded at once (up to --jobs); a 2 MiB
    /// file with --chunk 1M has both of its blocks loading while the source stalls. With one
    /// 64M range the second block would wait for the first.
    @Test("warm --chunk splits a file into ranges loaded at once")
    func warmChunk() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 2097152 /dev/urandom > stall-2m.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stall-*", "--stall-seconds", "60"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        let warming = try start(
            cachefsBinary,
            [
                "warm", mount.mountpoint + "/stall-2m.bin", "--chunk", "1M",
                "--control-socket", mount.controlSocket,
            ])
        defer { finish(warming, timeout: 0) }
        let bothLoading = try eventually(within: 15) {
            let stats = try mount.stats()
            return stats[.misses] >= 2 && stats[.bytesFromSource] == 0
        }
        let loads = try mount.stats()[.misses]
        #expect(bothLoading, "one block at a time: \(loads) loads while the source stalled")
        source.signal(SIGUSR2) // ends the stalls in progress
        #expect(finish(warming, timeout: 30) == 0)
        #expect(try mount.stats()[.bytesFromSource] == 2 << 20)
    }

    /// --jobs: at most that many ranges load at once. With --jobs 1, six 1 MiB ranges from a
    /// source whose every read waits 200 ms take at least 1.2 s (with 4 jobs, about a third of that).
    @Test("warm --jobs bounds the ranges loaded at once")
    func warmJobs() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 6291456 /dev/urandom > six.bin", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: ["--latency-ms", "200"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        var result: CommandResult?
        let elapsed = try seconds { result = try warm([mount.mountpoint + "/six.bin", "--jobs", "1", "--chunk", "1M"], mount) }
        #expect(result?.status == 0, "\(result?.error ?? "")")
        #expect(try mount.stats()[.bytesFromSource] == 6 << 20)
        #expect(elapsed >= 1.15, "six 200 ms block reads took \(elapsed) s with --jobs 1: ranges loaded at once")
    }

    // MARK: Load and shutdown

    /// The thundering herd through the daemon: 16 readers start together on a cold file over a
    /// latency-bound source; each block is read from the source once, and every reader gets every byte.
    @Test("16 concurrent readers of a cold file: the source is read once")
    func herdReadsTheSourceOnce() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 24000000 /dev/urandom > model.bin", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: ["--latency-ms", "5"])
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        let expected = try shell("sha256sum < model.bin", in: data)
        let sums = try shell(
            """
            for i in $(seq 1 16); do sha256sum < '\(mount.mountpoint)/model.bin' > sum.$i & done
            wait
            cat sum.*
            """, in: scratch.path, timeout: 120)
        #expect(sums == String(repeating: expected, count: 16), "a reader got other bytes")
        let stats = try mount.stats()
        #expect(stats[.bytesFromSource] == 24_000_000, "the source gave \(stats[.bytesFromSource]) bytes for a 24,000,000-byte file")
    }

    /// --shutdown-grace is an upper bound: a read stalled far longer than the grace does not keep
    /// the mount after it (and the grace itself is waited).
    @Test("--shutdown-grace 1: a read stalled for a minute does not keep the mount after the grace")
    func shutdownGraceIsAnUpperBound() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("head -c 2000000 /dev/urandom > stalled.bin", in: data)
        let source = try TestSourceMount(
            root: data, mountpoint: try scratch.make("slow"),
            arguments: ["--stall-file", "stalled.bin", "--stall-seconds", "60"])
        defer { source.stop() }
        defer { source.signal(SIGUSR2) }
        let mount = try CachefsMount(
            source: source.mountpoint, mountpoint: try scratch.make("mnt"),
            extra: ["--shutdown-grace", "1", "--prefetch-depth", "0"])
        defer { mount.stop() }
        let reader = try start("/bin/cat", [mount.mountpoint + "/stalled.bin"])
        defer { finish(reader, timeout: 0) }
        // After the lazy unmount the open file keeps the FUSE connection (and its stalling reads) alive.
        #expect(try eventually(within: 10) { try mount.stats()[.misses] > 0 }, "the read never reached the source")
        let signalled = Date()
        kill(mount.pid, SIGTERM)
        #expect(eventually(within: 8) { !isMounted(mount.mountpoint) }, "the mount outlived the 1 s grace by 7 s")
        let unmounted = Date().timeIntervalSince(signalled)
        #expect(unmounted >= 0.9, "unmounted after \(unmounted) s, before the grace ended")
        #expect(unmounted < 5, "unmounted only after \(unmounted) s with a 1 s grace")
        // The stuck source call returns once the source does; with the reader gone the daemon then exits.
        finish(reader, timeout: 0)
        source.signal(SIGUSR2)
        #expect(eventually(within: 20) { !mount.isRunning }, "the daemon did not exit once the source answered")
    }

    // MARK: Peers

    /// The default 1.5 s fallback: a peer that accepts connections but never answers costs a read
    /// at most the block timeout (then it is in backoff); every byte comes from the source.
    @Test("A silent peer behind a running daemon: reads succeed, each within 1.5 s plus the source's time")
    func silentPeerFallsBack() throws {
        // Connections complete in the backlog; nothing is ever read or answered.
        let (listener, port) = try loopbackSocket(listening: true, backlog: 128)
        defer { close(listener) }
        let tree = try MountedTree("head -c 8388608 /dev/urandom > model.bin", extra: ["--peers", "127.0.0.1:\(port)"])
        defer { tree.stop() }
        // Reads the file in 1 MiB reads, printing the slowest read's seconds and the file's hash.
        let script = """
            import hashlib, sys, time
            digest, slowest = hashlib.sha256(), 0.0
            with open(sys.argv[1], 'rb', buffering=0) as f:
                while True:
                    started = time.monotonic()
                    chunk = f.read(1 << 20)
                    slowest = max(slowest, time.monotonic() - started)
                    if not chunk: break
                    digest.update(chunk)
            print(f'{slowest:.3f} {digest.hexdigest()}')
            """
        let result = try run("/usr/bin/python3", ["-c", script, tree.mount.mountpoint + "/model.bin"], timeout: 60)
        #expect(result.status == 0, "\(result.error)")
        let fields = result.output.split(separator: " ")
        let slowest = Double(fields.first ?? "") ?? .infinity
        let expected = String(try shell("sha256sum < model.bin", in: tree.source).prefix(64))
        #expect(fields.last.map { String($0.prefix(64)) } == expected, "wrong bytes")
        #expect(slowest >= 1.4, "the slowest read took \(slowest) s: the silent peer was never waited for")
        #expect(slowest < 3.5, "a read waited \(slowest) s for a silent peer (limit 1.5 s)")
        let stats = try tree.mount.stats()
        #expect(stats[.bytesFromSource] == 8 << 20 && stats[.bytesFromPeers] == 0)
        #expect(stats[.peerFailures] >= 1 && stats[.peersInBackoff] == 1)
    }

    // MARK: Fidelity of special files

    /// Sockets and device nodes are mirrored with their type, mode, owner and device numbers
    /// (fifos too; they are also in FidelityTests' tree).
    @Test("FIFOs, sockets, character and block devices mirror their type and device numbers")
    func specialFiles() throws {
        let tree = try MountedTree(
            """
            mkfifo -m 640 fifo
            python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind("sock")'
            mknod -m 600 null-like c 1 3
            mknod -m 660 loop-like b 7 0
            chown 12:34 loop-like
            """)
        defer { tree.stop() }
        let listing = "stat -c '%n %F %t:%T %a %u:%g %h' fifo sock null-like loop-like"
        let expected = try shell(listing, in: tree.source)
        #expect(
            expected.contains("socket") && expected.contains("character special file 1:3")
                && expected.contains("block special file 7:0") && expected.contains("fifo"), "\(expected)")
        #expect(try shell(listing, in: tree.mount.mountpoint) == expected)
    }
}

/// A Python process that opens files under a mount, reads 4 KiB at the start of each (so each is
/// a sequential reader with a prefetch window), and keeps them open until `close()`. `init`
/// returns once every first read has returned.
final class HeldReader {
    private let process = ChildProcess()
    private let input = Pipe()
    private let output = Pipe()

    init(_ directory: String, files: [String], timeout: Double = 30) throws {
        let script = """
            import os, sys
            fds = [os.open(os.path.join(sys.argv[1], name), os.O_RDONLY) for name in sys.argv[2:]]
            for fd in fds: assert len(os.pread(fd, 4096, 0)) == 4096
            print('read', flush=True)
            sys.stdin.readline()
            """
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script, directory] + files
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        // The readiness marker, waited for with a deadline (poll), never a blocking read that could hang.
        var marker = pollfd(fd: output.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&marker, 1, Int32(timeout * 1000)) == 1,
            String(decoding: output.fileHandleForReading.availableData, as: UTF8.self).hasPrefix("read")
        else {
            close()
            throw TestFailure("the reader of \(files) did not finish its first reads within \(timeout) s")
        }
    }

    /// Lets the files go (closing the pipe ends the script); kills it if it does not end within 10 s.
    func close() {
        try? input.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { close() }
}
