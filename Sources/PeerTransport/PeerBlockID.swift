/// One block of one version of a file, named the same way on every instance.
///
/// Instances share a source, not device or inode numbers, so a file is named by
/// its path below the source root, and its version by size and mtime: a peer's
/// block of another version has a different ID and is never accepted.
public struct PeerBlockID: Hashable, Sendable, CustomStringConvertible {
    /// Path relative to the source root, as raw bytes (names need not be UTF-8).
    public var path: [UInt8]
    public var fileSize: Int64
    /// Modification time in nanoseconds since the epoch.
    public var modifiedNanoseconds: Int64
    public var blockSize: Int
    public var index: Int64

    public init(path: [UInt8], fileSize: Int64, modifiedNanoseconds: Int64, blockSize: Int, index: Int64) {
        self.path = path
        self.fileSize = fileSize
        self.modifiedNanoseconds = modifiedNanoseconds
        self.blockSize = blockSize
        self.index = index
    }

    /// Bytes the block holds: `blockSize`, or less for the file's last block; 0 past the end.
    public var expectedLength: Int {
        let start = index * Int64(blockSize)
        guard start < fileSize else { return 0 }
        return Int(min(Int64(blockSize), fileSize - start))
    }

    public var description: String {
        "block \(index) of \(String(decoding: path, as: UTF8.self)) (size \(fileSize), mtime \(modifiedNanoseconds) ns, block size \(blockSize))"
    }
}

// MARK: The request path

/// `GET /v1/block/<block size>/<index>/<file size>/<mtime ns>/<path>`, where the
/// path is one segment: every byte other than an unreserved URL character
/// (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, `/` included.
extension PeerBlockID {
    public static let pathPrefix = "/v1/block/"
    /// Longest request path accepted; a relative path is at most PATH_MAX (4096) bytes, ×3 when encoded.
    public static let maximumRequestLength = 16 << 10
    static let maximumPathBytes = 4096

    public var requestPath: String {
        var encoded = Self.pathPrefix
        encoded += "\(blockSize)/\(index)/\(fileSize)/\(modifiedNanoseconds)/"
        encoded.reserveCapacity(encoded.utf8.count + path.count * 3)
        for byte in path {
            if Self.isUnreserved(byte) {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%"
                encoded.unicodeScalars.append(Unicode.Scalar(Self.hexDigits[Int(byte >> 4)]))
                encoded.unicodeScalars.append(Unicode.Scalar(Self.hexDigits[Int(byte & 0xF)]))
            }
        }
        return encoded
    }

    /// Parses a request path (without query) made by `requestPath`, refusing
    /// anything that could name a file outside the source root.
    public init(requestPath: some StringProtocol) throws(PeerRequestError) {
        let utf8 = Array(requestPath.utf8)
        guard utf8.count <= Self.maximumRequestLength else { throw .tooLong }
        let prefix = Array(Self.pathPrefix.utf8)
        guard utf8.starts(with: prefix) else { throw .malformed("not a block request") }
        let fields = utf8[prefix.count...].split(separator: UInt8(ascii: "/"), maxSplits: 4, omittingEmptySubsequences: false)
        guard fields.count == 5 else { throw .malformed("expected block size, index, file size, mtime and path") }
        guard let blockSize = Self.decimal(fields[0]), blockSize > 0, blockSize <= 1 << 30,
              let index = Self.decimal(fields[1]),
              let fileSize = Self.decimal(fields[2]),
              let modified = fields[3].first == UInt8(ascii: "-") ? Self.decimal(fields[3].dropFirst()).map(-) : Self.decimal(fields[3])
        else { throw .malformed("expected decimal numbers (only the mtime may be negative)") }
        guard index <= fileSize / blockSize else { throw .malformed("block index beyond the end of the file") }
        let path = try Self.percentDecoded(fields[4])
        try Self.checkRelative(path)
        self.init(path: path, fileSize: fileSize, modifiedNanoseconds: modified, blockSize: Int(blockSize), index: index)
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

/// Why a block request was refused (a 4xx answer).
public enum PeerRequestError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case unsafePath(String)
    case tooLong

    public var description: String {
        switch self {
        case .malformed(let reason): "malformed block request: \(reason)"
        case .unsafePath(let reason): "refused path: \(reason)"
        case .tooLong: "request path too long"
        }
    }
}
