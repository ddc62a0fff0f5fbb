import CLinux
import Dispatch
import Foundation
import HTTPServing
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing

@testable import BlockCache
@testable import PeerTransport

#if canImport(Glibc)
import Glibc
#endif

/// A provider of blocks for a test server: what it holds in memory (`resident`), and what it can
/// load as owner (`loadable`), each by block index of the one file it knows (`file`).
final class TestProvider: PeerBlockProvider {
    let file: PeerFile
    let resident: Mutex<[Int64: Block]>
    let loadable: [Int64: Block]
    /// Requests that needed the pool (the slow path), and loads as owner.
    let slowLookups = Atomic<Int>(0)
    let loads = Atomic<Int>(0)
    /// Whether the version was checked (the quick path answers only then).
    let checked = Atomic<Bool>(false)

    init(file: PeerFile, resident: [Int64: Block] = [:], loadable: [Int64: Block] = [:]) {
        self.file = file
        self.resident = Mutex(resident)
        self.loadable = loadable
    }

    private func known(_ other: PeerFile, checkingSource: Bool) -> Bool? {
        guard checkingSource || checked.load(ordering: .relaxed) else { return nil }
        if checkingSource {
            slowLookups.add(1, ordering: .relaxed)
            checked.store(true, ordering: .relaxed)
        }
        return other == file
    }

    func residentBlocks(_ range: PeerBlockRange, checkingSource: Bool) -> PeerResidency<[Block]> {
        guard let current = known(range.file, checkingSource: checkingSource) else { return .undetermined }
        guard current else { return .otherVersion }
        let held = resident.withLock { $0 }
        return .current(Array(range.indices.map { held[$0] }.prefix { $0 != nil }.map { $0! }))
    }

    func holdings(of other: PeerFile, checkingSource: Bool) -> PeerResidency<BlockBitmap> {
        guard let current = known(other, checkingSource: checkingSource) else { return .undetermined }
        guard current else { return .otherVersion }
        var bitmap = BlockBitmap(blockCount: file.blockCount)
        for index in resident.withLock({ Array($0.keys) }) { bitmap[index] = true }
        return .current(bitmap)
    }

    func loadForPeer(_ range: PeerBlockRange) -> PeerLoadAnswer {
        loads.add(1, ordering: .relaxed)
        guard range.file == file else { return .otherVersion }
        let blocks = Array(range.indices.lazy.map { self.loadable[$0] }.prefix { $0 != nil }.map { $0! })
        guard !blocks.isEmpty else { return .failed("EIO") }
        resident.withLock { held in for (offset, block) in blocks.enumerated() { held[range.first + Int64(offset)] = block } }
        return .blocks(blocks, bytesFromSource: blocks.reduce(0) { $0 + $1.count })
    }
}

/// A server on a free loopback port for the duration of `body`.
func withPeerServer<T>(
    token: String? = nil, instanceID: String = "server", counters: PeerServerCounters = PeerServerCounters(),
    idleTimeout: Duration = .seconds(60), provider: any PeerBlockProvider, fleet: PeerFleet? = nil,
    _ body: (PeerAddress) async throws -> T
) async throws -> T {
    let port = Mutex<Int?>(nil)
    let server = PeerServer(
        address: HostPort(host: "127.0.0.1", port: 0), token: token, instanceID: instanceID, counters: counters,
        provider: provider, fleet: fleet, loadThreads: 4, lookupThreads: 2, idleTimeout: idleTimeout,
        onRunning: { bound in port.withLock { $0 = bound } }, logger: Logger(label: "test")
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

/// Blocks of `content` cut at `blockSize`, resident the way the cache keeps them: side by side in one
/// version's memory file (a file smaller than a block gets anonymous memory).
func makeBlocks(_ content: [UInt8], blockSize: Int) throws -> [Int64: Block] {
    let cache = BlockCache(capacity: content.count + blockSize, blockSize: blockSize)
    let version = FileVersion(
        identity: .inode(device: 1, inode: 1), size: Int64(content.count), modified: .init(seconds: 0, nanoseconds: 0),
        changed: .init(seconds: 0, nanoseconds: 0))
    var blocks: [Int64: Block] = [:]
    for (index, start) in stride(from: 0, to: content.count, by: blockSize).enumerated() {
        let piece = content[start..<min(content.count, start + blockSize)]
        blocks[Int64(index)] = try cache.block(for: BlockKey(file: version, index: Int64(index)), length: piece.count) { buffer in
            buffer.copyBytes(from: piece)
            return piece.count
        }
    }
    return blocks
}

func makeBlock(_ bytes: [UInt8]) throws -> Block { try makeBlocks(bytes, blockSize: bytes.count)[0]! }

func client(
    token: String? = nil, instanceID: String = "client", blockTimeout: Duration = .seconds(20), ownerTimeout: Duration = .seconds(20)
) -> PeerClient {
    var configuration = PeerClient.Configuration(token: token, instanceID: instanceID)
    configuration.blockTimeout = blockTimeout
    configuration.ownerTimeout = ownerTimeout
    return PeerClient(configuration: configuration)
}

/// Memory to receive a run into: a memory file's mapping, as the cache's blocks are (received with
/// splice), or anonymous memory (received with recv).
final class ReceiveMemory {
    let file: Int32?
    let base: UnsafeMutableRawPointer
    let size: Int
    let blockSize: Int

    init(blocks: Int, blockSize: Int, inMemoryFile: Bool) {
        size = max(1, blocks * blockSize)
        self.blockSize = blockSize
        if inMemoryFile {
            let fd = cachefs_memfd_create("receive-test", UInt32(CACHEFS_MFD_CLOEXEC))
            ftruncate(fd, off_t(size))
            file = fd
            base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
        } else {
            file = nil
            base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        }
    }

    deinit {
        munmap(base, size)
        if let file { close(file) }
    }

    func targets(_ range: PeerBlockRange) -> ArraySlice<ReceiveTarget> {
        range.indices.enumerated().map { offset, index in
            let memory = UnsafeMutableRawBufferPointer(start: base + offset * blockSize, count: range.file.length(ofBlock: index))
            return ReceiveTarget(memory: memory, file: file.map { ($0, Int64(offset * blockSize)) })
        }[...]
    }

    func bytes(_ range: PeerBlockRange, count: Int) -> [UInt8] {
        range.indices.prefix(count).enumerated().flatMap { offset, index in
            Array(UnsafeRawBufferPointer(start: base + offset * blockSize, count: range.file.length(ofBlock: index)))
        }
    }
}

/// Fetches a run into fresh memory; returns the outcome and the bytes of the blocks received.
func fetch(
    _ client: PeerClient, _ range: PeerBlockRange, ownerLoad: Bool = false, from peer: PeerAddress,
    inMemoryFile: Bool = true
) -> (PeerFetchOutcome, [UInt8]) {
    let memory = ReceiveMemory(blocks: range.count, blockSize: range.file.blockSize, inMemoryFile: inMemoryFile)
    let outcome = client.fetch(range, ownerLoad: ownerLoad, from: peer, into: memory.targets(range))
    guard case .blocks(let count, _) = outcome else { return (outcome, []) }
    return (outcome, memory.bytes(range, count: count))
}

func succeeded(_ outcome: PeerFetchOutcome, blocks: Int) -> Bool {
    if case .blocks(let count, let checksums) = outcome { return count == blocks && checksums.count == blocks }
    return false
}

@Suite(.serialized) struct TransferTests {
    static let blockSize = 1 << 20
    let content = (0..<(3 << 20) + 12345).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
    var file: PeerFile {
        PeerFile(path: Array("dir/näme %/file".utf8), size: Int64(content.count), modifiedNanoseconds: 99, blockSize: Self.blockSize)
    }

    func slice(_ blocks: Range<Int>) -> [UInt8] {
        Array(content[(blocks.lowerBound * Self.blockSize)..<min(content.count, blocks.upperBound * Self.blockSize)])
    }

    /// A run goes over one connection as one answer, received straight into a memory file (splice) or
    /// anonymous memory (recv); a run stops at the first block not in memory; another version is a 404.
    @Test(arguments: [true, false]) func servesRunsOfResidentBlocks(inMemoryFile: Bool) async throws {
        var blocks = try makeBlocks(content, blockSize: Self.blockSize)
        blocks[2] = nil // blocks 0, 1 and 3 are in memory
        let provider = TestProvider(file: file, resident: blocks)
        let counters = PeerServerCounters()
        try await withPeerServer(counters: counters, provider: provider) { peer in
            let client = client()
            defer { client.shutdown() }
            let (outcome, bytes) = fetch(client, file.blocks(0, count: 4), from: peer, inMemoryFile: inMemoryFile)
            #expect(succeeded(outcome, blocks: 2), "blocks 0 and 1, then the gap")
            #expect(bytes == slice(0..<2))
            let (last, lastBytes) = fetch(client, file.blocks(3, count: 1), from: peer, inMemoryFile: inMemoryFile)
            #expect(succeeded(last, blocks: 1) && lastBytes == slice(3..<4), "the short last block")
            #expect(fetch(client, file.blocks(2, count: 2), from: peer).0 == .notFound)
            var otherVersion = file
            otherVersion.modifiedNanoseconds += 1
            #expect(fetch(client, otherVersion.blocks(0, count: 1), from: peer).0 == .notFound)
            #expect(counters.servedBlocks.load(ordering: .relaxed) == 3)
            #expect(counters.servedBytes.load(ordering: .relaxed) == UInt64(2 * Self.blockSize + 12345))
            #expect(counters.notResident.load(ordering: .relaxed) == 2)
            #expect(client.idleConnections(to: peer) == 1, "one kept-alive connection carried every exchange")
        }
    }

    @Test func holdingsAreABitmapOfTheBlocksInMemory() async throws {
        var blocks = try makeBlocks(content, blockSize: Self.blockSize)
        blocks[1] = nil
        let counters = PeerServerCounters()
        try await withPeerServer(counters: counters, provider: TestProvider(file: file, resident: blocks)) { peer in
            let client = client()
            defer { client.shutdown() }
            guard case .holds(let bitmap) = client.holdings(of: file, from: peer) else { Issue.record("no holdings"); return }
            #expect((0..<4).map { bitmap[$0] } == [true, false, true, true])
            var otherVersion = file
            otherVersion.size -= 1
            #expect(
                client.holdings(of: otherVersion, from: peer) == .holds(BlockBitmap(blockCount: otherVersion.blockCount)),
                "another version: nothing held")
            #expect(counters.holdingsServed.load(ordering: .relaxed) == 1)
            #expect(client.counters.holdingsQueries.load(ordering: .relaxed) == 2)
        }
    }

    /// A request the quick lookup can answer never reaches the pool; one it cannot does, once per check.
    @Test func quickLookupAnswersWithoutThePool() async throws {
        let provider = TestProvider(file: file, resident: try makeBlocks(content, blockSize: Self.blockSize))
        try await withPeerServer(provider: provider) { peer in
            let client = client()
            defer { client.shutdown() }
            #expect(succeeded(fetch(client, file.blocks(0, count: 1), from: peer).0, blocks: 1))
            #expect(provider.slowLookups.load(ordering: .relaxed) == 1, "the first request checks the version")
            #expect(succeeded(fetch(client, file.blocks(1, count: 3), from: peer).0, blocks: 3))
            #expect(provider.slowLookups.load(ordering: .relaxed) == 1, "later ones are answered on the event loop")
        }
    }

    /// Asked as owner, a server loads what it lacks and answers with it; asked as owner for a block it
    /// awaits from its own owner, it declines (409); its source failing is a 502.
    @Test func anOwnerLoadsWhatItLacks() async throws {
        let blocks = try makeBlocks(content, blockSize: Self.blockSize)
        let provider = TestProvider(file: file, resident: [:], loadable: blocks.filter { $0.key < 3 })
        try await withPeerServer(provider: provider) { peer in
            let client = client()
            defer { client.shutdown() }
            #expect(fetch(client, file.blocks(0, count: 2), from: peer).0 == .notFound, "not asked as owner: not loaded")
            #expect(provider.loads.load(ordering: .relaxed) == 0)
            let (outcome, bytes) = fetch(client, file.blocks(0, count: 2), ownerLoad: true, from: peer)
            #expect(succeeded(outcome, blocks: 2) && bytes == slice(0..<2))
            #expect(provider.loads.load(ordering: .relaxed) == 1)
            #expect(succeeded(fetch(client, file.blocks(0, count: 2), from: peer).0, blocks: 2), "then held in memory")
            #expect(fetch(client, file.blocks(3, count: 1), ownerLoad: true, from: peer).0 == .declined(502), "the owner's source failed")
        }
    }

    @Test func tokenIsRequiredAndChecked() async throws {
        let provider = TestProvider(file: file, resident: try makeBlocks(content, blockSize: Self.blockSize))
        try await withPeerServer(token: "s3cret-token", provider: provider) { peer in
            let right = client(token: "s3cret-token"), wrong = client(token: "s3cret-tokem"), none = client()
            defer { right.shutdown(); wrong.shutdown(); none.shutdown() }
            #expect(succeeded(fetch(right, file.blocks(0, count: 1), from: peer).0, blocks: 1))
            #expect(fetch(wrong, file.blocks(0, count: 1), from: peer).0 == .failed("token refused (HTTP 403)"))
            #expect(fetch(none, file.blocks(0, count: 1), from: peer).0 == .failed("token refused (HTTP 401)"))
            #expect(wrong.holdings(of: file, from: peer) == .failed("token refused (HTTP 403)"), "holdings need the token too")
            guard case .holds = right.holdings(of: file, from: peer) else { Issue.record("holdings refused with the right token"); return }
        }
        #expect(PeerResponder.bearerMatches("Bearer abc", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Bearer abd", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Bearer abcd", token: Array("abc".utf8)))
        #expect(!PeerResponder.bearerMatches("Basic abc", token: Array("abc".utf8)))
    }

    @Test func aServerRefusesItsOwnInstance() async throws {
        let provider = TestProvider(file: file, resident: try makeBlocks(content, blockSize: Self.blockSize))
        try await withPeerServer(instanceID: "me", provider: provider) { peer in
            let client = client(instanceID: "me")
            defer { client.shutdown() }
            #expect(fetch(client, file.blocks(0, count: 1), from: peer).0 == .isSelf)
            #expect(client.holdings(of: file, from: peer) == .isSelf)
        }
    }

    /// A server that lies: a body of the right length with a wrong CRC, a body with one byte changed and
    /// the original's CRC, a body shorter than announced (then the connection closes), a block count
    /// over what was asked. None is accepted.
    @Test(arguments: [true, false]) func wrongLengthOrChecksumIsNotBelieved(inMemoryFile: Bool) throws {
        let body = Array(content.prefix(Self.blockSize))
        let checksum = body.withUnsafeBytes { CRC32CChecksum(of: $0) }
        var altered = body
        altered[777] ^= 0x10
        let lies: [(String, [UInt8])] = [
            ("deadbeef", body), (checksum.hex, altered), (checksum.hex, Array(body.dropLast(100))),
        ]
        for (number, (announced, sent)) in lies.enumerated() {
            let answer =
                Array(
                    "HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nX-Cachefs-Blocks: 1\r\nX-Cachefs-CRC32C: \(announced)\r\n\r\n".utf8
                ) + sent
            let (listener, peer) = try listenOnLoopback()
            defer { close(listener) }
            let server = Thread {
                let connection = accept(listener, nil, nil)
                var request = [UInt8](repeating: 0, count: 4096)
                _ = recv(connection, &request, request.count, 0)
                _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(connection)
            }
            server.start()
            let client = client(blockTimeout: .seconds(5))
            defer { client.shutdown() }
            guard case .failed(let reason) = fetch(client, file.blocks(0, count: 1), from: peer, inMemoryFile: inMemoryFile).0 else {
                Issue.record("lie \(number) was accepted")
                continue
            }
            #expect(number == 2 ? reason.contains("closed") : reason.contains("CRC-32C mismatch"), "lie \(number): \(reason)")
        }
        #expect(PeerResponseHeaders.parseChecksumList("deadbeef,00000000") != nil) // the two-block lie below uses it
        let answer = Array(
            "HTTP/1.1 200 OK\r\nContent-Length: \(2 * body.count)\r\nX-Cachefs-Blocks: 2\r\nX-Cachefs-CRC32C: deadbeef,00000000\r\n\r\n"
                .utf8)
        let (listener, peer) = try listenOnLoopback()
        defer { close(listener) }
        Thread {
            let connection = accept(listener, nil, nil)
            var request = [UInt8](repeating: 0, count: 4096)
            _ = recv(connection, &request, request.count, 0)
            _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(connection)
        }.start()
        let client = client(blockTimeout: .seconds(5))
        defer { client.shutdown() }
        #expect(fetch(client, file.blocks(0, count: 1), from: peer).0 == .failed("block count 2"), "more blocks than asked for")
    }

    @Test func malformedRequestsGet4xx() async throws {
        let provider = TestProvider(file: file, resident: try makeBlocks(content, blockSize: Self.blockSize))
        try await withPeerServer(provider: provider) { (peer) async throws in
            for (path, status) in [
                ("/v1/block/1048576/0/100/5/..%2Fetc%2Fpasswd", 400), ("/v1/block/1048576/0/100/5/%2Fetc%2Fpasswd", 400),
                ("/v1/holdings/1048576/100/5/..%2Fetc", 400), ("/v1/block/1048576/0/100/5/a?count=100", 400),
                ("/v1/block/x", 400), ("/", 400), ("/v1/block/1048576/0/100/5/" + String(repeating: "a", count: 20_000), 414),
            ] {
                #expect(try rawStatus(peer, "GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == status, "\(path.prefix(60))")
            }
            #expect(
                try rawStatus(peer, "PUT /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") == 405)
            #expect(try rawStatus(peer, "DELETE /v1/block/1/0/1/1/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 405)
        }
    }

    /// A connection that sends nothing, or half a request, is closed after the idle timeout;
    /// one that keeps asking stays open.
    @Test func idleConnectionsAreClosed() async throws {
        let provider = TestProvider(file: file, resident: try makeBlocks(content, blockSize: Self.blockSize))
        try await withPeerServer(idleTimeout: .milliseconds(300), provider: provider) { peer in
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

    /// A kept-alive connection that the peer closes instead of answering is replaced by a new one for the
    /// same block, without the fetch failing; one the peer closes while it is idle is not used again.
    @Test func aKeptConnectionThePeerDropsIsReplaced() throws {
        let body = Array(content.prefix(4096))
        let small = PeerFile(path: Array("a".utf8), size: Int64(body.count), modifiedNanoseconds: 1, blockSize: body.count)
        let checksum = body.withUnsafeBytes { CRC32CChecksum(of: $0) }
        let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body.count)\r\nX-Cachefs-CRC32C: \(checksum.hex)\r\n\r\n".utf8) + body
        let (listener, peer) = try listenOnLoopback()
        defer { close(listener) }
        let accepted = Atomic<Int>(0)
        // The first connection answers one request and drops the second unanswered; the next
        // one answers one request and, a little later, closes while the client keeps it idle.
        let server = Thread {
            for number in 1...3 {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }
                accepted.add(1, ordering: .relaxed)
                var request = [UInt8](repeating: 0, count: 4096)
                var answered = 0
                while recv(connection, &request, request.count, 0) > 0 {
                    if number == 1 && answered == 1 { break }
                    _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
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
        let first = fetch(client, small.blocks(0, count: 1), from: peer)
        #expect(succeeded(first.0, blocks: 1), "\(first.0)")
        let second = fetch(client, small.blocks(0, count: 1), from: peer)
        #expect(succeeded(second.0, blocks: 1) && second.1 == body, "\(second.0)")
        #expect(accepted.load(ordering: .relaxed) == 2, "the second block came over a new connection")
        #expect(client.idleConnections(to: peer) == 1, "kept for the next block")
        usleep(600_000) // the peer closes the idle connection meanwhile
        let third = fetch(client, small.blocks(0, count: 1), from: peer)
        #expect(succeeded(third.0, blocks: 1), "a connection the peer closed while idle is not used: \(third.0)")
        #expect(accepted.load(ordering: .relaxed) == 3)
    }

    /// A peer that accepts connections but never answers must cost at most the block timeout.
    @Test func timesOutOnAPeerThatNeverAnswers() throws {
        let (listener, peer) = try listenOnLoopback()
        defer { close(listener) }
        let client = client(blockTimeout: .milliseconds(300), ownerTimeout: .milliseconds(300))
        defer { client.shutdown() }
        for ownerLoad in [false, true] {
            let started = ContinuousClock.now
            let (outcome, _) = fetch(client, file.blocks(0, count: 1), ownerLoad: ownerLoad, from: peer)
            let waited = ContinuousClock.now - started
            #expect(outcome == .timedOut)
            #expect(waited < .seconds(2), "waited \(waited) for a silent peer with a 300 ms timeout")
        }
    }

    /// Guards the holders, the owners and the backoff. Three instances are known: a dead one (nothing
    /// listens), a live server, and this one. Holdings come from the live server only (the dead one fails
    /// once and is then in backoff); blocks it holds come from it; a block nobody holds goes to its owner,
    /// the live server, for a stripe it owns, or to this instance's own source for one it owns.
    @Test func theFleetFindsHoldersThenOwnersAndBacksOffFailingPeers() async throws {
        let blocks = try makeBlocks(content, blockSize: 1 << 20)
        let big = PeerFile(path: file.path, size: 64 << 20, modifiedNanoseconds: 99, blockSize: 1 << 20) // 16 stripes of 4 blocks
        let stripeContent = Dictionary(uniqueKeysWithValues: (0..<64).map { (Int64($0), blocks[Int64($0 % 2)]!) })
        let provider = TestProvider(file: big, resident: [0: blocks[0]!, 1: blocks[1]!], loadable: stripeContent)
        try await withPeerServer(provider: provider) { live in
            let dead = PeerAddress(host: "127.0.0.1", port: 1)
            let me = PeerAddress(host: "127.0.0.1", port: 2)
            let discovery = PeerDiscovery(
                seeds: [HostPort(host: "x", port: 1)], logger: Logger(label: "test"), isSelf: { $0 == me },
                resolve: { _ in [dead, live, me] })
            discovery.refresh()
            #expect(discovery.peers == [dead, live].sorted() && discovery.ownAddress == me)
            let fleet = PeerFleet(client: client(), discovery: discovery, ownAddress: nil, logger: Logger(label: "test"))
            defer { fleet.client.shutdown() }
            let memory = ReceiveMemory(blocks: 4, blockSize: 1 << 20, inMemoryFile: true)

            // Blocks 0 and 1 are held by the live server: taken from it as a run; the dead one failed its holdings query.
            let held = fleet.load(big.blocks(0, count: 4), into: memory.targets(big.blocks(0, count: 4)))
            guard case .received(2, _) = held else { Issue.record("blocks 0 and 1 from the holder: \(held)"); return }
            #expect(memory.bytes(big.blocks(0, count: 2), count: 2) == slice(0..<2))
            #expect(fleet.counters.blocksFromHolders.load(ordering: .relaxed) == 2)
            #expect(!fleet.client.health.isAvailable(dead), "the dead peer is in backoff after one failed query")
            #expect(fleet.counters.failures.load(ordering: .relaxed) == 1)

            // Blocks nobody holds: each stripe goes to its owner among {live, me} (dead is in backoff).
            var ownedHere = 0, ownedThere = 0
            let owners = Rendezvous.owners(of: big, among: [dead, live, me].sorted())
            for stripe in Int64(1)..<16 {
                let range = big.blocks(stripe * 4, count: 4)
                // The balanced owner, or, where that is the dead peer (in backoff), the next live one in rank.
                let owner =
                    owners[Int(stripe)] != dead
                    ? owners[Int(stripe)] : Rendezvous.rank([dead, live, me], file: big, stripe: stripe).first { $0 != dead }!
                let answer = fleet.load(range, into: memory.targets(range))
                if owner == me {
                    #expect(answer == .readSource(blocks: 4), "stripe \(stripe) is this instance's")
                    ownedHere += 1
                } else {
                    guard case .received(4, _) = answer else { Issue.record("stripe \(stripe): \(answer)"); continue }
                    let expected: [UInt8] = range.indices.flatMap { index -> [UInt8] in
                        let source = Int(index % 2)
                        return slice(source..<(source + 1))
                    }
                    #expect(memory.bytes(range, count: 4) == expected)
                    ownedThere += 1
                }
            }
            #expect(ownedHere > 0 && ownedThere > 0, "both own some stripes (\(ownedHere), \(ownedThere))")
            #expect(fleet.counters.ownerRequests.load(ordering: .relaxed) == UInt64(ownedThere))
            #expect(fleet.counters.blocksFromOwners.load(ordering: .relaxed) == UInt64(4 * ownedThere))
            #expect(fleet.client.counters.requests.load(ordering: .relaxed) == UInt64(1 + ownedThere), "nothing was asked of the dead peer")
        }
    }

    @Test func discoveryDropsThisInstanceAndKeepsLastAnswerOnFailure() {
        let me = PeerAddress(host: "10.0.0.1", port: 7070), other = PeerAddress(host: "10.0.0.2", port: 7070)
        let answers = Mutex<[[PeerAddress]?]>([[me, other], nil, [other, PeerAddress(host: "10.0.0.3", port: 7070)]])
        let discovery = PeerDiscovery(
            seeds: [HostPort(host: "svc", port: 7070)], logger: Logger(label: "test"), isSelf: { $0 == me },
            resolve: { _ in answers.withLock { $0.removeFirst() } })
        discovery.refresh()
        #expect(discovery.peers == [other])
        #expect(discovery.ownAddress == me, "the name lists this instance too: that is its place in the ranking")
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
    let (listener, port) = try loopbackSocket(listening: true)
    return (listener, PeerAddress(host: "127.0.0.1", port: port))
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
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
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
