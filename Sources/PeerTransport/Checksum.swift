import CRC32C

/// CRC-32C of a transfer, sent by the server in `X-Cachefs-CRC32C` (8 hex digits)
/// and recomputed by the client as the body arrives.
///
/// Why CRC-32C: it catches truncation, reordering and corrupted bytes on the
/// wire or in a peer's memory (not tampering: peers are trusted through the
/// token), and the SSE4.2 instruction makes it cost far less than the copy it
/// accompanies. See Docs/PEERS.md for the measurement that chose it over SHA-256.
public struct CRC32CChecksum: Sendable, Equatable {
    public private(set) var value: UInt32 = 0

    public init() {}

    public init(of bytes: UnsafeRawBufferPointer) { update(bytes) }

    public init(value: UInt32) { self.value = value }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        value = cachefs_crc32c(value, base, bytes.count)
    }

    public var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }

    public init?(hex: some StringProtocol) {
        guard hex.utf8.count == 8, let value = UInt32(hex, radix: 16) else { return nil }
        self.value = value
    }
}
