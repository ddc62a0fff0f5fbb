import ControlPlane
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The control socket is its daemon's alone: no second daemon takes it, no other user can reach it
/// at any moment, and the socket a dead daemon left is replaced.
@Suite("Control socket", .serialized)
struct ControlSocketTests {
    @Test("A second mount given a live daemon's --control-socket is refused with one line naming the first, which still answers")
    func secondDaemonRefused() throws {
        let tree = try MountedTree("echo one > file")
        defer { tree.stop() }
        let second = try tree.scratch.make("second")
        let result = try run(
            cachefsBinary, [tree.source, second, "--capacity", "64M", "--control-socket", tree.mount.controlSocket], timeout: 30)
        #expect(result.status != 0)
        #expect(result.error.split(separator: "\n").count == 1 && result.error.contains(tree.mount.mountpoint), "\(result.error)")
        #expect(!isMounted(second), "the refused mount was left mounted")
        #expect(try tree.mount.stats().settings.mountpoint == tree.mount.mountpoint, "the first daemon lost its socket")
        #expect(try shell("cat file", in: tree.mount.mountpoint) == "one\n")
    }

    @Test("A socket left by a daemon that died is replaced")
    func staleSocketReplaced() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src"), mountpoint = try scratch.make("mnt")
        let socketPath = scratch.path + "/control.sock"
        try leaveStaleSocket(at: socketPath)
        let started = try run(cachefsBinary, [source, mountpoint, "--capacity", "64M", "--control-socket", socketPath], timeout: 30)
        defer { _ = try? run("/bin/fusermount3", ["-u", mountpoint]) }
        #expect(started.status == 0, "\(started.error)")
        #expect(try CachefsMount.stats(mountpoint: mountpoint, controlSocket: socketPath).settings.mountpoint == mountpoint)
    }

    @Test("A command asking a socket a dead daemon left fails in one line (the client's connection, never made, leaves nothing pending)")
    func staleSocketAsked() throws {
        let scratch = try ScratchDirectory()
        let mountpoint = try scratch.make("mnt")
        let socketPath = scratch.path + "/control.sock"
        try leaveStaleSocket(at: socketPath)
        let result = try run(cachefsBinary, ["stats", mountpoint, "--control-socket", socketPath], timeout: 30)
        #expect(result.status == 1, "status \(result.status)")
        #expect(
            result.error.split(separator: "\n").count == 1 && result.error.contains("cannot reach the cachefs daemon"), "\(result.error)")
    }

    @Test("The socket appears at its path already 0600: it is never created there, only moved in")
    func socketNeverReachableByOthers() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src"), mountpoint = try scratch.make("mnt"), sockets = try scratch.make("sockets")
        chmod(sockets, 0o777)
        let watch = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        #expect(watch >= 0)
        defer { close(watch) }
        #expect(inotify_add_watch(watch, sockets, UInt32(IN_CREATE | IN_MOVED_TO | IN_ATTRIB)) >= 0)
        // A permissive umask: a socket bound at its path would be created 0777.
        let started = try run(
            "/bin/sh",
            [
                "-c", "umask 0; exec \"$0\" \"$@\"", cachefsBinary, source, mountpoint, "--capacity", "64M",
                "--control-socket", sockets + "/c.sock",
            ], timeout: 30)
        defer { _ = try? run("/bin/fusermount3", ["-u", mountpoint]) }
        #expect(started.status == 0, "\(started.error)")
        let events = Self.events(watch)
        #expect(!events.contains { $0.name == "c.sock" && $0.mask & UInt32(IN_CREATE) != 0 }, "bound at its path: \(events)")
        #expect(!events.contains { $0.name == "c.sock" && $0.mask & UInt32(IN_ATTRIB) != 0 }, "its mode changed at its path: \(events)")
        #expect(events.contains { $0.name == "c.sock" && $0.mask & UInt32(IN_MOVED_TO) != 0 }, "\(events)")
        // The hand-over socket beside it (it hands out the mount and the cache) follows the same rule.
        for name in ["c.sock", "c.sock.handover"] {
            #expect(
                !events.contains { $0.name == name && $0.mask & UInt32(IN_CREATE | IN_ATTRIB) != 0 }, "\(name) made at its path: \(events)")
            var attributes = stat()
            #expect(stat(sockets + "/" + name, &attributes) == 0 && attributes.st_mode & 0o777 == 0o600, "\(name)")
        }
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: sockets).sorted() == ["c.sock", "c.sock.handover"],
            "a private directory was left behind")
    }

    /// A Unix socket bound at `path` and closed without being removed: what a killed daemon leaves.
    private func leaveStaleSocket(at path: String) throws {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(descriptor, 1) == 0 else { throw TestFailure("cannot bind \(path)") }
    }

    /// The inotify events queued so far, by name.
    private static func events(_ watch: Int32) -> [(name: String, mask: UInt32)] {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        let count = read(watch, &buffer, buffer.count)
        guard count > 0 else { return [] }
        var events: [(name: String, mask: UInt32)] = []
        var offset = 0
        while offset + 16 <= count {
            let mask = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) }
            let length = Int(buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self) })
            let name = String(decoding: buffer[(offset + 16)..<(offset + 16 + length)].prefix { $0 != 0 }, as: UTF8.self)
            events.append((name, mask))
            offset += 16 + length
        }
        return events
    }
}
