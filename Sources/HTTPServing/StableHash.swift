/// 64-bit FNV-1a: the same value in every process and on every machine, unlike `Hasher`,
/// which is seeded per process. Names the control socket after its mountpoint, and ranks
/// peers for a block (rendezvous hashing), where every instance must agree.
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325

    public init() {}

    /// Adds the bytes and a separator, so ("ab", "c") and ("a", "bc") differ.
    public mutating func add(_ bytes: some Sequence<UInt8>) {
        for byte in bytes { add(byte) }
        add(UInt8(0xFF))
    }

    public mutating func add(_ number: Int64) {
        var bits = UInt64(bitPattern: number).littleEndian
        for _ in 0..<8 {
            add(UInt8(truncatingIfNeeded: bits))
            bits >>= 8
        }
    }

    private mutating func add(_ byte: UInt8) {
        value ^= UInt64(byte)
        value &*= 0x0000_0100_0000_01B3
    }

    /// The value as 16 hexadecimal digits.
    public var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
