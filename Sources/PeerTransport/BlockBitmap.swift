/// Which blocks of a file an instance holds: bit `i` (least significant bit first within
/// each byte) is block `i`. The body of a holdings answer, as is.
public struct BlockBitmap: Equatable, Sendable {
    public private(set) var bytes: [UInt8]
    public let blockCount: Int64

    public init(blockCount: Int64) {
        self.blockCount = blockCount
        bytes = [UInt8](repeating: 0, count: Int((blockCount + 7) / 8))
    }

    /// A bitmap received from a peer: exactly as many bytes as `blockCount` needs.
    public init?(bytes: [UInt8], blockCount: Int64) {
        guard bytes.count == Int((blockCount + 7) / 8) else { return nil }
        self.bytes = bytes
        self.blockCount = blockCount
    }

    public subscript(index: Int64) -> Bool {
        get { index >= 0 && index < blockCount && bytes[Int(index / 8)] & (1 << UInt8(index % 8)) != 0 }
        set {
            precondition(index >= 0 && index < blockCount)
            if newValue { bytes[Int(index / 8)] |= 1 << UInt8(index % 8) } else { bytes[Int(index / 8)] &= ~(1 << UInt8(index % 8)) }
        }
    }

    /// How many blocks from `first` (at most `limit`) are set, without a gap.
    public func run(from first: Int64, limit: Int) -> Int {
        var count = 0
        while count < limit, self[first + Int64(count)] { count += 1 }
        return count
    }

    public var isEmpty: Bool { bytes.allSatisfy { $0 == 0 } }

    public var setCount: Int { bytes.reduce(0) { $0 + $1.nonzeroBitCount } }
}
