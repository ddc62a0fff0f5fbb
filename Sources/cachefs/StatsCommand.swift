import ArgumentParser
import ControlPlane
import Foundation
import Reporting
import Threading

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a running daemon's cache counters.",
        discussion: "Example: cachefs stats /data-fast --json"
    )

    @Argument(help: "The mountpoint of a running cachefs daemon.")
    var mountpoint: String

    @Flag(help: "Print JSON, for scripts.")
    var json = false

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    func run() throws {
        let socket = MountLocator.controlSocket(for: Self.canonicalMountpoint(mountpoint), explicit: controlSocket)
        let report = try runBlocking { try await ControlClient(socketPath: socket).stats() }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(Self.table(report))
        }
    }

    /// The daemon keys its socket by its canonical mountpoint. Resolving the parent only keeps this
    /// working when the mount itself does not answer (nothing here asks it).
    static func canonicalMountpoint(_ path: String) -> String {
        MountSettings.canonicalParent(MountSettings.absolute(path))
    }

    static func table(_ report: StatsReport) -> String {
        let settings = report.settings
        var rows: [(String, String)] = [
            ("mountpoint", settings.mountpoint),
            ("source", settings.source),
            ("pid", "\(report.pid), up \(Int(report.uptimeSeconds)) s"),
            ("hit ratio", String(format: "%.1f%%", report.hitRatio * 100)),
        ]
        if let address = report.metricsAddress { rows.append(("metrics", "http://\(address)/metrics")) }
        if let readAhead = report.readAhead {
            let window = readAhead.windowBytes.map(ByteCount.format) ?? "unknown"
            rows.append(
                (
                    "read-ahead",
                    window + (readAhead.error.map { " (raising it to \(ByteCount.format(settings.readAhead)) failed: \($0))" } ?? "")
                ))
        }
        if let passthrough = report.passthrough {
            rows.append(("passthroughState", passthrough.available ? "on" : "off" + (passthrough.reason.map { " (\($0))" } ?? "")))
        }
        if let live = report.livePeers { rows.append(("live peers", live.isEmpty ? "none" : live.joined(separator: ", "))) }
        var sections: [(title: String?, rows: [(String, String)])] = [(nil, rows), ("settings", settingRows(settings))]
        for group in Figure.Group.allCases {
            let figures = Figure.all.filter { $0.group == group && report.has($0) }
            if !figures.isEmpty { sections.append((group.rawValue, figures.map { ($0.name, shown($0, in: report)) })) }
        }
        let width = sections.flatMap(\.rows).map(\.0.count).max()! + 2
        return sections.map { section in
            (section.title.map { [$0] } ?? [])
                + section.rows.map { "  " + $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + $0.1 }
        }.map { $0.joined(separator: "\n") }.joined(separator: "\n\n")
    }

    /// Each setting under its JSON name, as the daemon received it.
    static func settingRows(_ settings: MountSettings) -> [(String, String)] {
        let sizes: Set<String> = ["capacity", "blockSize", "readAhead"]
        return Mirror(reflecting: settings).children.compactMap { child in
            guard let name = child.label else { return nil }
            let shown: String
            switch child.value {
            case let bytes as Int where sizes.contains(name): shown = ByteCount.format(bytes)
            case let list as [Any]: shown = list.isEmpty ? "none" : list.map { "\($0)" }.joined(separator: ", ")
            case Optional<Any>.none: shown = "none"
            case Optional<Any>.some(let value): shown = "\(value)"
            default: shown = "\(child.value)"
            }
            return (name, shown)
        }
    }

    /// A figure's value as the table shows it; a labelled one as "label value" pairs of its non-zero values.
    private static func shown(_ figure: Figure, in report: StatsReport) -> String {
        func format(_ value: UInt64) -> String { figure.unit == .bytes ? ByteCount.format(Int(clamping: value)) : "\(value)" }
        guard let table = report.figures[labelled: figure] else { return format(report[figure]) }
        let counted = table.filter { $0.value > 0 }.sorted { $0.key < $1.key }
        return counted.isEmpty ? "none" : counted.map { "\($0.key) \(format($0.value))" }.joined(separator: ", ")
    }

}

/// Runs async work from a synchronous command. The daemon's commands stay
/// synchronous so that its signal mask is set before any thread starts.
func runBlocking<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    /// The work's outcome, which the caller waits for. Lock order: a leaf.
    let outcome = Condition<Result<T, any Error>?>(nil)
    Task {
        let result: Result<T, any Error>
        do { result = .success(try await work()) } catch { result = .failure(error) }
        outcome.update { $0 = result }
    }
    return try outcome.wait { $0 }!.get()
}
