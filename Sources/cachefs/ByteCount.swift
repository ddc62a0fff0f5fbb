import ArgumentParser

/// A size given on the command line: `20G`, `20GiB`, `512M`, `1.5G`, `4096`.
/// K, M, G and T are powers of 1024, with or without a trailing `iB` or `B`.
struct ByteCount: Equatable, ExpressibleByArgument, CustomStringConvertible {
    let bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        guard let bytes = Self.parse(argument) else { return nil }
        self.bytes = bytes
    }

    /// For options: explains a bad size instead of only rejecting it.
    init(parsing text: String) throws {
        guard let bytes = Self.parse(text) else {
            throw ValidationError(
                "'\(text)' is not a size; use a positive number with an optional K, M, G or T suffix, e.g. 20G, 512M, 1.5G")
        }
        self.bytes = bytes
    }

    static func parse(_ text: String) -> Int? {
        var number = Substring(text.uppercased())
        let binarySuffix = number.hasSuffix("IB")
        if binarySuffix { number = number.dropLast(2) } else if number.hasSuffix("B") { number = number.dropLast() }
        var shift = 0
        if let unit = number.last, let position = "KMGT".firstIndex(of: unit) {
            shift = 10 * ("KMGT".distance(from: "KMGT".startIndex, to: position) + 1)
            number = number.dropLast()
        } else if binarySuffix {
            return nil // "5iB"
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            let value = Double(number), value.isFinite, value > 0
        else { return nil }
        let bytes = (value * Double(1 << shift)).rounded(.down)
        guard bytes >= 1, bytes < Double(Int.max / 2) else { return nil }
        return Int(bytes)
    }

    var description: String { Self.format(bytes) }

    /// A human size with binary units, e.g. `1.5 GiB`.
    static func format(_ bytes: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[unit])" : "\(rounded) \(units[unit])"
    }
}
