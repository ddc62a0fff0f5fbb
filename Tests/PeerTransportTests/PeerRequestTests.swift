import CRC32C
import HTTPServing
import TestSupport
import Testing

@testable import PeerTransport

@Suite struct PeerRequestTests {
    /// A deterministic generator, so a failure can be reproduced.
    @Test func roundTripOfOddNames() throws {
        let names: [[UInt8]] = [
            Array("models/llama 3/model-00001-of-00004.safetensors".utf8),
            Array("ünïcödé/日本語/ファイル.bin".utf8),
            Array("100%/a+b=c?d#e&f;g".utf8),
            [0xFF, 0xFE, 0x80, UInt8(ascii: "/"), 0x01, 0x7F, 0x20, 0x25], // not UTF-8, control bytes
            Array("...hidden/..x/x../.../~tilde".utf8),
        ]
        for name in names {
            let file = PeerFile(path: name, size: 5 << 30, modifiedNanoseconds: 1_763_900_000_123_456_789, blockSize: 1 << 20)
            for request in [
                PeerRequest.blocks(file.blocks(17, count: 1), ownerLoad: false), .blocks(file.blocks(17, count: 4), ownerLoad: true),
                .holdings(file),
            ] {
                let target = request.target
                #expect(target.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "only printable ASCII on the wire")
                #expect(try PeerRequest(target: target) == request)
            }
        }
    }

    @Test func roundTripOfRandomBytes() throws {
        var random = SplitMix64(seed: 42)
        for _ in 0..<500 {
            let length = Int.random(in: 1...200, using: &random)
            var name = (0..<length).map { _ in UInt8.random(in: 1...255, using: &random) }
            // Make it a valid relative path: no empty, "." or ".." components, not absolute.
            name = name.split(separator: UInt8(ascii: "/")).map { component in
                component.allSatisfy { $0 == UInt8(ascii: ".") } ? Array(component) + [UInt8(ascii: "x")] : Array(component)
            }.joined(separator: [UInt8(ascii: "/")]).map { $0 }
            guard !name.isEmpty else { continue }
            let size = Int64.random(in: 1...(1 << 40), using: &random)
            let blockSize = 1 << Int.random(in: 16...26, using: &random)
            let file = PeerFile(
                path: name, size: size, modifiedNanoseconds: Int64.random(in: -1_000_000_000_000...Int64(1) << 62, using: &random),
                blockSize: blockSize)
            let first = Int64.random(in: 0...(size - 1) / Int64(blockSize), using: &random)
            let request = PeerRequest.blocks(
                file.blocks(first, count: Int.random(in: 1...64, using: &random)), ownerLoad: Bool.random(using: &random))
            #expect(try PeerRequest(target: request.target) == request)
            #expect(try PeerRequest(target: PeerRequest.holdings(file).target) == .holdings(file))
        }
    }

    @Test(arguments: [
        ("/v1/block/1048576/0/100/5/%2Fetc%2Fpasswd", "absolute"),
        ("/v1/block/1048576/0/100/5/..%2F..%2Fetc%2Fpasswd", "dot-dot first"),
        ("/v1/block/1048576/0/100/5/a%2F..%2F..%2Fb", "dot-dot inside"),
        ("/v1/block/1048576/0/100/5/a%2F..", "dot-dot last"),
        ("/v1/block/1048576/0/100/5/..", "dot-dot alone"),
        ("/v1/block/1048576/0/100/5/.", "dot alone"),
        ("/v1/block/1048576/0/100/5/a%2F.%2Fb", "dot inside"),
        ("/v1/block/1048576/0/100/5/a%2F%2Fb", "empty component"),
        ("/v1/block/1048576/0/100/5/a%2F", "trailing slash"),
        ("/v1/block/1048576/0/100/5/a%00b", "NUL"),
        ("/v1/block/1048576/0/100/5/", "empty path"),
        ("/v1/block/1048576/0/100/5/a/../b", "raw slashes"),
        ("/v1/block/1048576/0/100/5/a%2", "short escape"),
        ("/v1/block/1048576/0/100/5/a%zz", "bad escape"),
        ("/v1/block/1048576/0/100/5/a b", "raw space"),
        ("/v1/block/1048576/0/100/5", "missing path"),
        ("/v1/block/1048576/0/100/a", "missing field"),
        ("/v1/block/1048576/x/100/5/a", "non-numeric index"),
        ("/v1/block/1048576/-1/100/5/a", "negative index"),
        ("/v1/block/0/0/100/5/a", "zero block size"),
        ("/v1/block/1048576/1/100/5/a", "index past the end"),
        ("/v1/block/99999999999999999999/0/100/5/a", "overflowing number"),
        ("/v1/blocks/1048576/0/100/5/a", "wrong prefix"),
        ("/v1/block/1048576/0/100/5/a?count=0", "no blocks"),
        ("/v1/block/1048576/0/100/5/a?count=65", "too many blocks"),
        ("/v1/block/1048576/0/100/5/a?load=everything", "unknown load"),
        ("/v1/block/1048576/0/100/5/a?color=blue", "unknown parameter"),
        ("/v1/holdings/1048576/100/5/..", "holdings outside the root"),
        ("/v1/holdings/1048576/100/5/a?count=2", "holdings with parameters"),
        ("/v1/holdings/1048576/100/a", "holdings missing a field"),
        ("/etc/passwd", "not a block request"),
        ("", "empty"),
    ])
    func rejectsMalformedAndUnsafeRequests(path: String, why: String) {
        #expect(throws: PeerRequestError.self, "\(why)") { try PeerRequest(target: path) }
    }

    @Test func rejectsOversizedRequests() {
        let longName = String(repeating: "a", count: 4097)
        #expect(throws: PeerRequestError.tooLong) { try PeerRequest(target: "/v1/block/1048576/0/100/5/" + longName) }
        let huge = "/v1/block/1048576/0/100/5/" + String(repeating: "%41", count: 6000)
        #expect(throws: PeerRequestError.tooLong) { try PeerRequest(target: huge) }
    }

    @Test func lengthsOfBlocksAndRuns() throws {
        let file = PeerFile(path: Array("f".utf8), size: 2_500_000, modifiedNanoseconds: 0, blockSize: 1 << 20)
        #expect(file.blockCount == 3)
        #expect(file.length(ofBlock: 2) == 2_500_000 - 2 * (1 << 20))
        #expect(file.length(ofBlock: 0) == 1 << 20 && file.length(ofBlock: 3) == 0)
        #expect(file.blocks(1, count: 10) == PeerBlockRange(file: file, first: 1, count: 2), "a run is clipped to the file")
        #expect(file.blocks(1, count: 10).byteCount == 2_500_000 - (1 << 20))
        #expect(file.blocks(0, count: 3).dropFirst(2) == file.blocks(2, count: 1))
        #expect(
            try PeerRequest(target: "/v1/block/1048576/2/2500000/0/f?count=9") == .blocks(file.blocks(2, count: 1), ownerLoad: false),
            "a request past the end asks for the blocks there are")
    }

    @Test func checksumListsAndBitmaps() {
        let checksums = [CRC32CChecksum(value: 0x1), CRC32CChecksum(value: 0xDEAD_BEEF)]
        #expect(PeerResponseHeaders.checksumList(checksums) == "00000001,deadbeef")
        #expect(PeerResponseHeaders.parseChecksumList("00000001,deadbeef") == checksums)
        #expect(PeerResponseHeaders.parseChecksumList("00000001,") == nil && PeerResponseHeaders.parseChecksumList("1,2") == nil)
        var bitmap = BlockBitmap(blockCount: 11)
        #expect(bitmap.bytes.count == 2 && bitmap.isEmpty)
        for index: Int64 in [0, 1, 2, 5, 10] { bitmap[index] = true }
        #expect(bitmap.bytes == [0b0010_0111, 0b0000_0100])
        #expect(bitmap.run(from: 0, limit: 8) == 3 && bitmap.run(from: 1, limit: 1) == 1 && bitmap.run(from: 3, limit: 8) == 0)
        #expect(bitmap.run(from: 10, limit: 8) == 1, "a run ends at the file's end")
        #expect(bitmap.setCount == 5 && !bitmap[11] && !bitmap[-1])
        #expect(BlockBitmap(bytes: bitmap.bytes, blockCount: 11) == bitmap)
        #expect(BlockBitmap(bytes: [0], blockCount: 11) == nil, "a holdings answer of the wrong length is refused")
    }

    @Test func responseHeads() {
        let head = ResponseHead(Array("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Cachefs-Blocks:  2 \r\nConnection: close".utf8))
        #expect(head?.status == 200 && head?.contentLength == 12 && head?["x-cachefs-blocks"] == "2" && head?.keepsConnection == false)
        #expect(ResponseHead(Array("HTTP/1.1 404 Not Found".utf8))?.keepsConnection == true)
        for bad in ["", "HTTP/1.1", "HTTP/1.1 2000 OK", "SPDY 200 OK", "HTTP/1.1 200 OK\r\nno colon"] {
            #expect(ResponseHead(Array(bad.utf8)) == nil, "\(bad)")
        }
    }

    @Test func crc32cKnownAnswers() {
        // The CRC-32C check value (RFC 3720, and every CRC catalogue).
        let digits = Array("123456789".utf8)
        #expect(digits.withUnsafeBytes { CRC32CChecksum(of: $0).value } == 0xE306_9283)
        // Incremental over unaligned pieces equals one pass.
        let data = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let whole = data.withUnsafeBytes { CRC32CChecksum(of: $0) }
        var pieces = CRC32CChecksum()
        data.withUnsafeBytes { bytes in
            var start = 0
            for length in [1, 7, 13, 64, 999, 65_536] + [Int](repeating: 100_003, count: 1) {
                let end = min(start + length, bytes.count)
                pieces.update(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                start = end
            }
        }
        #expect(pieces == whole)
        #expect(CRC32CChecksum(hex: whole.hex) == whole)
        // The interleaved hardware path (three lanes of 4 KiB, joined by shifting) equals the
        // byte-at-a-time table, for lengths around the lane boundaries and misaligned starts.
        var generator = SplitMix64(seed: 42)
        let random = (0..<(3 * 4096 * 3 + 64)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        random.withUnsafeBytes { bytes in
            for start in [0, 1, 5, 8] {
                for length in [0, 1, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 1, 2 * 3 * 4096 + 17, 3 * 3 * 4096 + 40] {
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<(start + length)])
                    #expect(
                        CRC32CChecksum(of: slice).value == cachefs_crc32c_portable(0, slice.baseAddress, length),
                        "start \(start), length \(length)")
                }
            }
        }
        #expect(CRC32CChecksum(hex: "xyz") == nil)
    }

    @Test func hostPortParsing() {
        #expect(HostPort(parsing: "127.0.0.1:7070") == HostPort(host: "127.0.0.1", port: 7070))
        #expect(HostPort(parsing: "cachefs.models.svc:7070") == HostPort(host: "cachefs.models.svc", port: 7070))
        #expect(HostPort(parsing: "[::1]:80") == HostPort(host: "::1", port: 80))
        #expect(HostPort(parsing: "0.0.0.0:0") == HostPort(host: "0.0.0.0", port: 0)) // any free port, to listen on
        for bad in ["", "host", "host:", ":80", "host:-1", "host:+80", "host:65536", "host:x", "::1:80", "[::1]80", "a b:80", "host:80/x"] {
            #expect(HostPort(parsing: bad) == nil, "\(bad)")
        }
    }
}
