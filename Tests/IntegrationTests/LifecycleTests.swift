import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The receiving end of sd_notify: a datagram socket, as systemd creates for Type=notify services.
final class NotifySocket {
    let path: String
    private let descriptor: Int32

    init(path: String) throws {
        self.path = path
        descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard descriptor >= 0, bound == 0 else { throw TestFailure("cannot bind \(path)") }
        var timeout = timeval(tv_sec: 15, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next message that contains `text` (systemd takes others meanwhile: FDSTORE=1), or nil after 15 s without one.
    func receive(containing text: String) -> String? {
        while let message = receive() {
            if message.contains(text) { return message }
        }
        return nil
    }

    /// The next message, or nil after 15 s.
    func receive() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(descriptor, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
    }

    deinit { close(descriptor) }
}

@Suite("Lifecycle", .serialized)
struct LifecycleTests {
    @Test("systemd-analyze accepts the shipped unit")
    func unitFileVerifies() throws {
        let scratch = try ScratchDirectory()
        let unit = try String(contentsOf: packageRoot.appendingPathComponent("Scripts/systemd/cachefs@.service"), encoding: .utf8)
        #expect(unit.contains("Type=notify") && unit.contains("Restart=on-failure"))
        // Verified against the binary under test, since /usr/local/bin/cachefs may not be installed here.
        try unit.replacingOccurrences(of: "/usr/local/bin/cachefs", with: cachefsBinary)
            .write(toFile: scratch.path + "/cachefs@models.service", atomically: true, encoding: .utf8)
        let result = try run("systemd-analyze", ["verify", scratch.path + "/cachefs@models.service"])
        #expect(result.status == 0 && result.error.isEmpty, "\(result.error)")
    }

    @Test("Under systemd: READY=1 once the mount answers, STOPPING=1 on SIGTERM, then a clean unmount")
    func systemdNotify() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("echo ready > file", in: source)
        let notify = try NotifySocket(path: scratch.path + "/notify.sock")
        let mount = try CachefsMount(
            source: source, mountpoint: try scratch.make("mnt"),
            environment: ["NOTIFY_SOCKET": notify.path])
        let ready = notify.receive(containing: "READY=1")
        #expect(ready?.contains("READY=1") == true, "got \(ready ?? "nothing")")
        #expect(ready?.contains("MAINPID=\(mount.pid)") == true)
        #expect(try shell("cat file", in: mount.mountpoint) == "ready\n")

        kill(mount.pid, SIGTERM)
        let stopping = notify.receive(containing: "STOPPING=1")
        #expect(stopping?.contains("STOPPING=1") == true, "got \(stopping ?? "nothing")")
        #expect(mount.stop() == 0)
        #expect(!isMounted(mount.mountpoint))
    }

    @Test("After SIGKILL readers fail promptly, and a new daemon on the same mountpoint serves correct data")
    func killAndRestart() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 50000000 /dev/urandom > model.bin", in: source)
        let mountpoint = try scratch.make("mnt")
        let first = try CachefsMount(source: source, mountpoint: mountpoint)
        // A reader with the file open, reading a little at a time, reports that it is reading
        // (a marker after its first read) and how its reads end.
        let reader = ChildProcess()
        reader.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let outcome = scratch.path + "/reader.out"
        let reading = scratch.path + "/reader.reading"
        reader.arguments = [
            "python3", "-c",
            """
            import os, sys, time
            fd = os.open(sys.argv[1], os.O_RDONLY)
            os.read(fd, 4096)
            open(sys.argv[3], 'w').close()
            start = time.time()
            try:
                while time.time() - start < 30:
                    os.read(fd, 4096)
                    time.sleep(0.01)
                result = 'no error after 30 s'
            except OSError as error:
                result = 'error %d' % error.errno
            open(sys.argv[2], 'w').write(result)
            """, mountpoint + "/model.bin", outcome, reading,
        ]
        try reader.run()
        try #require(eventually(within: 30) { FileManager.default.fileExists(atPath: reading) || !reader.isRunning })
        try #require(
            reader.isRunning,
            "the reader ended before the daemon was killed: \((try? String(contentsOfFile: outcome, encoding: .utf8)) ?? "no outcome")")
        kill(first.pid, SIGKILL)
        let killed = Date()
        #expect(eventually(within: 5) { !reader.isRunning }, "the reader hung after the daemon died")
        #expect(Date().timeIntervalSince(killed) < 5)
        let result = (try? String(contentsOfFile: outcome, encoding: .utf8)) ?? "nothing"
        // The kernel's errno: ENOTCONN once the connection is gone, EIO from a page-cache read, ECONNABORTED
        // for a direct-I/O read (a cold file) that was in flight when the daemon died.
        #expect([ENOTCONN, EIO, ECONNABORTED].map { "error \($0)" }.contains(result), "the reader saw: \(result)")
        // The mount keeper removes the dead daemon's mount by itself (checked before the test's own cleanup could).
        #expect(eventually(within: 10) { !isMounted(mountpoint) }, "the dead daemon's mount was left behind")
        first.stop()

        let second = try CachefsMount(source: source, mountpoint: mountpoint)
        defer { second.stop() }
        #expect(try run("/usr/bin/cmp", [source + "/model.bin", mountpoint + "/model.bin"]).status == 0)
    }

    @Test("A dead mount left behind (\"Transport endpoint is not connected\") is cleaned up by the next start")
    func staleMountCleanedUp() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("echo fresh > file", in: source)
        let mountpoint = try scratch.make("mnt")
        let first = try CachefsMount(source: source, mountpoint: mountpoint)
        // Kill the mount keeper first, so that nothing removes the mount.
        try shell("pkill -KILL -f 'cachefs keep-mount --mountpoint \(mountpoint) '")
        kill(first.pid, SIGKILL)
        #expect(
            eventually(within: 5) {
                (try? shell("stat \(mountpoint) 2>&1 || true"))?.contains("Transport endpoint is not connected") == true
            })
        #expect(isMounted(mountpoint))

        let second = try CachefsMount(source: source, mountpoint: mountpoint)
        defer { second.stop() }
        #expect(try shell("cat file", in: mountpoint) == "fresh\n")
        #expect(mountedPaths(under: mountpoint).count == 1, "the dead mount is gone, not stacked under the new one")
    }
}
