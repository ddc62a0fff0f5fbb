import ArgumentParser
import ControlPlane
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct WarmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warm",
        abstract: "Load files or whole directories under a cachefs mount into its cache ahead of readers.",
        discussion: """
            With --pin the files also stay resident: they are never evicted, and their sizes count against \
            the capacity until `cachefs unpin`. A pin that does not fit is refused before anything is loaded.
            Examples:
              cachefs warm /data-fast/models/Stable-diffusion/base.safetensors --pin
              cachefs warm /data-fast/models/Lora
            """
    )

    @Argument(help: "Files or directories inside a cachefs mount.")
    var paths: [String]

    @Flag(help: "Keep the files resident until `cachefs unpin`.")
    var pin = false

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    @Option(help: "Ranges loaded at once; each is one source read stream.")
    var jobs = 4

    @Option(parsing: .unconditional, help: "Bytes per warm request (the unit of progress).", transform: ByteCount.init(parsing:))
    var chunk = ByteCount(bytes: 64 << 20)

    func validate() throws {
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs must be between 1 and 64") }
    }

    func run() throws {
        for group in try MountLocator.group(paths) {
            let client = ControlClient(socketPath: MountLocator.controlSocket(for: group.mountpoint, explicit: controlSocket))
            let request = WarmPlanRequest(paths: group.relativePaths, pin: pin)
            let plan = try runBlocking { try await client.planWarm(request) }
            try warm(plan, mountpoint: group.mountpoint, client: client)
        }
    }

    private func warm(_ plan: WarmPlan, mountpoint: String, client: ControlClient) throws {
        let progress = WarmProgress(total: plan.totalBytes, files: plan.files.count, terminal: isatty(STDOUT_FILENO) == 1)
        var ranges: [WarmRangeRequest] = []
        for file in plan.files {
            var offset: Int64 = 0
            repeat {
                ranges.append(WarmRangeRequest(path: file.path, offset: offset, length: Int64(chunk.bytes)))
                offset += Int64(chunk.bytes)
            } while offset < file.size
        }
        let jobs = self.jobs
        try runBlocking { [ranges] in
            var rangesLeft = Dictionary(ranges.map { ($0.path, 1) }, uniquingKeysWith: +)
            try await withThrowingTaskGroup(of: (String, WarmRangeResult).self) { group in
                var pending = ranges.makeIterator()
                for _ in 0..<jobs {
                    guard let range = pending.next() else { break }
                    group.addTask { (range.path, try await client.warm(range)) }
                }
                // Results arrive in any order; a file is done when the last of its ranges is.
                while let (path, result) = try await group.next() {
                    rangesLeft[path, default: 1] -= 1
                    progress.add(result.bytes, finishing: rangesLeft[path] == 0 ? path : nil)
                    if let range = pending.next() {
                        group.addTask { (range.path, try await client.warm(range)) }
                    }
                }
            }
        }
        progress.finish(mountpoint: mountpoint, pinned: plan.pinned)
    }
}

struct UnpinCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpin",
        abstract: "Let pinned files under a cachefs mount be evicted again.",
        discussion: "Example: cachefs unpin /data-fast/models/Stable-diffusion"
    )

    @Argument(help: "Files or directories inside a cachefs mount.")
    var paths: [String]

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    func run() throws {
        for group in try MountLocator.group(paths) {
            let client = ControlClient(socketPath: MountLocator.controlSocket(for: group.mountpoint, explicit: controlSocket))
            let request = UnpinRequest(paths: group.relativePaths)
            let result = try runBlocking { try await client.unpin(request) }
            print("unpinned \(result.files) file\(result.files == 1 ? "" : "s") (\(ByteCount.format(result.bytes))) at \(group.mountpoint)")
        }
    }
}

/// Reports warm-up progress: a redrawn bar on a terminal, otherwise one line per finished file.
///
/// Threads: `add` is called from the task group's consumer, one call at a time.
final class WarmProgress: Sendable {
    private struct State {
        var done: Int64 = 0
        var filesDone = 0
        var lastDraw: ContinuousClock.Instant?
    }

    private let total: Int64
    private let files: Int
    private let terminal: Bool
    private let started = ContinuousClock.now
    /// The progress so far, and when it was last drawn. Lock order: a leaf.
    private let state = Mutex(State())

    init(total: Int64, files: Int, terminal: Bool) {
        self.total = total
        self.files = files
        self.terminal = terminal
    }

    func add(_ bytes: Int64, finishing path: String?) {
        let line: String? = state.withLock { state in
            state.done += bytes
            if path != nil { state.filesDone += 1 }
            let now = ContinuousClock.now
            if terminal {
                if let last = state.lastDraw, now - last < .milliseconds(100), state.done < total { return nil }
                state.lastDraw = now
                return "\r" + bar(done: state.done, elapsed: now - started) + "\u{1B}[K"
            }
            guard let path else { return nil }
            return "warmed \(path) (\(state.filesDone)/\(files) files, \(summary(done: state.done, elapsed: now - started)))\n"
        }
        if let line { write(line) }
    }

    func finish(mountpoint: String, pinned: Bool) {
        let done = state.withLock { $0.done }
        let elapsed = ContinuousClock.now - started
        let seconds = elapsed / .seconds(1)
        let rate = seconds > 0 ? ByteCount.format(Int(Double(done) / seconds)) + "/s" : "-"
        let verb = pinned ? "warmed and pinned" : "warmed"
        write(
            (terminal ? "\r\u{1B}[K" : "")
                + "\(verb) \(files) file\(files == 1 ? "" : "s"), \(ByteCount.format(Int(done))) in \(String(format: "%.1f", seconds)) s (\(rate)) at \(mountpoint)\n"
        )
    }

    private func bar(done: Int64, elapsed: Duration) -> String {
        let width = 30
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
        let filled = Int(fraction * Double(width))
        return "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
            + String(format: "%3.0f%% ", fraction * 100) + summary(done: done, elapsed: elapsed)
    }

    /// "1.2 GiB / 4 GiB, 512 MiB/s, ETA 6 s"
    private func summary(done: Int64, elapsed: Duration) -> String {
        let seconds = elapsed / .seconds(1)
        let rate = seconds > 0 ? Double(done) / seconds : 0
        var text = "\(ByteCount.format(Int(done))) / \(ByteCount.format(Int(total)))"
        guard rate > 0 else { return text }
        text += ", \(ByteCount.format(Int(rate)))/s"
        if done < total { text += ", ETA \(Int((Double(total - done) / rate).rounded(.up))) s" }
        return text
    }

    private func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
