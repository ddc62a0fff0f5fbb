/// Little-endian binary encoding for the records a daemon hands to its successor (the cache
/// ledger, the state journal, the node snapshot): fixed-width integers and length-prefixed
/// bytes, read back with every bound checked, so a torn or foreign record fails to decode
/// rather than decoding into something else.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func append<Integer: FixedWidthInteger>(_ value: Integer) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Bytes with a 32-bit length in front.
    public mutating func append(lengthPrefixed data: [UInt8]) {
        append(UInt32(data.count))
        bytes.append(contentsOf: data)
    }

    public mutating func append(_ identity: FileIdentity) {
        switch identity {
        case .inode(let device, let inode):
            append(UInt8(1))
            append(device)
            append(inode)
        case .path(let path):
            append(UInt8(2))
            append(lengthPrefixed: path)
        }
    }

    public mutating func append(_ version: FileVersion) {
        append(version.identity)
        appendContent(of: version)
    }

    /// A version's size and times without its identity, for a record that holds the identity already.
    public mutating func appendContent(of version: FileVersion) {
        append(version.size)
        append(version.modified.seconds)
        append(version.modified.nanoseconds)
        append(version.changed.seconds)
        append(version.changed.nanoseconds)
    }
}

/// Reads what `ByteWriter` wrote; every read past the end or of a malformed value throws.
public struct ByteReader {
    public struct Malformed: Error, CustomStringConvertible {
        public let description: String
    }

    private let bytes: UnsafeRawBufferPointer
    public private(set) var position = 0

    /// Valid while `bytes` is.
    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - position }

    public mutating func read<Integer: FixedWidthInteger>(_: Integer.Type = Integer.self) throws(Malformed) -> Integer {
        let size = MemoryLayout<Integer>.size
        guard remaining >= size else { throw Malformed(description: "record ends early") }
        defer { position += size }
        return Integer(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: Integer.self))
    }

    public mutating func read(count: Int) throws(Malformed) -> [UInt8] {
        guard count >= 0, remaining >= count else { throw Malformed(description: "record ends early") }
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    public mutating func readLengthPrefixed(limit: Int = 1 << 20) throws(Malformed) -> [UInt8] {
        let count = Int(try read(UInt32.self))
        guard count <= limit else { throw Malformed(description: "a length of \(count) bytes is out of range") }
        return try read(count: count)
    }

    public mutating func readIdentity() throws(Malformed) -> FileIdentity {
        switch try read(UInt8.self) {
        case 1: return .inode(device: try read(), inode: try read())
        case 2: return .path(try readLengthPrefixed(limit: 1 << 16))
        case let kind: throw Malformed(description: "unknown identity kind \(kind)")
        }
    }

    public mutating func readVersion() throws(Malformed) -> FileVersion {
        try readVersion(of: try readIdentity())
    }

    /// What `appendContent(of:)` wrote, as the version of `identity`.
    public mutating func readVersion(of identity: FileIdentity) throws(Malformed) -> FileVersion {
        let size: Int64 = try read()
        guard size >= 0 else { throw Malformed(description: "negative file size") }
        let modified = Timestamp(seconds: try read(), nanoseconds: try read())
        let changed = Timestamp(seconds: try read(), nanoseconds: try read())
        return FileVersion(identity: identity, size: size, modified: modified, changed: changed)
    }
}
