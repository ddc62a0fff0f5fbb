import ControlPlane
import Dispatch
import Foundation
import Reporting
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A free TCP port on loopback (the kernel's pick; free again once the probe socket closes).
func freeLoopbackPort() throws -> Int {
    let (fd, port) = try loopbackSocket(listening: false)
    close(fd)
    return port
}

/// Cachefs instances (three by default) over one store, each listening on loopback and given
/// every instance's address as its peers (itself included, as a DNS name would).
final class PeerCluster {
    let scratch: ScratchDirectory
    let data: String
    let ports: [Int]
    private(set) var mounts: [CachefsMount] = []
    private var testSources: [TestSourceMount] = []

    /// - Parameters:
    ///   - tokens: per instance, the shared secret it is given (nil: none).
    ///   - sourceArguments: when given, the instances read `data` through one cachefs-testsource with these options.
    ///   - ownSources: when given, each instance reads `data` through a cachefs-testsource of its own with these
    ///     options (its own link to the store, as hosts have).
    ///   - sourceOverrides: instances that mirror a directory below `data` (made by the script) instead of `data`.
    ///   - loners: instances given only their own address as peers: they ask no one, and serve.
    ///   - launcher: a command that runs each instance (see `CachefsMount`).
    init(
        _ script: String, count: Int = 3, tokens: [String?]? = nil, extra: [[String]]? = nil, sourceArguments: [String]? = nil,
        ownSources: [[String]]? = nil, sourceOverrides: [Int: String] = [:], loners: Set<Int> = [], launcher: [String] = []
    ) throws {
        scratch = try ScratchDirectory("cachefs-peers")
        data = try scratch.make("data")
        try shell(script, in: data)
        ports = try (0..<count).map { _ in try freeLoopbackPort() }
        let everyone = ports.map { "127.0.0.1:\($0)" }.joined(separator: ",")
        do {
            var shared: String?
            if let sourceArguments {
                let mountpoint = try scratch.make("slow")
                testSources.append(try TestSourceMount(testSourceBinary, [data, mountpoint] + sourceArguments, mountpoint: mountpoint))
                shared = mountpoint
            }
            for (index, port) in ports.enumerated() {
                var source = sourceOverrides[index].map { data + "/" + $0 } ?? shared ?? data
                if let arguments = ownSources?[index] {
                    let mountpoint = try scratch.make("slow\(index)")
                    testSources.append(try TestSourceMount(testSourceBinary, [source, mountpoint] + arguments, mountpoint: mountpoint))
                    source = mountpoint
                }
                let peers = loners.contains(index) ? "127.0.0.1:\(port)" : everyone
                var arguments = ["--listen", "127.0.0.1:\(port)", "--peers", peers, "--log-level", "debug"] + (extra?[index] ?? [])
                if let token = tokens?[index] {
                    let file = scratch.path + "/token-\(index)"
                    try token.write(toFile: file, atomically: true, encoding: .utf8)
                    arguments += ["--peer-token-file", file]
                }
                mounts.append(
                    try CachefsMount(source: source, mountpoint: try scratch.make("mnt\(index)"), extra: arguments, launcher: launcher))
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
        for source in testSources { source.stop() }
    }

    /// A figure summed over the instances still running.
    func total(_ figure: Figure) throws -> UInt64 {
        try mounts.filter(\.isRunning).reduce(0) { $0 + (try $1.stats()[figure]) }
    }

    /// Reads a file through each of these instances at once; returns each reader's SHA-256.
    func readTogether(_ path: String, on instances: [Int]) throws -> [String] {
        let results = Mutex<[Int: Result<String, any Error>]>([:])
        let group = DispatchGroup()
        for index in instances {
            let file = mounts[index].mountpoint + "/" + path
            DispatchQueue.global().async(group: group) {
                let result = Result { String(try shell("sha256sum < '\(file)'").prefix(64)) }
                results.withLock { $0[index] = result }
            }
        }
        group.wait()
        return try instances.map { index in try results.withLock { $0[index]! }.get() }
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
        // 40 MB: 10 stripes, so that every instance owns some (one owning all: about 1 in 20,000).
        let cluster = try PeerCluster(
            "head -c 40000000 /dev/urandom > model.bin", extra: [["--metrics", "127.0.0.1:0"], [], []],
            launcher: ["/usr/bin/setpriv", "--bounding-set", "-net_admin"])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/model.bin") == expected)
        #expect(try cluster.total(.servedBlocks) > 0 && cluster.total(.peerFailures) == 0, "peers connected and served")
        #expect(try cluster.total(.bytesFromSource) == 40_000_000, "each block read once")
        let address = try #require(try cluster.a.stats().metricsAddress)
        let metrics = try run("/usr/bin/curl", ["-sf", "http://\(address)/metrics"], timeout: 30)
        #expect(metrics.status == 0 && metrics.output.contains("cachefs_bytes_from_source_total"), "curl: \(metrics.status)")
    }

    @Test("A pinned file is served to peers like any other: B's read takes nothing more from the source")
    func pinnedFileIsServedToPeers() throws {
        let cluster = try PeerCluster("head -c 48000000 /dev/urandom > pinned.bin")
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/pinned.bin")
        let warm = try run(
            cachefsBinary, ["warm", cluster.a.mountpoint + "/pinned.bin", "--pin", "--control-socket", cluster.a.controlSocket])
        #expect(warm.status == 0, "\(warm.error)")
        #expect(try cluster.a.stats()[.pinnedCachedBytes] == 48_000_000)
        #expect(try cluster.total(.bytesFromSource) == 48_000_000, "warming read each block from the fleet's sources once")
        #expect(try cluster.sha256(cluster.b.mountpoint + "/pinned.bin") == expected)
        #expect(try cluster.total(.bytesFromSource) == 48_000_000, "B read A's pinned file from memory, its own or A's")
    }

    @Test("A cold fleet reads each block from the source once; B then reads from memory: every byte right")
    func secondInstanceReadsFromThePeer() throws {
        let cluster = try PeerCluster(
            "mkdir -p 'models/v 1' && head -c 40000000 /dev/urandom > 'models/v 1/weights.bin'",
            extra: [[], ["--metrics", "127.0.0.1:0"], []])
        defer { cluster.stop() }
        let file = "models/v 1/weights.bin"
        let expected = try cluster.sha256(cluster.data + "/" + file)
        #expect(try cluster.sha256(cluster.a.mountpoint + "/" + file) == expected)
        let a = try cluster.a.stats()
        #expect(try cluster.total(.bytesFromSource) == 40_000_000, "each block once, from its owner's source")
        #expect(a[.bytesFromSource] + a[.bytesFromPeers] == 40_000_000)
        #expect(a[.blocksFromOwners] > 0 && a[.bytesFromSource] < 40_000_000, "the other instances loaded their stripes for A")
        #expect(a.livePeers?.count == 2, "A never counts itself among its peers: \(a.livePeers ?? [])")
        #expect(a.livePeers?.contains("127.0.0.1:\(cluster.ports[0])") == false)

        let before = try cluster.b.stats()
        #expect(try cluster.sha256(cluster.b.mountpoint + "/" + file) == expected)
        let b = try cluster.b.stats()
        #expect(
            b[.bytesFromSource] == before[.bytesFromSource],
            "B read \(b[.bytesFromSource] - before[.bytesFromSource]) more bytes from the source")
        #expect(b[.cachedBytes] == 40_000_000 && b[.peerFailures] == 0)
        #expect(b[.blocksFromHolders] > 0 && b[.holdersFound] > 0)
        // The Prometheus counters agree with the stats.
        let metrics = try run("/usr/bin/curl", ["-sf", "http://\(try #require(b.metricsAddress))/metrics"], timeout: 30)
        #expect(
            prometheusSamples(metrics.output)["cachefs_bytes_from_source_total"] == Double(b[.bytesFromSource]),
            "\(metrics.output.prefix(2000))")
        #expect(prometheusSamples(metrics.output)["cachefs_blocks_from_holders_total"] == Double(b[.blocksFromHolders]))

        // C finds every block in memory somewhere, and a second read on B is from B's own memory.
        #expect(try cluster.sha256(cluster.c.mountpoint + "/" + file) == expected)
        #expect(try cluster.total(.bytesFromSource) == 40_000_000)
        try dropKernelCaches()
        #expect(try cluster.sha256(cluster.b.mountpoint + "/" + file) == expected)
        let again = try cluster.b.stats()
        #expect(again[.bytesFromPeers] == b[.bytesFromPeers] && again[.bytesFromSource] == b[.bytesFromSource])
        // Wholly cached on B by now, so the kernel reads it from B's memory itself (passthrough).
        #expect(again[.passthroughOpens] == b[.passthroughOpens] + 1, "B's second open was not served from its memory")
    }

    @Test("Killing a holder (SIGKILL) in the middle of B's read leaves B's read correct and complete")
    func peerKilledDuringRead() throws {
        // A reads the file alone (it knows no peer), so B then finds every block at A; a slow source
        // (2 ms a request) makes the part read after the kill visibly come from it.
        let cluster = try PeerCluster(
            "head -c 64000000 /dev/urandom > model.bin", extra: [[], ["--prefetch-depth", "2"], []],
            sourceArguments: ["--latency-ms", "2"], loners: [0])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)

        let reader = try FileHandle(forReadingFrom: URL(fileURLWithPath: cluster.b.mountpoint + "/model.bin"))
        defer { try? reader.close() }
        var content = Data()
        while content.count < 24_000_000, let chunk = try reader.read(upToCount: 1 << 20), !chunk.isEmpty { content.append(chunk) }
        let before = try cluster.b.stats()
        #expect(before[.blocksFromHolders] > 0, "the first part came from A")
        kill(cluster.a.pid, SIGKILL)
        while let chunk = try reader.read(upToCount: 1 << 20), !chunk.isEmpty { content.append(chunk) }
        #expect(content.count == 64_000_000)
        let copy = cluster.scratch.path + "/read-by-b.bin"
        try content.write(to: URL(fileURLWithPath: copy))
        #expect(try cluster.sha256(copy) == expected)
        let after = try cluster.b.stats()
        #expect(try cluster.total(.bytesFromSource) > 0, "the rest came from B's and C's sources")
        #expect(after[.peerFailures] >= 1, "A's death was noticed")
        #expect(after[.peerFailures] <= 5, "A is skipped while in backoff rather than asked for every block")
    }

    @Test("An owner killed (SIGKILL) while it loads blocks for its askers leaves every reader with the right bytes")
    func ownerKilledDuringLoad() throws {
        // C's own link to the store is slow, so the stripes it owns are still loading when it dies.
        // 96 MB: 23 stripes, so that C owns some (none: about 1 in 10,000).
        let cluster = try PeerCluster(
            "head -c 96000000 /dev/urandom > model.bin",
            ownSources: [["--latency-ms", "1"], ["--latency-ms", "1"], ["--latency-ms", "5", "--bandwidth", "40000000"]])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        let (mountpoint, socket, pid) = (cluster.c.mountpoint, cluster.c.controlSocket, cluster.c.pid)
        let killer = Thread {
            while (try? CachefsMount.stats(mountpoint: mountpoint, controlSocket: socket)[.blocksLoadedForPeers]) ?? 0 < 2 {
                usleep(20_000)
            }
            kill(pid, SIGKILL)
        }
        killer.start()
        #expect(try cluster.readTogether("model.bin", on: [0, 1]) == [expected, expected])
        #expect(!cluster.c.isRunning, "C was killed during the reads")
        let a = try cluster.a.stats(), b = try cluster.b.stats()
        #expect(a[.ownerRequests] + b[.ownerRequests] > 0)
        #expect(a[.peerFailures] + b[.peerFailures] + a[.peerFallbacks] + b[.peerFallbacks] > 0, "C's death was noticed")
        #expect(a[.cachedBytes] == 96_000_000 && b[.cachedBytes] == 96_000_000)
    }

    @Test("An owner whose source fails sends its askers to their own sources")
    func ownerWithAFailingSource() throws {
        // 96 MB: 23 stripes, so that C owns some (none: about 1 in 10,000).
        let cluster = try PeerCluster(
            "head -c 96000000 /dev/urandom > model.bin",
            ownSources: [[], [], ["--fail-file", "model.bin"]])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)
        let a = try cluster.a.stats(), c = try cluster.c.stats()
        #expect(c[.sourceErrors] > 0 && c[.blocksLoadedForPeers] == 0, "C's loads for A failed")
        #expect(a[.peerFallbacks] > 0, "A read C's stripes itself")
        #expect(a[.bytesFromSource] + a[.bytesFromPeers] == 96_000_000)
    }

    @Test("A cold fleet reading one file at once reads each block from the source once")
    func coldFleetReadsEachBlockOnce() throws {
        // Each over its own link of 20 MB/s: a reader alone would take 3 s, so the three reads overlap throughout.
        let link = ["--latency-ms", "2", "--bandwidth", "20000000"]
        let cluster = try PeerCluster("head -c 64000000 /dev/urandom > model.bin", ownSources: [link, link, link])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.readTogether("model.bin", on: [0, 1, 2]) == [expected, expected, expected])
        let sourced = try cluster.total(.bytesFromSource)
        #expect(
            sourced >= 64_000_000 && sourced <= 64_000_000 + 3 << 20, "the fleet read \(sourced) bytes of a 64 MB file from its sources")
        #expect(try cluster.total(.blocksLoadedForPeers) > 0, "owners loaded blocks for the others")
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
        let before = try cluster.b.stats()
        #expect(try cluster.sha256(cluster.b.mountpoint + "/f.bin") == expected)
        #expect(
            try cluster.b.stats()[.bytesFromSource] == before[.bytesFromSource], "B, with the right token, read from A (or held the blocks)"
        )

        let url = cluster.blockURL(
            instance: 0, path: "f.bin", size: 5_000_000, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/f.bin"))
        #expect(try cluster.status(url) == 401)
        #expect(try cluster.status(url, token: "wrong-token") == 403)
        #expect(try cluster.status(url, token: "right-token") == 200)
        #expect(
            try cluster.status(url.replacingOccurrences(of: "/v1/block/1048576/0/", with: "/v1/holdings/1048576/"), token: "wrong-token")
                == 403,
            "holdings queries need the token too")
    }

    @Test("Requests for ../ or absolute paths, and for files not resident, are refused with 4xx")
    func unsafeRequestsAreRefused() throws {
        let cluster = try PeerCluster("echo secret > inside.txt && head -c 3000000 /dev/urandom > f.bin")
        defer { cluster.stop() }
        _ = try cluster.sha256(cluster.a.mountpoint + "/f.bin")
        let outside = cluster.scratch.path + "/outside.txt"
        try "outside the source\n".write(toFile: outside, atomically: true, encoding: .utf8)
        let mtime = try cluster.modifiedNanoseconds(outside)
        for path in [
            "..%2Foutside.txt", "%2F" + outside.dropFirst().replacingOccurrences(of: "/", with: "%2F"),
            "a%2F..%2F..%2Foutside.txt", "../outside.txt", "..", "%00",
        ] {
            let status = try cluster.status(cluster.blockURL(instance: 0, path: path, size: 19, mtimeNanoseconds: mtime))
            #expect((400..<500).contains(status), "\(path): \(status)")
        }
        // Well-formed but never read here: 404, and the source is not read for the peer (not asked as owner).
        let inside = cluster.blockURL(
            instance: 0, path: "inside.txt", size: 7, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/inside.txt"))
        #expect(try cluster.status(inside) == 404)
        let fb = cluster.blockURL(
            instance: 0, path: "f.bin", size: 3_000_000, mtimeNanoseconds: try cluster.modifiedNanoseconds(cluster.data + "/f.bin"),
            index: 2)
        #expect(try cluster.status(fb) == 200)
        #expect(try run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", fb]).output == "405")
        #expect(try cluster.total(.bytesFromSource) == 3_000_000, "nothing more was read from the source")
    }

    @Test("A peer holding another version of the file is never used, as holder or as owner")
    func otherVersionIsNeverTakenFromAPeer() throws {
        // A mirrors its own copy of the store, where f.bin is an older version: same size, other bytes and mtime.
        let script =
            "head -c 3000000 /dev/urandom > f.bin && mkdir old && head -c 3000000 /dev/urandom > old/f.bin"
            + " && touch -d '2020-01-01 00:00:00.5' old/f.bin"
        let cluster = try PeerCluster(script, sourceOverrides: [0: "old"])
        defer { cluster.stop() }
        let old = try cluster.sha256(cluster.data + "/old/f.bin"), new = try cluster.sha256(cluster.data + "/f.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/f.bin") == old)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/f.bin") == new)
        #expect(try cluster.sha256(cluster.c.mountpoint + "/f.bin") == new)
        let a = try cluster.a.stats(), b = try cluster.b.stats()
        #expect(a[.servedBlocks] == 0 && a[.blocksLoadedForPeers] == 0, "A served nothing of its version")
        #expect(a[.bytesFromSource] == 3_000_000 && a[.bytesFromPeers] == 0, "and took nothing of theirs")
        #expect(b[.bytesFromSource] + b[.bytesFromPeers] == 3_000_000)
        #expect(try cluster.total(.bytesFromSource) == 6_000_000, "each version's blocks read once")
    }

    @Test("A holder outside the two instances ranked first for a stripe is found and used")
    func holderOutsideTheTopTwoIsFound() throws {
        // W (instance 0) knows no peer, so it reads the file from its source alone; the other three know all
        // four. A 48 MB file has 12 stripes of 4 MiB, and W ranks third or fourth among a reader's three peers
        // for about a third of them, where the two peers ranked first hold nothing.
        let cluster = try PeerCluster("head -c 48000000 /dev/urandom > model.bin", count: 4, loners: [0])
        defer { cluster.stop() }
        let expected = try cluster.sha256(cluster.data + "/model.bin")
        #expect(try cluster.sha256(cluster.a.mountpoint + "/model.bin") == expected)
        #expect(try cluster.total(.bytesFromSource) == 48_000_000)
        #expect(try cluster.sha256(cluster.b.mountpoint + "/model.bin") == expected)
        let b = try cluster.b.stats()
        #expect(try cluster.total(.bytesFromSource) == 48_000_000, "B took every block from W's memory, none from a source")
        #expect(b[.blocksFromHolders] == 46 && b[.bytesFromPeers] == 48_000_000)
        #expect(try cluster.a.stats()[.servedBlocks] == 46)
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
            #expect(
                result.error.split(separator: "\n").count == 1 && result.error.hasPrefix("cachefs: ") && result.error.contains(fragment),
                "\(extra): \(result.error)")
            #expect(!isMounted(mountpoint), "\(extra) left a mount")
        }
    }
}
