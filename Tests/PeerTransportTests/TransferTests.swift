#if canImport(Glibc)
import Glibc
#endif
@testable import BlockCache
import Dispatch
import Foundation
import HTTPServing
import NIOCore
import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import PeerTransport

/// A server on a free loopback port for the duration of `body`.
func withPeerServer<T>(
    token: String? = nil, instanceID: String = "server", counters: PeerServerCounters = PeerServerCounters(),
    idleTimeout: Duration = .seconds(60),
    lookup: @escaping @Sendable (PeerBlockID) -> Block?,
    _ body: (PeerAddress) async throws -> T
) async throws -> T {
    let logger = Logger(label: "test")
    let port = Mutex<Int?>(nil)
    let server = PeerServer.make(
        address: HostPort(host: "127.0.0.1", port: 0), token: token, instanceID: instanceID, counters: counters,
        lookup: lookup, idleTimeout: idleTimeout, onRunning: { bound in port.withLock { $0 = bound } }, logger: logger
    )
    return try await withRunning(server) {
        while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
        return try await body(PeerAddress(host: "127.0.0.1", port: port.withLock { $0! }))
    }
}

func withRunning<T>(_ service: some Service, _ body: () async throws -> T) async throws -> T {
    let group = ServiceGroup(configuration: .init(services: [service], gracefulShutdownSignals: [], logger: Logger(label: "test")))
    let running = Task { try await group.run() }
    defer { running.cancel() }
    let result = try await body()
    await group.triggerGracefulShutdown()
    _ = await running.result
    return result
}

/// A resident block with the given bytes, made the way the cache makes them.
func makeBlock(_ bytes: [UInt8]) throws -> Block {
    let cache = BlockCache(capacity: max(bytes.count, 1), blockSize: max(bytes.count, 1))
    let key = BlockKey(file: FileVersion(identity: .inode(device: 1, inode: 1), size: Int64(bytes.count), modified: .init(seconds: 0, nanoseconds: 0), changed: .init(seconds: 0, nanoseconds: 0)), index: 0)
    return try cache.block(for: key, length: bytes.count) { buffer in
        buffer.copyBytes(from: bytes)
        return bytes.count
    }
}

func client(token: String? = nil, instanceID: String = "client", discovery: PeerDiscovery? = nil, blockTimeout: Duration = .seconds(20)) -> PeerClient {
    var configuration = PeerClient.Configuration(token: token, instanceID: instanceID)
    configuration.blockTimeout = blockTimeout
    return PeerClient(configuration: configuration, discovery: discovery, logger: Logger(label: "test"))
}

/// Fetches into a fresh buffer of the block's expected length; returns the outcome and the bytes.
func fetch(_ client: PeerClient, _ id: PeerBlockID, from peer: PeerAddress) -> (PeerFetchOutcome, [UInt8]) {
    var bytes = [UInt8](repeating: 0, count: id.expectedLength)
    let outcome = bytes.withUnsafeMutableBytes { client.fetch(id, from: peer, into: $0) }
    return (outcome, bytes)
}

@Suite(.serialized) struct TransferTests {
    let content = (0..<(3 << 20) + 12345).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
    var id: PeerBlockID {
        PeerBlockID(path: Array("dir/näme %/file".utf8), fileSize: Int64(content.count), modifiedNanoseconds: 99, blockSize: content.count, index: 0)
    }

    @Test func servesResidentBlocksAndAnswers404Otherwise() async throws {
        let block = try makeBlock(content)
        let wanted = id
        let counters = PeerServerCounters()
        try await withPeerServer(counters: counters, lookup: { $0 == wanted ? block : nil }) { peer in
            let client = client()
            defer { client.shutdown() }
            let (outcome, bytes) = fetch(client, wanted, from: peer)
            #expect(outcome == .block(content.count))
            #expect(bytes == content)
            var otherVersion = wanted
            otherVersion.modifiedNanoseconds += 1
            #expect(fetch(client, otherVersion, from: peer).0 == .notFound)
            #expect(counters.servedBlocks.load(ordering: .relaxed) == 1)
            #expect(counters.servedBytes.load(ordering: .relaxed) == UInt64(content.count))
            #expect(counters.notResident.load(ordering: .relaxed) == 1)
        }
    }

    /// A request the quick lookup can answer never reaches the pool's lookup; one it cannot does.
    @Test func quickLookupAnswersWithoutThePool() async throws {
        let block = try makeBlock(content)
        let wanted = id
        let slowLookups = Atomic<Int>(0)
        let logger = Logger(label: "test")
        let port = Mutex<Int?>(nil)
        let server = PeerServer.make(
            address: HostPort(host: "127.0.0.1", port: 0), token: nil, instanceID: "server", counters: PeerServerCounters(),
            lookup: { requested in
                slowLookups.add(1, ordering: .relaxed)
                return requested.index == 1 ? block : nil
            },
            quickLookup: { requested in
                switch requested.index {
                case 0: .resident(block)
                case 1: .undetermined
                default: .absent
                }
            },
            onRunning: { bound in port.withLock { $0 = bound } }, logger: logger
        )
        try await withRunning(server) {
            while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
            let peer = PeerAddress(host: "127.0.0.1", port: port.withLock { $0! })
            let client = client()
            defer { client.shutdown() }
            let (outcome, bytes) = fetch(client, wanted, from: peer)
            #expect(outcome == .block(content.count))
            #expect(bytes == content)
            #expect(slowLookups.load(ordering: .relaxed) == 0)
            var second = wanted
            second.index = 1
            second.fileSize = Int64(content.count) * 2
            #expect(fetch(client, second, from: peer).0 == .block(content.count))
            #expect(slowLookups.load(ordering: .relaxed) == 1)
            var third = second
            third.index = 2
            third.fileSize = Int64(content.count) * 3
            #expect(fetch(client, third, from: peer).0 == .notFound)
            #expect(slowLookups.load(ordering: .relaxed) == 1)
        }
    }

    @Test func tokenIsRequiredAndChecked() async throws {
        let block = try makeBlock(content)
        try await withPeerServer(token: "s3cret-token", lookup: { _ in block }) { peer in
            let right = client(token: "s3cret-token"), wrong = client(token: "s3cret-tokem"), none = client()
            defer { right.shutdown(); wrong.shutdown(); none.shutdown() }
            #expect(fetch(right, id, from: peer).0 == .block(content.count))
            #expect(fetch(wrong, id, from: peer).0 == .failed("token refused (HTTP 403)"))
            #expect(fetch(none, id, from: peer).0 == .failed("token refused (HTTP 401)"))
        }
        #expect(PeerResponder.bearerMatches("Bearer abc", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Bearer abd", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Bearer abcd", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Basic abc", token: Array("abc".utf8)))
    }

    @Test func aServerRefusesItsOwnInstance() async throws {
        let block = try makeBlock(content)
        try await withPeerServer(instanceID: "me", lookup: { _ in block }) { peer in
            let client = client(instanceID: "me")
            defer { client.shutdown() }
            #expect(fetch(client, id, from: peer).0 == .isSelf)
        }
    }

    @Test func wrongLengthOrChecksumIsNotBelieved() async throws {
        // A server that lies: a body of the right length with a wrong CRC, and a short body.
        let body = content
        let port = Mutex<Int?>(nil)
        let liar = HTTPListener(
            target: .tcp(HostPort(host: "127.0.0.1", port: 0)),
            makeHandler: {
                RespondingHandler { request in
                    let short = request.target.hasSuffix("short")
                    var answer = HTTPMessage.response(.ok, contentType: "application/octet-stream",
                                                      body: ByteBuffer(bytes: short ? Array(body.dropLast()) : body))
                    answer.headers.add(name: PeerServer.checksumHeaderName, value: short ? "00000000" : "deadbeef")
                    return answer
                }
            },
            onRunning: { bound in port.withLock { $0 = bound } }
        )
        try await withRunning(liar) {
            while port.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
            let peer = PeerAddress(host: "127.0.0.1", port: port.withLock { $0! })
            let client = client()
            defer { client.shutdown() }
            #expect(fetch(client, id, from: peer).0 == .failed("CRC-32C mismatch"))
            var short = id
            short.path = Array("short".utf8)
            guard case .failed(let reason) = fetch(client, short, from: peer).0 else { Issue.record("a short body was accepted"); return }
            #expect(reason.hasPrefix("length"))
        }
    }

    @Test func malformedRequestsGet4xx() async throws {
        let block = try makeBlock(content)
        try await withPeerServer(lookup: { _ in block }) { (peer) async throws in
            for (path, status) in [("/v1/block/1048576/0/100/5/..%2Fetc%2Fpasswd", 400), ("/v1/block/1048576/0/100/5/%2Fetc%2Fpasswd", 400),
                                   ("/v1/block/x", 400), ("/", 400), ("/v1/block/1048576/0/100/5/" + String(repeating: "a", count: 20_000), 414)] {
                #expect(try rawStatus(peer, "GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == status, "\(path.prefix(60))")
            }
            #expect(try rawStatus(peer, "PUT /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") == 405)
            #expect(try rawStatus(peer, "DELETE /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 405)
        }
    }

    /// A connection that sends nothing, or half a request, is closed after the idle timeout;
    /// one that keeps asking stays open.
    @Test func idleConnectionsAreClosed() async throws {
        let block = try makeBlock(content)
        try await withPeerServer(idleTimeout: .milliseconds(300), lookup: { _ in block }) { peer in
            for opening in ["", "GET /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\n"] {
                let fd = try connectRaw(peer)
                defer { close(fd) }
                _ = opening.withCString { send(fd, $0, strlen($0), 0) }
                let started = ContinuousClock.now
                var byte: UInt8 = 0
                let received = recv(fd, &byte, 1, 0)
                #expect(received == 0, "the server closed the connection (recv gave \(received), errno \(errno))")
                #expect(ContinuousClock.now - started < .seconds(3))
            }
            // A client asking every 100 ms keeps its connection: its requests all get answers.
            let fd = try connectRaw(peer)
            defer { close(fd) }
            for _ in 0..<6 {
                let request = "GET /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\n\r\n"
                _ = request.withCString { send(fd, $0, strlen($0), 0) }
                var buffer = [UInt8](repeating: 0, count: 256)
                let count = recv(fd, &buffer, buffer.count, 0)
                #expect(count > 0 && String(decoding: buffer[..<max(count, 0)], as: UTF8.self).hasPrefix("HTTP/1.1 "))
                usleep(100_000)
            }
        }
    }

    /// A kept-alive connection that the peer closes instead of answering is replaced by
    /// a new one for the same block, without the fetch failing.
    @Test func aKeptConnectionThePeerDropsIsReplaced() throws {
        let body = Array(content.prefix(4096))
        let small = PeerBlockID(path: Array("a".utf8), fileSize: Int64(body.count), modifiedNanoseconds: 1, blockSize: body.count, index: 0)
        let checksum = body.withUnsafeBytes { CRC32CChecksum(of: $0) }
        let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nX-Cachefs-CRC32C: \(checksum.hex)\r\n\r\n".utf8) + body
        let (listener, peer) = try listenOnLoopback()
        defer { close(listener) }
        let accepted = Atomic<Int>(0)
        // The first connection answers one request and drops the second unanswered; the next
        // one answers one request and, a little later, closes while the client keeps it idle.
        let server = Thread {
            for number in 1...2 {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }
                accepted.add(1, ordering: .relaxed)
                var request = [UInt8](repeating: 0, count: 4096)
                var answered = 0
                while recv(connection, &request, request.count, 0) > 0 {
                    if number == 1 && answered == 1 { break }
                    _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, 0) }
                    answered += 1
                    if number == 2 {
                        usleep(300_000)
                        break
                    }
                }
                close(connection)
            }
        }
        server.start()
        let client = client(blockTimeout: .seconds(5))
        defer { client.shutdown() }
        let first = fetch(client, small, from: peer)
        #expect(first.0 == .block(body.count))
        let second = fetch(client, small, from: peer)
        #expect(second.0 == .block(body.count))
        let sameBytes = second.1 == body
        #expect(sameBytes)
        #expect(accepted.load(ordering: .relaxed) == 2, "the second block came over a new connection")
        #expect(client.idleConnections(to: peer) == 1, "kept for the next block")
        var waited = 0
        while client.idleConnections(to: peer) > 0, waited < 100 {
            usleep(20_000)
            waited += 1
        }
        #expect(client.idleConnections(to: peer) == 0, "a connection the peer closed does not stay in the pool")
    }

    /// A peer that accepts connections but never answers must cost at most the block timeout.
    @Test func timesOutOnAPeerThatNeverAnswers() throws {
        let (listener, peer) = try listenOnLoopback()
        defer { close(listener) }
        let client = client(blockTimeout: .milliseconds(300))
        defer { client.shutdown() }
        let started = ContinuousClock.now
        let (outcome, _) = fetch(client, id, from: peer)
        let waited = ContinuousClock.now - started
        guard case .failed = outcome else { Issue.record("expected a failure, got \(outcome)"); return }
        #expect(waited < .seconds(2), "waited \(waited) for a silent peer with a 300 ms timeout")
    }

    /// Guards the backoff: the dead peer is made to rank first for the block (the block's path is
    /// chosen for it, since the live peer's port is the kernel's pick), so every fetch would ask it
    /// first; it is asked once, then skipped while in backoff. Without `recordFailure` it is asked 3 times.
    @Test func fetchTriesPeersInRankOrderAndBacksOffFailingOnes() async throws {
        let block = try makeBlock(content)
        let base = id
        try await withPeerServer(lookup: { requested in
            requested.modifiedNanoseconds == base.modifiedNanoseconds && requested.fileSize == base.fileSize ? block : nil
        }) { good in
            let dead = PeerAddress(host: "127.0.0.1", port: 1) // nothing listens: connections are refused
            func blockID(_ number: Int) -> PeerBlockID {
                var id = base
                id.path = Array("dir/file-\(number)".utf8)
                return id
            }
            let deadFirst = try #require((0..<1000).lazy.map(blockID).first { Rendezvous.rank([dead, good], for: $0)[0] == dead })
            let goodFirst = try #require((0..<1000).lazy.map(blockID).first { Rendezvous.rank([dead, good], for: $0)[0] == good })
            let discovery = PeerDiscovery(seeds: [HostPort(host: "x", port: 1)], logger: Logger(label: "test"), isSelf: { _ in false },
                                          resolve: { _ in [dead, good] })
            discovery.refresh()
            #expect(discovery.peers == [dead, good].sorted())
            let client = client(discovery: discovery)
            defer { client.shutdown() }
            // The live peer ranks first: the dead one is never asked.
            var bytes = [UInt8](repeating: 0, count: content.count)
            #expect(bytes.withUnsafeMutableBytes { client.fetch(goodFirst, into: $0) } == content.count)
            #expect(bytes == content)
            #expect(client.counters.failures.load(ordering: .relaxed) == 0)
            #expect(client.health.isAvailable(dead))
            // The dead peer ranks first: asked once, it fails, the live one answers; then it is skipped.
            for attempt in 0..<3 {
                var bytes = [UInt8](repeating: 0, count: content.count)
                #expect(bytes.withUnsafeMutableBytes { client.fetch(deadFirst, into: $0) } == content.count)
                #expect(bytes == content)
                #expect(client.counters.failures.load(ordering: .relaxed) == 1, "after fetch \(attempt + 1)")
                #expect(!client.health.isAvailable(dead), "the dead peer is in backoff")
            }
            #expect(client.health.skippedCount == 1)
            #expect(client.counters.blocks.load(ordering: .relaxed) == 4)
            #expect(client.counters.requests.load(ordering: .relaxed) == 5, "one request to the dead peer, four to the live one")
            // A block nobody has falls back to the source.
            var missing = deadFirst
            missing.modifiedNanoseconds = 1
            var none = [UInt8](repeating: 0, count: content.count)
            #expect(none.withUnsafeMutableBytes { client.fetch(missing, into: $0) } == nil)
            #expect(client.counters.fallbacks.load(ordering: .relaxed) == 1)
        }
    }

    @Test func discoveryDropsThisInstanceAndKeepsLastAnswerOnFailure() {
        let me = PeerAddress(host: "10.0.0.1", port: 7070), other = PeerAddress(host: "10.0.0.2", port: 7070)
        let answers = Mutex<[[PeerAddress]?]>([[me, other], nil, [other, PeerAddress(host: "10.0.0.3", port: 7070)]])
        let discovery = PeerDiscovery(seeds: [HostPort(host: "svc", port: 7070)], logger: Logger(label: "test"), isSelf: { $0 == me },
                                      resolve: { _ in answers.withLock { $0.removeFirst() } })
        discovery.refresh()
        #expect(discovery.peers == [other])
        discovery.refresh() // resolution failed: keep the last answer
        #expect(discovery.peers == [other])
        discovery.refresh()
        #expect(discovery.peers == [other, PeerAddress(host: "10.0.0.3", port: 7070)])
        discovery.excludeSelf(other)
        #expect(discovery.peers == [PeerAddress(host: "10.0.0.3", port: 7070)])
        // Real resolution of a name with several addresses.
        let local = PeerDiscovery.addresses(of: HostPort(host: "localhost", port: 7070)) ?? []
        #expect(local.contains(PeerAddress(host: "127.0.0.1", port: 7070)))
        #expect(PeerDiscovery.localAddresses().contains("127.0.0.1"))
    }
}

/// A listening TCP socket on a free loopback port, for peers that misbehave on purpose.
func listenOnLoopback() throws -> (Int32, PeerAddress) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, $0, &length) == 0 }
    }
    guard bound else {
        close(listener)
        throw TestError("cannot listen on loopback")
    }
    return (listener, PeerAddress(host: "127.0.0.1", port: Int(UInt16(bigEndian: address.sin_port))))
}

/// Sends a raw HTTP request and returns the status code of the answer.
func rawStatus(_ peer: PeerAddress, _ request: String) throws -> Int {
    let fd = try connectRaw(peer)
    defer { close(fd) }
    _ = request.withCString { send(fd, $0, strlen($0), 0) }
    var buffer = [UInt8](repeating: 0, count: 64)
    let count = recv(fd, &buffer, 64, 0)
    guard count >= 12 else { throw TestError("no answer") }
    let line = String(decoding: buffer[..<count], as: UTF8.self)
    guard let status = Int(line.dropFirst(9).prefix(3)) else { throw TestError("bad status line \(line)") }
    return status
}

/// A TCP connection to `peer` whose receives give up after 5 s; the caller closes it.
func connectRaw(_ peer: PeerAddress) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr(peer.host)
    address.sin_port = in_port_t(UInt16(peer.port).bigEndian)
    let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard connected == 0 else {
        close(fd)
        throw TestError("connect failed")
    }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
