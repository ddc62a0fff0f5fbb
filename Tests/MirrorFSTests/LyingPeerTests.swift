import BlockCache
import CRC32C
import Dispatch
import Foundation
import HTTPServing
import Logging
import PeerTransport
import Synchronization
import SystemPackage
import TestSupport
import Testing

@testable import MirrorFS

#if canImport(Glibc)
import Glibc
#endif

/// A peer that claims to hold every block of every file and lies about the bytes; the mirror asks it
/// through the real fleet client (HTTP over loopback) and must never hand its bytes to a reader.
@Suite(.serialized) struct LyingPeerTests {
    enum Lie: String, CaseIterable, Sendable {
        /// One byte of each block changed, sent with the CRC-32C of the true bytes.
        case alteredBody
        /// The true CRC-32C and length announced, the body cut short, then the connection closed.
        case shortBody
        /// The true bytes with a wrong CRC-32C.
        case wrongChecksum
    }

    /// Answers on a loopback port until closed: holdings all set, blocks with `lie`, from `content`.
    final class Liar: @unchecked Sendable {
        // @unchecked: set once in init; the thread touches none of it.
        let listener: Int32
        let peer: PeerAddress
        private let thread: Thread

        init(content: [UInt8], blockSize: Int, lie: Lie) throws {
            let (fd, port) = try loopbackSocket(listening: true)
            listener = fd
            peer = PeerAddress(host: "127.0.0.1", port: port)
            thread = Thread {
                while true {
                    let connection = accept(fd, nil, nil)
                    guard connection >= 0 else { return }
                    Self.serve(connection, content: content, blockSize: blockSize, lie: lie)
                    close(connection)
                }
            }
            thread.start()
        }

        func stop() { shutdown(listener, Int32(SHUT_RDWR)); close(listener) }

        private static func serve(_ connection: Int32, content: [UInt8], blockSize: Int, lie: Lie) {
            var request: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = recv(connection, &buffer, buffer.count, 0)
                guard count > 0 else { return }
                request += buffer[..<count]
                guard let end = String(decoding: request, as: UTF8.self).range(of: "\r\n\r\n") else { continue }
                let head = String(decoding: request, as: UTF8.self)[..<end.lowerBound]
                request = []
                let target = head.split(separator: " ")[1]
                var answer: [UInt8]
                if target.hasPrefix(PeerRequest.holdingsPrefix) {
                    let blocks = (content.count + blockSize - 1) / blockSize
                    answer =
                        Array("HTTP/1.1 200 OK\r\nContent-Length: \((blocks + 7) / 8)\r\n\r\n".utf8)
                        + [UInt8](repeating: 0xFF, count: (blocks + 7) / 8)
                } else {
                    guard case .blocks(let range, _)? = try? PeerRequest(target: target) else { return }
                    let start = Int(range.first) * blockSize
                    var body = Array(content[start..<min(content.count, start + blockSize)])
                    let checksum = body.withUnsafeBytes { CRC32CChecksum(of: $0) }
                    let announced = body.count
                    switch lie {
                    case .alteredBody: body[body.count / 2] ^= 0x01
                    case .shortBody: body.removeLast(body.count / 3)
                    case .wrongChecksum: break
                    }
                    let sum = lie == .wrongChecksum ? CRC32CChecksum(value: ~checksum.value) : checksum
                    answer =
                        Array(
                            "HTTP/1.1 200 OK\r\nContent-Length: \(announced)\r\nX-Cachefs-Blocks: 1\r\nX-Cachefs-CRC32C: \(sum.hex)\r\n\r\n"
                                .utf8) + body
                }
                _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if lie == .shortBody, !target.hasPrefix(PeerRequest.holdingsPrefix) { return }
            }
        }
    }

    @Test(arguments: Lie.allCases)
    func aBodyCutShortOrAlteredIsNeverServedToAReader(lie: Lie) throws {
        let blockSize = 64 << 10
        let content = randomBytes(6 * blockSize + 777, seed: 11)
        let liar = try Liar(content: content, blockSize: blockSize, lie: lie)
        defer { liar.stop() }
        let logger = Logger(label: "test")
        let discovery = PeerDiscovery(
            seeds: [HostPort(host: "liar", port: liar.peer.port)], logger: logger, isSelf: { _ in false },
            resolve: { [peer = liar.peer] _ in [peer] })
        discovery.refresh()
        var configuration = PeerClient.Configuration(token: nil, instanceID: "reader")
        configuration.blockTimeout = .seconds(5)
        // Its failures would put the liar in backoff after one block; a backoff of zero keeps asking it for every one.
        let fleet = PeerFleet(
            client: PeerClient(configuration: configuration, health: PeerHealth(backoff: .zero, maximumBackoff: .zero)),
            discovery: discovery, ownAddress: nil, logger: logger)
        defer { fleet.client.shutdown() }
        let fixture = try SourceFixture(blockSize: blockSize, fleet: fleet)
        try fixture.write("model.bin", content)
        let file = try fixture.filesystem.open(node: try fixture.lookup("model.bin"), flags: O_RDONLY)
        #expect(try fixture.read(file, at: 0, count: content.count) == content, "the reader got the peer's bytes")
        let figures = fixture.filesystem.figures
        #expect(figures[.bytesFromPeers] == 0 && figures[.bytesFromSource] == UInt64(content.count))
        #expect(fleet.client.counters.requests.load(ordering: .relaxed) >= 7, "the liar was asked for every block")
        #expect(fleet.counters.failures.load(ordering: .relaxed) >= 7)
    }
}
