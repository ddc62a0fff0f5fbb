import ControlPlane
import Foundation
import Reporting
import Testing

/// Parses Prometheus text into "name{labels}" -> value.
func prometheusSamples(_ text: String) -> [String: Double] {
    var values: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        values[String(line[..<space])] = value
    }
    return values
}

/// Whether a scrape holds the figure's metric: its one sample, or a sample per label.
func prometheusHas(_ figure: Figure, in samples: [String: Double]) -> Bool {
    figure.label == nil
        ? samples[figure.prometheusName] != nil : samples.keys.contains { $0.hasPrefix(figure.prometheusName + "{\(figure.label!)=") }
}

@Suite("Metrics and stats output", .serialized)
struct MetricsTests {
    @Test("/metrics serves Prometheus counters, gauges and per-tier latency histograms that move as files are read")
    func prometheusMetricsMove() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 6000000 /dev/urandom > model.bin", in: source)
        let mount = try CachefsMount(
            source: source, mountpoint: try scratch.make("mnt"), capacity: "64M",
            // Passthrough off: the warm read must reach the daemon to move its tier histogram.
            extra: ["--metrics", "127.0.0.1:0", "--passthrough", "off"])
        defer { mount.stop() }
        let address = try #require(try mount.stats().metricsAddress)
        func scrape() throws -> [String: Double] {
            let result = try run("/usr/bin/curl", ["-sf", "http://\(address)/metrics"], timeout: 30)
            guard result.status == 0 else { throw TestFailure("curl failed: \(result.status) \(result.error)") }
            return prometheusSamples(result.output)
        }
        let before = try scrape()
        #expect(before["cachefs_capacity_bytes"] == Double(64 << 20))
        #expect(before["cachefs_misses_total"] ?? 0 == 0)

        try shell("cat \(mount.mountpoint)/model.bin > /dev/null") // cold: from the source
        try dropKernelCaches()
        try shell("cat \(mount.mountpoint)/model.bin > /dev/null") // warm: from memory
        let after = try scrape()

        #expect(after["cachefs_bytes_from_source_total"] == 6_000_000)
        #expect(after["cachefs_misses_total"]! > 0)
        #expect(after["cachefs_hits_total"]! > 0)
        #expect(after["cachefs_cached_bytes"] == 6_000_000)
        #expect(after["cachefs_pinned_bytes"] == 0)
        #expect(after["cachefs_read_requests_total"]! > 0)
        #expect(after["cachefs_memory_read_bytes_total"]! + after["cachefs_source_read_bytes_total"]! == 12_000_000)
        // One name per figure: every figure of `cachefs stats` is a metric of the same value, under its derived name.
        let report = try mount.stats()
        let final = try scrape()
        for figure in Figure.all where report.has(figure) && figure.kind == .gauge || figure == .bytesFromSource {
            #expect(final[figure.prometheusName] == Double(report[figure]), "\(figure.name) vs \(figure.prometheusName)")
        }
        for figure in Figure.all where report.has(figure) {
            #expect(prometheusHas(figure, in: final), "\(figure.prometheusName) missing from /metrics")
        }
        for tier in ["memory", "source"] {
            let count = after["cachefs_read_duration_seconds_count{tier=\"\(tier)\"}"] ?? 0
            let infinite = after["cachefs_read_duration_seconds_bucket{tier=\"\(tier)\",le=\"+Inf\"}"] ?? 0
            #expect(count > 0 && infinite == count, "tier \(tier): count \(count), +Inf bucket \(infinite)")
            #expect(infinite > before["cachefs_read_duration_seconds_bucket{tier=\"\(tier)\",le=\"+Inf\"}"] ?? 0)
            #expect((after["cachefs_read_duration_seconds_sum{tier=\"\(tier)\"}"] ?? 0) > 0)
        }
        // Every memory read of a 1 MiB block is under ten seconds: the finite buckets fill too.
        #expect(
            after["cachefs_read_duration_seconds_bucket{tier=\"memory\",le=\"10.0\"}"]
                == after["cachefs_read_duration_seconds_count{tier=\"memory\"}"])
    }

    @Test("A bad --metrics address is refused with one line")
    func badMetricsAddress() throws {
        let scratch = try ScratchDirectory()
        let result = try run(
            cachefsBinary, [try scratch.make("src"), try scratch.make("mnt"), "--capacity", "64M", "--metrics", "nowhere"])
        #expect(
            result.status != 0 && result.error.split(separator: "\n").count == 1 && result.error.contains("HOST:PORT"), "\(result.error)")
        #expect(mountedPaths(under: scratch.path).isEmpty)
    }

    @Test("cachefs stats shows capacity, cached, pinned and tier rows; --json carries the same numbers")
    func statsTableAndJSON() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        try shell("head -c 3145728 /dev/urandom > pinned.bin && head -c 1048576 /dev/urandom > read.bin", in: source)
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"), capacity: "32M")
        defer { mount.stop() }
        let pinned = try run(cachefsBinary, ["warm", mount.mountpoint + "/pinned.bin", "--pin", "--control-socket", mount.controlSocket])
        #expect(pinned.status == 0, "\(pinned.error)")
        try shell("cat \(mount.mountpoint)/read.bin > /dev/null")

        let table = try run(cachefsBinary, ["stats", mount.mountpoint, "--control-socket", mount.controlSocket])
        #expect(table.status == 0, "\(table.error)")
        let rows = statsRows(table.output)
        #expect(rows["capacity"] == "32 MiB", "\(table.output)")
        #expect(rows["sourceTimeout"] == "30.0" && rows["logFile"] == mount.logFile && rows["metrics"] == "none", "\(table.output)")
        #expect(rows["cachedBytes"] == "4 MiB" && rows["cachedBlocks"] == "4", "\(table.output)")
        #expect(rows["pinnedBytes"] == "3 MiB" && rows["pinnedFiles"] == "1" && rows["pinnedCachedBytes"] == "3 MiB", "\(table.output)")
        #expect(rows["bytesFromSource"] == "4 MiB" && rows["evictions"] == "0" && rows["sourceErrors"] == "0", "\(table.output)")
        #expect(rows["hit"] != nil, "\(table.output)")

        let json = try run(cachefsBinary, ["stats", mount.mountpoint, "--json", "--control-socket", mount.controlSocket])
        let report = try JSONDecoder().decode(StatsReport.self, from: Data(json.output.utf8))
        #expect(report[.pinnedBytes] == 3 << 20 && report[.pinnedFiles] == 1 && report[.pinnedCachedBytes] == 3 << 20)
        #expect(report.settings.capacity == 32 << 20 && report[.cachedBytes] == 4 << 20 && report[.bytesFromSource] == 4 << 20)
        #expect(report[.memoryReadBytes] + report[.peerReadBytes] + report[.sourceReadBytes] == report[.bytesRead])
        // One name per figure: every figure the daemon reports is a row of the table under its JSON name.
        for figure in Figure.all where report.has(figure) {
            #expect(rows[figure.name] != nil, "\(figure.name) is in the JSON but not in the table")
        }
        #expect(json.output.contains("\"pinnedBytes\" : 3145728"))
    }
}
