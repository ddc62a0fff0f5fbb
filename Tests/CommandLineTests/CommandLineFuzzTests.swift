import ArgumentParser
import Foundation
import PropertyBased
import Synchronization
import TestSupport
import Testing

@testable import cachefs

/// Fuzzing of everything the command line parses: any input is either accepted
/// with a sane value or refused with a message, never a crash or a wrong size.
@Suite struct CommandLineFuzzTests {
    static let unitNames = ["", "K", "M", "G", "T", "k", "m", "g", "t", "KB", "MiB", "gib", "B", "iB", "TiB", "X", "KK"]
    static let sizeCharacters = Gen.oneOf(
        Gen.character(in: "0"..."9"), Gen.always("."), Gen.always("-"), Gen.always("e"),
        Gen.always("K"), Gen.always("i"), Gen.always("B"), Gen.always(" "), Gen.always("G"))

    @Test func anyStringIsASizeOrRefused() async {
        await propertyCheck(count: 2000, input: Gen.oneOf(Gen.ascii.string(of: 0...12), Self.sizeCharacters.string(of: 0...12))) { text in
            if let bytes = ByteCount.parse(text) {
                #expect(bytes >= 1, "\(text) parsed as \(bytes)")
                #expect(text.first?.isNumber == true || text.first == ".", "\(text) parsed as \(bytes)")
            }
            #expect((try? ByteCount(parsing: text))?.bytes == ByteCount.parse(text))
        }
    }

    @Test func wholeSizesParseExactly() async {
        await propertyCheck(
            count: 2000, input: Gen.int(in: 1...(1 << 20)), Gen.int(in: 0...4), Gen.oneOf(Gen.always(""), Gen.always("B"), Gen.always("iB"))
        ) { number, unit, suffix in
            let letter = unit == 0 ? "" : String(Array("KMGT")[unit - 1])
            let text = "\(number)\(letter)\(unit == 0 && suffix == "iB" ? "" : suffix)"
            #expect(ByteCount.parse(text) == number << (10 * unit), "\(text)")
            #expect(ByteCount.parse(text.lowercased()) == number << (10 * unit), "\(text)")
        }
    }

    @Test func hugeSizesAreRefusedNotOverflowed() async {
        // 19 nines are beyond Int.max / 2 bytes whatever the unit.
        await propertyCheck(count: 500, input: Gen.int(in: 19...400), Gen.element(of: ["", "K", "M", "G", "T"])) { digits, unit in
            let text = String(repeating: "9", count: digits) + (unit ?? "")
            #expect(ByteCount.parse(text) == nil, "\(text)")
        }
    }

    @Test func formattedSizesReadBackClose() async {
        await propertyCheck(count: 2000, input: Gen.int(in: 1...(Int(1) << 50))) { bytes in
            let text = ByteCount.format(bytes).replacingOccurrences(of: " ", with: "")
            let parsed = ByteCount.parse(text) ?? 0
            #expect(abs(Double(parsed) - Double(bytes)) <= Double(bytes) * 0.05 + 1, "\(bytes) → \(text) → \(parsed)")
        }
    }

    static let words = [
        "-o", "-ocapacity=1G", "capacity=64M,allow_other", "ro,nodev,_netdev", "x-systemd.automount",
        "--capacity", "1G", "-f", "--block-size", "4M", "=", ",", "a=b=c", "block_size=", "--", "-", "",
        "/src", "/mnt", "stats", "--json", "--threads", "0", "99999999999999999999", "--prefetch-depth",
        "-1", "--source-timeout", "nan", "inf", "--metadata-timeout", "1e308", "--log-level", "verbose", "-o,,,",
    ]

    /// Found by the fuzzer below: an option without a name crashed the translation.
    @Test(arguments: [["-o", "="], ["-o", "=5"], ["-o=,a"], ["/s", "/m", "-o", "capacity=1G,=x"]])
    func namelessMountOptionsAreRefused(arguments: [String]) {
        #expect(throws: (any Error).self) { try Cachefs.parseAsRoot(MountHelperArguments.translate(arguments)) }
    }

    /// Guards the range checks of `MountCommand.validate` and the `-o` translation: mount
    /// commands built from every option, each with a random value (at its bounds a third of
    /// the time, just outside them 5% of the time), in the three spellings (`--name value`,
    /// `--name=value`, `-o name=value`), so most cases parse and their values are checked.
    /// A command parses exactly when every value is inside its range, and then with those values.
    @Test func randomMountCommandsParseWithTheirValues() async {
        let parsed = Mutex(0)
        await propertyCheck(count: 300, input: Gen.uint64(in: 0...UInt64.max)) { seed in
            var random = SplitMix64(seed: seed)
            let command = MountCase.random(&random)
            let translated = MountHelperArguments.translate(command.arguments)
            do {
                let parsedCommand = try Cachefs.parseAsRoot(translated)
                guard let mount = parsedCommand as? MountCommand else {
                    Issue.record("\(command.arguments) parsed as \(type(of: parsedCommand))")
                    return
                }
                parsed.withLock { $0 += 1 }
                #expect(command.valid, "\(command.arguments) → \(translated) was accepted though a value is out of range")
                Self.expectInRange(mount, command.arguments)
                for (name, matches) in command.checks where !matches(mount) {
                    Issue.record("\(name) was not parsed as given in \(command.arguments) → \(translated)")
                }
            } catch {
                #expect(!command.valid, "\(command.arguments) → \(translated) was refused: \(Cachefs.message(for: error))")
                #expect(!Cachefs.message(for: error).isEmpty)
            }
        }
        let count = parsed.withLock { $0 }
        #expect(count >= 120, "only \(count) of 300 random mount commands parsed, so few range checks ran")
    }

    /// What a parsed mount command may hold, whatever the input.
    static func expectInRange(_ mount: MountCommand, _ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        let context = Comment(rawValue: "\(arguments)")
        #expect((mount.capacity?.bytes ?? 0) >= mount.blockSize.bytes, context, sourceLocation: sourceLocation)
        let block = mount.blockSize.bytes
        #expect(block & (block - 1) == 0 && (64 << 10)...(64 << 20) ~= block, context, sourceLocation: sourceLocation)
        #expect((1...1024).contains(mount.threads), context, sourceLocation: sourceLocation)
        #expect((0...4096).contains(mount.prefetchDepth), context, sourceLocation: sourceLocation)
        #expect((1...1024).contains(mount.prefetchChunk), context, sourceLocation: sourceLocation)
        #expect((1...256).contains(mount.prefetchThreads), context, sourceLocation: sourceLocation)
        #expect(mount.metadataTimeout >= 0 && mount.metadataTimeout.isFinite, context, sourceLocation: sourceLocation)
        #expect(mount.sourceTimeout >= 0 && mount.sourceTimeout <= 86_400, context, sourceLocation: sourceLocation)
        #expect(mount.shutdownGrace >= 0 && mount.shutdownGrace <= 600, context, sourceLocation: sourceLocation)
        #expect(mount.readAhead.bytes >= 1, context, sourceLocation: sourceLocation)
    }

    @Test func anyArgumentListParsesOrIsRefused() async {
        await propertyCheck(
            count: 300, input: Gen.oneOf(Gen.element(of: Self.words).map { $0 ?? "" }, Gen.ascii.string(of: 0...8)).array(of: 0...8)
        ) { arguments in
            let translated = MountHelperArguments.translate(arguments)
            if !arguments.contains(where: { $0.hasPrefix("-o") }) {
                #expect(translated == arguments, "only -o options are rewritten")
            } else {
                #expect(!translated.contains("-o") || arguments.last == "-o", "\(arguments) → \(translated)")
            }
            do {
                let command = try Cachefs.parseAsRoot(translated)
                if let mount = command as? MountCommand { Self.expectInRange(mount, arguments) }
            } catch {
                let message = Cachefs.message(for: error)
                #expect(!message.isEmpty)
            }
        }
    }
}

/// A random mount command line, whether every value in it is inside its range, and how
/// to recognise each value in the parsed command.
struct MountCase {
    var arguments: [String]
    var valid: Bool
    var checks: [(String, (MountCommand) -> Bool)]

    /// One option's value as text, whether it is in range, and the check of the parsed value.
    private struct Value {
        var text: String
        var valid: Bool
        var check: (MountCommand) -> Bool
    }

    /// An integer option: at a bound a third of the time, just outside 5% of the time.
    private static func integer(_ range: ClosedRange<Int>, _ random: inout SplitMix64, _ field: @escaping (MountCommand) -> Int) -> Value {
        let roll = Double.random(in: 0..<1, using: &random)
        let number: Int
        if roll < 0.05 {
            number = [range.lowerBound - 1, range.upperBound + 1, range.upperBound + Int.random(in: 2...100_000, using: &random)]
                .randomElement(using: &random)!
        } else if roll < 0.38 {
            number = Bool.random(using: &random) ? range.lowerBound : range.upperBound
        } else {
            number = Int.random(in: range, using: &random)
        }
        return Value(text: "\(number)", valid: range.contains(number), check: { field($0) == number })
    }

    /// Seconds: whole or with decimals, at a bound a third of the time; out of range or not a number 5% of the time.
    private static func seconds(upTo limit: Double?, _ random: inout SplitMix64, _ field: @escaping (MountCommand) -> Double) -> Value {
        let roll = Double.random(in: 0..<1, using: &random)
        if roll < 0.05 {
            let text = ["-1", "-0.5", "nan", "inf", "soon"].randomElement(using: &random)! // beyond the limit below
            return Value(text: text, valid: false, check: { _ in false })
        }
        if roll < 0.08, let limit {
            return Value(text: "\(limit + 1)", valid: false, check: { _ in false })
        }
        let value: Double =
            roll < 0.38
            ? (Bool.random(using: &random) ? 0 : (limit ?? 1e6))
            : Double(Int.random(in: 0...Int((limit ?? 1e6) * 1000), using: &random)) / 1000
        let text = value == value.rounded() && Bool.random(using: &random) ? "\(Int(value))" : "\(value)"
        return Value(text: text, valid: true, check: { field($0) == value })
    }

    /// A size in one of its spellings (bytes, K, M, G, KiB, lower case).
    private static func size(_ bytes: Int, _ random: inout SplitMix64) -> String {
        var spellings = ["\(bytes)"]
        for (shift, units) in [(10, ["K", "KiB", "k"]), (20, ["M", "MiB", "m"]), (30, ["G", "GiB", "g"])] where bytes % (1 << shift) == 0 {
            spellings += units.map { "\(bytes >> shift)\($0)" }
        }
        return spellings.randomElement(using: &random)!
    }

    static func random(_ random: inout SplitMix64) -> MountCase {
        var options: [(name: String, value: Value?)] = []
        func maybe(_ chance: Double = 0.6) -> Bool { Double.random(in: 0..<1, using: &random) < chance }

        // Block size first: the capacity must hold one block.
        var blockBytes = 1 << 20
        if maybe() {
            if maybe(0.05) {
                let text = ["3M", "32K", "128M", "96K", "0", "1.5M"].randomElement(using: &random)!
                options.append(("block-size", Value(text: text, valid: false, check: { _ in false })))
            } else {
                let bytes = 1 << Int.random(in: 16...26, using: &random)
                blockBytes = bytes
                options.append(("block-size", Value(text: size(bytes, &random), valid: true, check: { $0.blockSize.bytes == bytes })))
            }
        }
        if maybe(0.03) {
            options.append(
                ("capacity", Value(text: ["0", "-5G", "lots", "1.5X"].randomElement(using: &random)!, valid: false, check: { _ in false })))
        } else {
            let capacity =
                Bool.random(using: &random) ? Int.random(in: 1...64, using: &random) << 30 : Int.random(in: 1...4096, using: &random) << 16
            let text = size(capacity, &random)
            options.append(("capacity", Value(text: text, valid: capacity >= blockBytes, check: { $0.capacity?.bytes == capacity })))
        }
        if maybe() { options.append(("threads", integer(1...1024, &random, \.threads))) }
        if maybe() { options.append(("prefetch-depth", integer(0...4096, &random, \.prefetchDepth))) }
        if maybe() { options.append(("prefetch-chunk", integer(1...1024, &random, \.prefetchChunk))) }
        if maybe() { options.append(("prefetch-threads", integer(1...256, &random, \.prefetchThreads))) }
        if maybe() { options.append(("metadata-timeout", seconds(upTo: nil, &random, \.metadataTimeout))) }
        if maybe() { options.append(("source-timeout", seconds(upTo: 86_400, &random, \.sourceTimeout))) }
        if maybe() { options.append(("shutdown-grace", seconds(upTo: 600, &random, \.shutdownGrace))) }
        if maybe() {
            if maybe(0.05) {
                options.append(
                    ("read-ahead", Value(text: ["0", "x", "-1M"].randomElement(using: &random)!, valid: false, check: { _ in false })))
            } else {
                let bytes = Int.random(in: 4...65_536, using: &random) << 10
                options.append(("read-ahead", Value(text: size(bytes, &random), valid: true, check: { $0.readAhead.bytes == bytes })))
            }
        }
        if maybe() {
            let (text, isOn): (String, Bool?) = [
                ("on", true), ("off", false), ("yes", true), ("no", false), ("1", true), ("0", false),
                ("true", true), ("false", false), ("maybe", nil),
            ].randomElement(using: &random)!
            options.append(("passthrough", Value(text: text, valid: isOn != nil, check: { $0.passthrough.isOn == isOn })))
        }
        if maybe() {
            let (text, isOn): (String, Bool?) = [("on", true), ("off", false), ("no", false), ("1", true), ("nope", nil)].randomElement(
                using: &random)!
            options.append(("direct-io", Value(text: text, valid: isOn != nil, check: { $0.directIO.isOn == isOn })))
        }
        if maybe() {
            let level = ["trace", "debug", "info", "notice", "warning", "error", "critical", "verbose"].randomElement(using: &random)!
            options.append(("log-level", Value(text: level, valid: level != "verbose", check: { $0.logLevel.rawValue == level })))
        }
        for (flag, field) in [("foreground", \MountCommand.foreground), ("allow-other", \.allowOther), ("force", \.force)] where maybe(0.3)
        {
            options.append((flag, Value(text: "", valid: true, check: { $0[keyPath: field] })))
        }
        if maybe(0.3) {
            options.append((["ro", "nodev", "_netdev", "x-systemd.automount", "noatime"].randomElement(using: &random)!, nil))
        }
        options.shuffle(using: &random)

        // Spell each option one of three ways; -o options go into one or two -o groups.
        var arguments = maybe(0.3) ? ["mount", "/src", "/mnt"] : ["/src", "/mnt"]
        var groups: [[String]] = [[], []]
        for (name, value) in options {
            let helperName = name.replacingOccurrences(of: "-", with: "_")
            let form = value == nil ? 2 : Int.random(in: 0...3, using: &random)
            let group = Int.random(in: 0...1, using: &random)
            switch (form, value?.text ?? "") {
            case (0...1, ""): arguments.append("--" + name) // a flag
            case (0, let text): arguments += ["--" + name, text]
            case (1, let text): arguments.append("--\(name)=\(text)")
            case (_, ""): groups[group].append(value == nil ? name : helperName) // a flag, or a generic mount option
            case (_, let text): groups[group].append("\(helperName)=\(text)")
            }
        }
        for group in groups where !group.isEmpty {
            if maybe(0.5) {
                arguments += ["-o", group.joined(separator: ",")]
            } else {
                arguments.append("-o" + group.joined(separator: ","))
            }
        }
        let values = options.compactMap { option in option.value.map { (option.name, $0) } }
        return MountCase(
            arguments: arguments, valid: values.allSatisfy(\.1.valid),
            checks: values.map { ($0.0, $0.1.check) })
    }
}
