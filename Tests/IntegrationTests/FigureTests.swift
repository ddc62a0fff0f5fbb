import ControlPlane
import Foundation
import Reporting
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One path per figure: each part of the daemon reports its own figures, and a figure declared in
/// the catalogue but reported by nobody would show here as missing.
@Suite("Every figure", .serialized)
struct FigureTests {
    @Test("Every figure of the catalogue has a value, under its name in --json and its metric in /metrics")
    func everyFigureIsReported() throws {
        // With --listen and --peers, so that the peer figures apply too (the peer is a port nobody listens on).
        let (unanswered, peerPort) = try loopbackSocket(listening: false)
        defer { close(unanswered) }
        let tree = try MountedTree(
            "head -c 3000000 /dev/urandom > model.bin", capacity: "64M",
            extra: [
                "--metrics", "127.0.0.1:0", "--listen", "127.0.0.1:\(try freeLoopbackPort())", "--peers", "127.0.0.1:\(peerPort)",
            ])
        defer { tree.stop() }
        let mount = tree.mount
        // A read, and a lookup that fails: every kind of figure has something to count.
        try shell("cat model.bin > /dev/null; cat absent 2>/dev/null || true", in: mount.mountpoint)

        let json = try run(cachefsBinary, ["stats", mount.mountpoint, "--json", "--control-socket", mount.controlSocket], timeout: 30)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], "\(json.output)")
        let report = try JSONDecoder().decode(StatsReport.self, from: Data(json.output.utf8))
        let address = try #require(report.metricsAddress)
        let scrape = try run("/usr/bin/curl", ["-sf", "http://\(address)/metrics"], timeout: 30)
        #expect(scrape.status == 0, "\(scrape.error)")
        let samples = prometheusSamples(scrape.output)
        for figure in Figure.all {
            #expect(report.has(figure), "\(figure.name) has no value")
            #expect(object[figure.name] != nil, "\(figure.name) is missing from --json")
            #expect(prometheusHas(figure, in: samples), "\(figure.prometheusName) is missing from /metrics")
        }
        #expect(report.figures[labelled: .failedOperations]?["lookup"] ?? 0 >= 1, "the failed lookup was counted")
        #expect(samples["cachefs_failed_operations_total{operation=\"lookup\"}"] ?? 0 >= 1)
    }
}
