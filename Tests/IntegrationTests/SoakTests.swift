import Foundation
import Testing

@Suite("Soak", .serialized)
struct SoakTests {
    /// The short form of Scripts/soak (the long form runs by hand: `Scripts/soak --duration 1800`).
    @Test(
        "32 readers for 90 s over a tree twice the capacity, with source files replaced: no wrong byte, bounded memory, threads bounded by the readers, source descriptors released"
    )
    func shortSoak() throws {
        let script = packageRoot.appendingPathComponent("Scripts/soak").path
        let result = try run(
            "python3", [script, "--duration", "90", "--readers", "32", "--binary", cachefsBinary],
            timeout: 300)
        #expect(result.status == 0, "\(result.output)\(result.error)")
        #expect(result.output.contains("mismatches 0, read errors 0"), "\(result.output)")
    }
}
