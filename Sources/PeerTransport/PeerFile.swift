/// One version of a file cut into blocks, named the same way on every instance.
///
/// Instances share a source, not device or inode numbers, so a file is named by
/// its path below the source root, and its version by size and mtime: a peer's
/// block of another version has another name and is never accepted.
public struct PeerFile: Hashable, Sendable, CustomStringConvertible {
    /// Path relative to the source root, as raw bytes (names need not be UTF-8).
    public var path: [UInt8]
    public var size: Int64
    /// Modification time in nanoseconds since the epoch.
    public var modifiedNanoseconds: Int64
    public var blockSize: Int

    public init(path: [UInt8], size: Int64, modifiedNanoseconds: Int64, blockSize: Int) {
        self.path = path
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
        self.blockSize = blockSize
    }

    public var blockCount: Int64 { (size + Int64(blockSize) - 1) / Int64(blockSize) }

    /// Bytes block `index` holds: `blockSize`, or less for the file's last block; 0 past the end.
    public func length(ofBlock index: Int64) -> Int {
        let start = index * Int64(blockSize)
        guard index >= 0, start < size else { return 0 }
        return Int(min(Int64(blockSize), size - start))
    }

    /// Blocks `first..<first + count`, clipped to the file.
    public func blocks(_ first: Int64, count: Int) -> PeerBlockRange {
        PeerBlockRange(file: self, first: first, count: max(0, min(Int64(count), blockCount - first)).clampedToInt)
    }

    public var description: String {
        "\(String(decoding: path, as: UTF8.self)) (size \(size), mtime \(modifiedNanoseconds) ns, block size \(blockSize))"
    }
}

/// Adjacent blocks of one file version: what a block request names and a response carries.
public struct PeerBlockRange: Hashable, Sendable, CustomStringConvertible {
    public var file: PeerFile
    public var first: Int64
    public var count: Int

    public init(file: PeerFile, first: Int64, count: Int) {
        self.file = file
        self.first = first
        self.count = count
    }

    public var indices: Range<Int64> { first..<(first + Int64(count)) }

    /// The first `count` blocks of this range.
    public func prefix(_ count: Int) -> PeerBlockRange { PeerBlockRange(file: file, first: first, count: min(count, self.count)) }

    /// This range without its first `count` blocks.
    public func dropFirst(_ count: Int) -> PeerBlockRange {
        let dropped = min(count, self.count)
        return PeerBlockRange(file: file, first: first + Int64(dropped), count: self.count - dropped)
    }

    /// The bytes of every block of the range.
    public var byteCount: Int { indices.reduce(0) { $0 + file.length(ofBlock: $1) } }

    public var description: String {
        count == 1 ? "block \(first) of \(file)" : "blocks \(first)..<\(first + Int64(count)) of \(file)"
    }
}

extension Int64 {
    fileprivate var clampedToInt: Int { Int(clamping: self) }
}

// MARK: Requests

/// What a peer asks, parsed from the request target:
///
///     GET /v1/block/<block size>/<first index>/<file size>/<mtime ns>/<path>[?count=N][&load=owner]
///     GET /v1/holdings/<block size>/<file size>/<mtime ns>/<path>
///
/// The path is one segment: every byte other than an unreserved URL character
/// (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, `/` included.
public enum PeerRequest: Equatable, Sendable {
    /// Up to `count` blocks from `first`. With `ownerLoad`, the asker names this instance the
    /// blocks' owner: blocks not in memory are loaded from this instance's source for it.
    case blocks(PeerBlockRange, ownerLoad: Bool)
    /// Which blocks of the file this instance holds in memory.
    case holdings(PeerFile)

    public static let blockPrefix = "/v1/block/"
    public static let holdingsPrefix = "/v1/holdings/"
    /// The most blocks one request may ask for.
    public static let maximumBlocksPerRequest = 64
    /// Longest request target accepted; a relative path is at most PATH_MAX (4096) bytes, ×3 when encoded.
    public static let maximumTargetLength = 16 << 10
    static let maximumPathBytes = 4096

    public var target: String {
        switch self {
        case .blocks(let range, let ownerLoad):
            let file = range.file
            var target =
                Self.blockPrefix + "\(file.blockSize)/\(range.first)/\(file.size)/\(file.modifiedNanoseconds)/" + Self.encoded(file.path)
            var query: [String] = []
            if range.count != 1 { query.append("count=\(range.count)") }
            if ownerLoad { query.append("load=owner") }
            if !query.isEmpty { target += "?" + query.joined(separator: "&") }
            return target
        case .holdings(let file):
            return Self.holdingsPrefix + "\(file.blockSize)/\(file.size)/\(file.modifiedNanoseconds)/" + Self.encoded(file.path)
        }
    }

    /// Parses a request target made by `target`, refusing anything that could name a file outside the source root.
    public init(target: some StringProtocol) throws(PeerRequestError) {
        let bytes = Array(target.utf8)
        guard bytes.count <= Self.maximumTargetLength else { throw .tooLong }
        let parts = bytes.split(separator: UInt8(ascii: "?"), maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts[0], query = parts.count > 1 ? parts[1] : []
        if path.starts(with: Self.blockPrefix.utf8) {
            let fields = path.dropFirst(Self.blockPrefix.utf8.count).split(
                separator: UInt8(ascii: "/"), maxSplits: 4, omittingEmptySubsequences: false)
            guard fields.count == 5 else { throw .malformed("expected block size, index, file size, mtime and path") }
            let file = try Self.file(blockSize: fields[0], size: fields[2], modified: fields[3], path: fields[4])
            guard let first = Self.decimal(fields[1]), first < max(1, file.blockCount) else {
                throw .malformed("block index beyond the end of the file")
            }
            var count = 1, ownerLoad = false
            for parameter in query.split(separator: UInt8(ascii: "&")) {
                let pair = parameter.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
                switch (String(decoding: pair[0], as: UTF8.self), pair.count > 1 ? String(decoding: pair[1], as: UTF8.self) : nil) {
                case ("count", let value?):
                    guard let number = Int(value), (1...Self.maximumBlocksPerRequest).contains(number) else {
                        throw .malformed("count must be 1 to \(Self.maximumBlocksPerRequest)")
                    }
                    count = number
                case ("load", "owner"?): ownerLoad = true
                default: throw .malformed("unknown parameter \(String(decoding: parameter, as: UTF8.self))")
                }
            }
            self = .blocks(file.blocks(first, count: count), ownerLoad: ownerLoad)
        } else if path.starts(with: Self.holdingsPrefix.utf8) {
            guard query.isEmpty else { throw .malformed("a holdings query takes no parameters") }
            let fields = path.dropFirst(Self.holdingsPrefix.utf8.count).split(
                separator: UInt8(ascii: "/"), maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count == 4 else { throw .malformed("expected block size, file size, mtime and path") }
            self = .holdings(try Self.file(blockSize: fields[0], size: fields[1], modified: fields[2], path: fields[3]))
        } else {
            throw .malformed("not a block or holdings request")
        }
    }

    private static func file(
        blockSize: ArraySlice<UInt8>, size: ArraySlice<UInt8>, modified: ArraySlice<UInt8>,
        path: ArraySlice<UInt8>
    ) throws(PeerRequestError) -> PeerFile {
        guard let blockSize = decimal(blockSize), blockSize > 0, blockSize <= 1 << 30,
            let size = decimal(size),
            let modified = modified.first == UInt8(ascii: "-") ? decimal(modified.dropFirst()).map(-) : decimal(modified)
        else { throw .malformed("expected decimal numbers (only the mtime may be negative)") }
        let decoded = try percentDecoded(path)
        try checkRelative(decoded)
        return PeerFile(path: decoded, size: size, modifiedNanoseconds: modified, blockSize: Int(blockSize))
    }

    /// A relative path that stays below the root: not empty, not absolute, no NUL,
    /// no empty, `.` or `..` component. (The server resolves it with RESOLVE_BENEATH as well.)
    static func checkRelative(_ path: [UInt8]) throws(PeerRequestError) {
        guard !path.isEmpty else { throw .unsafePath("empty path") }
        guard path.count <= maximumPathBytes else { throw .tooLong }
        guard path.first != UInt8(ascii: "/") else { throw .unsafePath("absolute path") }
        guard !path.contains(0) else { throw .unsafePath("NUL in path") }
        for component in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            switch component.count {
            case 0: throw .unsafePath("empty path component")
            case 1 where component.first == UInt8(ascii: "."): throw .unsafePath("'.' component")
            case 2 where component.allSatisfy({ $0 == UInt8(ascii: ".") }): throw .unsafePath("'..' component")
            default: continue
            }
        }
    }

    private static let hexDigits = Array("0123456789ABCDEF".utf8)

    private static func encoded(_ path: [UInt8]) -> String {
        var encoded = ""
        encoded.reserveCapacity(path.count * 3)
        for byte in path {
            if isUnreserved(byte) {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%"
                encoded.unicodeScalars.append(Unicode.Scalar(hexDigits[Int(byte >> 4)]))
                encoded.unicodeScalars.append(Unicode.Scalar(hexDigits[Int(byte & 0xF)]))
            }
        }
        return encoded
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// 1–19 ASCII digits that fit in an Int64.
    private static func decimal(_ digits: ArraySlice<UInt8>) -> Int64? {
        guard (1...19).contains(digits.count) else { return nil }
        var value: Int64 = 0
        for digit in digits {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
            let (shifted, overflow) = value.multipliedReportingOverflow(by: 10)
            let (sum, carry) = shifted.addingReportingOverflow(Int64(digit - UInt8(ascii: "0")))
            guard !overflow, !carry else { return nil }
            value = sum
        }
        return value
    }

    private static func percentDecoded(_ encoded: ArraySlice<UInt8>) throws(PeerRequestError) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(encoded.count)
        var iterator = encoded.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                    throw .malformed("bad percent escape")
                }
                bytes.append(high << 4 | low)
            } else if isUnreserved(byte) {
                bytes.append(byte)
            } else {
                throw .malformed("unescaped byte \(byte) in path")
            }
        }
        return bytes
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// Why a peer request was refused (a 4xx answer).
public enum PeerRequestError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case unsafePath(String)
    case tooLong

    public var description: String {
        switch self {
        case .malformed(let reason): "malformed peer request: \(reason)"
        case .unsafePath(let reason): "refused path: \(reason)"
        case .tooLong: "request target too long"
        }
    }
}

// MARK: Responses

/// The headers of a block response besides Content-Length: how many blocks the body holds
/// (from the requested first one), and each one's CRC-32C, in order.
public enum PeerResponseHeaders {
    public static let blockCount = "X-Cachefs-Blocks"
    public static let checksums = "X-Cachefs-CRC32C"
    /// The asking process's random ID; a server that finds its own answers 508.
    public static let instance = "X-Cachefs-Instance"

    /// `X-Cachefs-CRC32C` for these checksums: 8 hex digits each, comma-separated.
    public static func checksumList(_ checksums: [CRC32CChecksum]) -> String {
        checksums.map(\.hex).joined(separator: ",")
    }

    public static func parseChecksumList(_ text: some StringProtocol) -> [CRC32CChecksum]? {
        var checksums: [CRC32CChecksum] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let checksum = CRC32CChecksum(hex: item) else { return nil }
            checksums.append(checksum)
        }
        return checksums
    }
}
