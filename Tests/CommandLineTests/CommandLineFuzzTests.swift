import ArgumentParser
import PropertyBased
import Testing
@testable import cachefs

/// Fuzzing of everything the command line parses: any input is either accepted
/// with a sane value or refused with a message, never a crash or a wrong size.
@Suite struct CommandLineFuzzTests {
    static let unitNames = ["", "K", "M", "G", "T", "k", "m", "g", "t", "KB", "MiB", "gib", "B", "iB", "TiB", "X", "KK"]
    static let sizeCharacters = Gen.oneOf(Gen.character(in: "0"..."9"), Gen.always("."), Gen.always("-"), Gen.always("e"),
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
        await propertyCheck(count: 2000, input: Gen.int(in: 1...(1 << 20)), Gen.int(in: 0...4), Gen.oneOf(Gen.always(""), Gen.always("B"), Gen.always("iB"))) { number, unit, suffix in
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

    static let words = ["-o", "-ocapacity=1G", "capacity=64M,allow_other", "ro,nodev,_netdev", "x-systemd.automount",
                        "--capacity", "1G", "-f", "--block-size", "4M", "=", ",", "a=b=c", "block_size=", "--", "-", "",
                        "/src", "/mnt", "stats", "--json", "--threads", "0", "99999999999999999999", "--prefetch-depth",
                        "-1", "--source-timeout", "nan", "inf", "--metadata-timeout", "1e308", "--log-level", "verbose", "-o,,,"]

    /// Found by the fuzzer below: an option without a name crashed the translation.
    @Test(arguments: [["-o", "="], ["-o", "=5"], ["-o=,a"], ["/s", "/m", "-o", "capacity=1G,=x"]])
    func namelessMountOptionsAreRefused(arguments: [String]) {
        #expect(throws: (any Error).self) { try Cachefs.parseAsRoot(MountHelperArguments.translate(arguments)) }
    }

    @Test func anyArgumentListParsesOrIsRefused() async {
        await propertyCheck(count: 300, input: Gen.oneOf(Gen.element(of: Self.words).map { $0 ?? "" }, Gen.ascii.string(of: 0...8)).array(of: 0...8)) { arguments in
            let translated = MountHelperArguments.translate(arguments)
            if !arguments.contains(where: { $0.hasPrefix("-o") }) {
                #expect(translated == arguments, "only -o options are rewritten")
            } else {
                #expect(!translated.contains("-o") || arguments.last == "-o", "\(arguments) → \(translated)")
            }
            do {
                let command = try Cachefs.parseAsRoot(translated)
                if let mount = command as? MountCommand {
                    #expect(mount.capacity.bytes >= mount.blockSize.bytes)
                    #expect((1...1024).contains(mount.threads))
                    #expect(mount.sourceTimeout >= 0 && mount.metadataTimeout >= 0)
                }
            } catch {
                let message = Cachefs.message(for: error)
                #expect(!message.isEmpty)
            }
        }
    }
}
