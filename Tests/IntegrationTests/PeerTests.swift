import ControlPlane
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket bound to a port the kernel picks on loopback, listening with `backlog` if asked; the caller closes it.
func loopbackSocket(listening: Bool, backlog: Int32 = 1) throws -> (descriptor: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && (!listening || listen(fd, backlog) == 0) && getsockname(fd, $0, &length) == 0
        }
    }
    guard ok else {
        close(fd)
        throw TestFailure("no free port on loopback")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A free TCP port on loopback (the kernel's pick; free again once the probe socket closes).
func freeLoopbackPort() throws -> Int {
    let (fd, port) = try loopbackSocket(listening: false)
    close(fd)
    return port
}

/// Three cachefs instances over one source, each listening on loopback and given
/// every instance's address as its peers (itself included, as a DNS name would).
final class PeerCluster {
    let scratch: ScratchDirectory
    let data: String
    let source: String
    let ports: [Int]
    private(set) var mounts: [CachefsMount] = []
    private var testSource: TestSourceMount?

    /// - Parameters:
    ///   - tokens: per instance, the shared secret it is given (nil: none).
    ///   - sourceArguments: when given, the instances read `data` through cachefs-testsource with these options.
    ///   - launcher: a command that runs each instance (see `CachefsMount`).
    init(_ script: String, tokens: [String?] = [nil, nil, nil], extra: [[String]] = [[], [], []], sourceArguments: [String]? = nil,
         launcher: [String] = []) throws {
        scratch = try ScratchDirectory("cachefs-peers")
        data = try scratch.make("data")
        try shell(script, in: data)
        if let sourceArguments {
            let mount = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: sourceArguments)
            testSource = mount
            source = mount.mountpoint
        } else {
            source = data
        }
        ports = try (0..<3).map { _ in try freeLoopbackPort() }
        let everyone = ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
        do {
            for (index, port) in ports.enumerated() {
                var arguments = ["--listen", "127.0.0.1:\(port)", "--peers", everyone, "--log-level", "debug"] + extra[index]
                if let token = tokens[index] {
                    let file = scratch.path + "/token-\(index)"
                    try token.write(toFile: file, atomically: true, encoding: .utf8)
                    arguments += ["--peer-token-file", file]
                }
                mounts.append(try CachefsMount(source: source, mountpoint: try scratch.make("mnt\(index)"), extra: arguments,
                                               launcher: launcher))
            }
        } catch {
            stop()
            throw error
        }
    }

    var a: CachefsMount { mounts[0] }
    var b: CachefsMount { mounts[1] }
    var c: CachefsMount { mounts[2] }

    func stop() {
        for mount in mounts { mount.stop() }
        testSource?.stop()
    }

    func blockURL(instance: Int, path: String, size: Int, mtimeNanoseconds: Int64, index: Int = 0) -> String {
        "http://127.0.0.1:\(ports[instance])/v1/block/1048576/\(index)/\(size)/\(mtimeNanoseconds)/\(path)"
    }

    /// The HTTP status curl gets for a URL (`--path-as-is`: no client-side clean-up of `..`).
    func status(_ url: String, token: String? = nil) throws -> Int {
        var arguments = ["-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        return Int(try run("/usr/bin/curl", arguments + [url]).output) ?? -1
    }

    func sha256(_ path: String) throws -> String {
        String(try shell("sha256sum < '\(path)'").prefix(64))
    }

    func modifiedNanoseconds(_ path: String) throws -> Int64 {
        var attributes = stat()
        guard stat(path, &attributes) == 0 else { throw TestFailure("stat \(path)") }
        return Int64(attributes.st_mtim.tv_sec) * 1_000_000_000 + Int64(attributes.st_mtim.tv_nsec)
    }
}

@Suite("Peers share cached blocks", .serialized)
struct PeerTests {
    /// A container's root has no CAP_NET_ADMIN. The TCP sockets once asked for SO_DEBUG (TCP_NODELAY's
    /// number under the wrong level), which only that capability may set: every accepted peer or
    /// metrics connection was closed at once, and every peer connect failed.
    @Test("Without CAP_NET_ADMIN (root in a container), peers connect and serve, and /metrics answers")
    func peersAndMetricsWithoutNetAdmin() throws {
        let cluster = try PeerCluster("head -c 8000000 /dev/urandom > model.bin", extra: [["--metrics", "127.0.0.1:0"], [], []],
                                      launcher: ["/usr/bin/setpriv", "--bounding-set", "-net_admin"])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/model.bin") == expected)
        let b = try cluster.b.stats()
        #expect(b[.bytesFromPeers] == 8_000_000 && b[.peerFailures] == 0, "B: \(b[.bytesFromPeers]) bytes from peers, \(b[.peerFailures]) failures")
        let address = try #require(try cluster.a.stats().metricsAddress)
        let metrics = try run("/usr/bin/curl", ["-sf", "http://\(address)/metrics"], timeout: 30)
        #expect(metrics.status == 0 && metrics.output.contains("cachefs_bytes_from_source_total"), "curl: \(metrics.status)")
    }

    @Test("A pinned file is served to peers like any other: B takes under 5% of it from the source")
    func pinnedFileIsServedToPeers() throws {
        let cluster = try PeerCluster("head -c 48000000 /dev/urandom > pinned.bin")
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/pinned.bin")
        let warm = try run(cachefsBinary, ["warm", cluster.a.mountpoint + "/pinned.bin", "--pin", "--control-socket", cluster.a.controlSocket])
        #expect(warm.status == 0, "\(warm.error)")
        #expect(try cluster.a.stats()[.pinnedCachedBytes] == 48_000_000)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/pinned.bin") == expected)
        let b = try cluster.b.stats()
        #expect(b[.bytesFromSource] < 48_000_000 / 20, "B read \(b[.bytesFromSource]) bytes of A's pinned file from the source")
    }

    @Test("After A has read a file, B reads it from A's memory: every byte right, nothing from the source")
    func secondInstanceReadsFromThePeer() throws {
        let cluster = try PeerCluster("mkdir -p 'models/v 1' && head -c 40000000 /dev/urandom > 'models/v 1/weights.bin'",
                                      extra: [[], ["--metrics", "127.0.0.1:0"], []])
        defer { cluster.stop() }
        let file = "models/v 1/weights.bin"
        let expected = try cluster.sha256(cluster.data + "/" + file)
        #expect(try cluster.sha256(cluster.a.mountpoint + "/" + file) == expected)
        let a = try cluster.a.stats()
        #expect(a[.bytesFromSource] == 40_000_000)
        #expect(a.livePeers?.count == 2, "A never counts itself among its peers: \(a.livePeers ?? [])")
        #expect(a.livePeers?.contains("127.0.0.1:\(cluster.ports[0])") == false)

        #expect(try cluster.sha256(cluster.b.mountpoint + "/" + file) == expected)
        let b = try cluster.b.stats()
        #expect(b[.bytesFromSource] == 0, "B read \(b[.bytesFromSource]) bytes from the source")
        #expect(b[.bytesFromPeers] == 40_000_000)
        #expect(b[.peerFailures] == 0)
        // The Prometheus counter agrees: blocks from peers are not source bytes.
        let metrics = try run("/usr/bin/curl", ["-sf", "http://\(try #require(b.metricsAddress))/metrics"], timeout: 30)
        #expect(prometheusSamples(metrics.output)["cachefs_bytes_from_source_total"] == 0, "\(metrics.output.prefix(2000))")
        let served = try cluster.a.stats()[.servedBytes]
        #expect(served == 40_000_000, "A served \(served) bytes")

        // C finds every block at A or B, and a second read on B is from B's own memory.
        #expect(try cluster.sha256(cluster.c.mountpoint + "/" + file) == expected)
        #expect(try cluster.c.stats()[.bytesFromSource] == 0)
        try dropKernelCaches()
        #expect(try cluster.sha256(cluster.b.mountpoint + "/" + file) == expected)
        let again = try cluster.b.stats()
        #expect(again[.bytesFromPeers] == 40_000_000 && again[.bytesFromSource] == 0)
        // Wholly cached on B by now, so the kernel reads it from B's memory itself (passthrough).
        #expect(again[.passthroughOpens] == b[.passthroughOpens] + 1, "B's second open was not served from its memory")
    }

    @Test("Killing A (SIGKILL) in the middle of B's read leaves B's read correct and complete")
    func peerKilledDuringRead() throws {
        // A slow source (2 ms a request), so that the part read after the kill visibly comes from it.
        let cluster = try PeerCluster("head -c 64000000 /dev/urandom > model.bin", extra: [[], ["--prefetch-depth", "2"], []],
                                      sourceArguments: ["--latency-ms", "2"])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)

        let reader = try FileHandle(forReadingFrom: URL(fileURLWithPath: cluster.b.mountpoint + "/model.bin"))
        defer { try? reader.close() }
        var content = Data()
        while content.count < 24_000_000, let chunk = try reader.read(upToCount: 1 << 20), !chunk.isEmpty { content.append(chunk) }
        let before = try cluster.b.stats()
        #expect(before[.bytesFromPeers] > 0, "the first part came from A")
        kill(cluster.a.pid, SIGKILL)
        while let chunk = try reader.read(upToCount: 1 << 20), !chunk.isEmpty { content.append(chunk) }
        #expect(content.count == 64_000_000)
        let copy = cluster.scratch.path + "/read-by-b.bin"
        try content.write(to: URL(fileURLWithPath: copy))
        #expect(try cluster.sha256(copy) == expected)
        let after = try cluster.b.stats()
        #expect(after[.bytesFromSource] > 0, "the rest came from the source")
        #expect(after[.bytesFromPeers] + after[.bytesFromSource] >= 64_000_000)
        #expect(after[.peerFailures] >= 1, "A's death was noticed")
        #expect(after[.peerFailures] <= 5, "A is skipped while in backoff rather than asked for every block")
    }

    @Test("A wrong token gets nothing from peers but still reads correctly; requests without the token are refused")
    func wrongTokenIsRefused() throws {
        let cluster = try PeerCluster("head -c 5000000 /dev/urandom > f.bin", tokens: ["right-token", "right-token", "wrong-token"])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/f.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/f.bin") == expected)
        #expect(try cluster.sha256(cluster.c.mountpoint + "/f.bin") == expected)
        let c = try cluster.c.stats()
        #expect(c[.bytesFromPeers] == 0 && c[.bytesFromSource] == 5_000_000)
        #expect(c[.peerFailures] >= 1)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/f.bin") == expected)
        #expect(try cluster.b.stats()[.bytesFromSource] == 0, "B, with the right token, read from A")

        let url = cluster.blockURL(instance: 0, path: "f.bin", size: 5_000_000, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/f.bin"))
        #expect(try cluster.status(url) == 401)
        #expect(try cluster.status(url, token: "wrong-token") == 403)
        #expect(try cluster.status(url, token: "right-token") == 200)
    }

    @Test("Requests for ../ or absolute paths, and for files not resident, are refused with 4xx")
    func unsafeRequestsAreRefused() throws {
        let cluster = try PeerCluster("echo secret > inside.txt && head -c 3000000 /dev/urandom > f.bin")
        defer { cluster.stop() }
        _ = try cluster.sha256(cluster.a.mountpoint + "/f.bin")
        let outside = cluster.scratch.path + "/outside.txt"
        try "outside the source\n".write(toFile: outside, atomically: true, encoding: .utf8)
        let mtime = try cluster.modifiedNanoseconds(outside)
        for path in ["..%2Foutside.txt", "%2F" + outside.dropFirst().replacingOccurrences(of: "/", with: "%2F"),
                     "a%2F..%2F..%2Foutside.txt", "../outside.txt", "..", "%00"] {
            let status = try cluster.status(cluster.blockURL(instance: 0, path: path, size: 19, mtimeNanoseconds: mtime))
            #expect((400..<500).contains(status), "\(path): \(status)")
        }
        // Well-formed but never read here: 404, and the source is not read for the peer.
        let inside = cluster.blockURL(instance: 0, path: "inside.txt", size: 7, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/inside.txt"))
        #expect(try cluster.status(inside) == 404)
        let fb = cluster.blockURL(instance: 0, path: "f.bin", size: 3_000_000, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/f.bin"), index: 2)
        #expect(try cluster.status(fb) == 200)
        #expect(try run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", fb]).output == "405")
        #expect(try cluster.a.stats()[.bytesFromSource] == 3_000_000, "nothing more was read from the source")
    }

    @Test("A peer's block of a file that has since changed in the source is not believed")
    func changedFileIsNotTakenFromAPeer() throws {
        let cluster = try PeerCluster("head -c 3000000 /dev/urandom > f.bin")
        defer { cluster.stop() }
        let path = cluster.data + "/f.bin"
        _ = try cluster.sha256(cluster.a.mountpoint + "/f.bin")
        // New content of the same size, then a new mtime: only (size, mtime) tells the versions apart.
        try shell("head -c 3000000 /dev/urandom > new.bin && cat new.bin > f.bin && rm new.bin && touch -d '2030-01-01 00:00:00.123456789' f.bin", in: cluster.data)
        let expected = try cluster.sha256(path)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/f.bin") == expected)
        let b = try cluster.b.stats()
        #expect(b[.bytesFromPeers] == 0 && b[.bytesFromSource] == 3_000_000)
        #expect(b[.peerNotFound] > 0, "A was asked and had only the old version")
    }

    @Test("Bad peer options fail with one clear line and leave nothing mounted")
    func badPeerOptions() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        let emptyToken = scratch.path + "/empty-token"
        try "\n".write(toFile: emptyToken, atomically: true, encoding: .utf8)
        let unreadable = try scratch.make("a-directory")
        // A port someone else listens on.
        let (busy, busyPort) = try loopbackSocket(listening: true)
        defer { close(busy) }
        let base = [source, mountpoint, "--capacity", "64M"]
        let cases: [([String], String)] = [
            (["--listen", "nonsense"], "--listen nonsense: expected HOST:PORT"),
            (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
            (["--listen", ":7070"], "expected HOST:PORT"),
            (["--peers", "127.0.0.1:7070,127.0.0.2"], "'127.0.0.2' is not HOST:PORT"),
            (["--peers", "dns:cachefs.svc"], "is not HOST:PORT"),
            (["--peers", "127.0.0.1:7070", "--peer-token-file", scratch.path + "/absent"], "No such file or directory"),
            (["--peers", "127.0.0.1:7070", "--peer-token-file", emptyToken], "is empty"),
            (["--peers", "127.0.0.1:7070", "--peer-token-file", unreadable], "--peer-token-file"),
            (["--peer-token-file", emptyToken], "needs --listen or --peers"),
            (["--listen", "127.0.0.1:\(busyPort)"], "Address already in use"),
        ]
        for (extra, fragment) in cases {
            let result = try run(cachefsBinary, base + extra, timeout: 60)
            #expect(result.status != 0, "\(extra) succeeded")
            #expect(result.error.split(separator: "\n").count == 1 && result.error.hasPrefix("cachefs: ") && result.error.contains(fragment),
                    "\(extra): \(result.error)")
            #expect(!isMounted(mountpoint), "\(extra) left a mount")
        }
    }
}
