import ControlPlane
import Foundation
import Reporting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The root of this package's checkout.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The cachefs binary under test: $CACHEFS_BIN, or the debug build of this package.
let cachefsBinary: String = {
    if let path = ProcessInfo.processInfo.environment["CACHEFS_BIN"] { return path }
    return packageRoot.appendingPathComponent(".build/debug/cachefs").path
}()

/// The slow, fault-injecting source built beside cachefs.
let testSourceBinary: String = (cachefsBinary as NSString).deletingLastPathComponent + "/cachefs-testsource"

/// A FUSE daemon the test runs in the foreground: started, waited for until its mountpoint is
/// mounted, and stopped (its mount removed) once, by `stop` or at deinit.
final class ForegroundMount {
    let mountpoint: String
    private let process = ChildProcess()
    private let stopped = Atomic<Bool>(false)

    init(_ executable: String, _ arguments: [String], mountpoint: String) throws {
        self.mountpoint = mountpoint
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while !isMounted(mountpoint) {
            guard process.isRunning, Date() < deadline else {
                stop()
                throw TestFailure("\((executable as NSString).lastPathComponent) did not mount \(mountpoint)")
            }
            usleep(20_000)
        }
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Stops the daemon once; later calls do nothing, so they cannot unmount a successor at the same mountpoint.
    func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        stopDaemon(process, mountpoint: mountpoint)
    }

    deinit { stop() }
}

/// A cachefs-testsource mount: ROOT served slowly, with faults on demand. `signal`: SIGUSR1 makes
/// every read fail with EIO (a NAS gone away), SIGHUP every read hang, SIGUSR2 brings service back.
typealias TestSourceMount = ForegroundMount

extension ForegroundMount {
    convenience init(root: String, mountpoint: String, arguments: [String]) throws {
        try self.init(testSourceBinary, [root, mountpoint] + arguments, mountpoint: mountpoint)
    }
}

/// SIGTERM, then SIGKILL and a lazy unmount if a FUSE daemon does not leave by itself.
/// Returns the daemon's exit status.
@discardableResult
func stopDaemon(_ process: ChildProcess, mountpoint: String) -> Int32 {
    if process.isRunning {
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
    process.waitUntilExit()
    if isMounted(mountpoint) { _ = try? run("/bin/fusermount3", ["-u", "-z", mountpoint]) }
    return process.terminationStatus
}

/// Stops a daemon that runs in the background (not a child of the test, so known by its pid only):
/// unmounts its mount, waits up to 10 s for it to leave, SIGKILLs it if it did not, then lazily
/// unmounts whatever is still mounted. With no pid (or not a positive one) it only unmounts.
func stopBackgroundDaemon(pid: Int32?, mountpoint: String) {
    if isMounted(mountpoint) { _ = try? run("/bin/fusermount3", ["-u", mountpoint]) }
    if let pid, pid > 0, !eventually(within: 10, { kill(pid, 0) != 0 }) { kill(pid, SIGKILL) }
    if isMounted(mountpoint) { _ = try? run("/bin/fusermount3", ["-u", "-z", mountpoint]) }
}

struct CommandResult {
    var status: Int32
    var output: String
    var error: String
}

/// Runs a program to completion, capturing its output; fails the test if it outlives `timeout`.
@discardableResult
func run(_ executable: String, _ arguments: [String], in directory: String? = nil, timeout: Double = 120) throws -> CommandResult {
    let process = ChildProcess()
    process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
    process.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("cachefs-run-\(UUID().uuidString)")
    let outURL = scratch.appendingPathExtension("out"), errURL = scratch.appendingPathExtension("err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: outURL); try? FileManager.default.removeItem(at: errURL) }
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(20_000) }
    if process.isRunning {
        process.terminate()
        process.waitUntilExit()
        throw TestFailure("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
    }
    return CommandResult(
        status: process.terminationStatus,
        // Lossy: names in the output may hold any bytes (checked byte-exactly by hashing instead).
        output: String(decoding: (try? Data(contentsOf: outURL)) ?? Data(), as: UTF8.self),
        error: String(decoding: (try? Data(contentsOf: errURL)) ?? Data(), as: UTF8.self)
    )
}

/// Runs a shell snippet; throws with its stderr unless it succeeds.
@discardableResult
func shell(_ script: String, in directory: String? = nil, timeout: Double = 300) throws -> String {
    let result = try run("/bin/bash", ["-euo", "pipefail", "-c", script], in: directory, timeout: timeout)
    guard result.status == 0 else { throw TestFailure("shell failed (\(result.status)): \(script)\n\(result.error)") }
    return result.output
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A scratch directory removed at the end of the test.
final class ScratchDirectory {
    let path: String

    init(_ name: String = "cachefs-test") throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func make(_ relative: String) throws -> String {
        let full = path + "/" + relative
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        return full
    }

    deinit {
        // Never delete through a live mount: unmount anything left below first.
        for mount in mountedPaths(under: path) { _ = try? run("/bin/fusermount3", ["-u", "-z", mount]) }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A whole file, read until EOF: /proc files report size 0, and a single read stops at the first page.
func readToEnd(_ path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path), let data = try? handle.readToEnd() else { return nil }
    return String(decoding: data, as: UTF8.self)
}

/// Mount points below `prefix`, from the kernel's table.
func mountedPaths(under prefix: String) -> [String] {
    guard let text = readToEnd("/proc/self/mounts") else { return [] }
    return text.split(separator: "\n").compactMap { line in
        let fields = line.split(separator: " ")
        guard fields.count > 2 else { return nil }
        let mountpoint = fields[1].replacingOccurrences(of: "\\040", with: " ")
        return mountpoint.hasPrefix(prefix) ? mountpoint : nil
    }
}

func isMounted(_ path: String) -> Bool { mountedPaths(under: path).contains(path) }

/// A cachefs daemon run in the foreground by the test, stopped (and its mount removed) by `stop` or at deinit.
final class CachefsMount {
    let source: String
    let mountpoint: String
    let controlSocket: String
    let logFile: String
    private let process: ChildProcess

    var pid: Int32 { process.processIdentifier }

    /// Whether the daemon process is still alive (not yet exited by itself or stopped).
    var isRunning: Bool { process.isRunning }

    /// - Parameter launcher: a command that runs cachefs (e.g. `prlimit --nofile=256:256`), exec'ing it in place.
    init(
        source: String, mountpoint: String, capacity: String = "256M", extra: [String] = [],
        environment: [String: String] = [:], launcher: [String] = []
    ) throws {
        self.source = source
        self.mountpoint = mountpoint
        let scratch = (mountpoint as NSString).deletingLastPathComponent
        let tag = UUID().uuidString.prefix(8)
        controlSocket = "\(scratch)/control-\(tag).sock"
        logFile = "\(scratch)/cachefs-\(tag).log"
        process = ChildProcess()
        let command =
            launcher + [
                cachefsBinary, source, mountpoint, "--capacity", capacity, "--foreground",
                "--control-socket", controlSocket, "--log-file", logFile,
            ] + extra
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardInput = FileHandle.nullDevice
        _ = FileManager.default.createFile(atPath: logFile, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logFile)) // errors before logging starts
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        // "ready" is logged once the mount answers and passthrough and the read-ahead window are settled.
        while !(isMounted(mountpoint) && FileManager.default.fileExists(atPath: controlSocket) && log.contains("[cachefs] ready")) {
            guard process.isRunning, Date() < deadline else {
                stop()
                throw TestFailure("cachefs did not come up at \(mountpoint): \(log)")
            }
            usleep(20_000)
        }
    }

    var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    func stats() throws -> StatsReport { try Self.stats(mountpoint: mountpoint, controlSocket: controlSocket) }

    /// The stats of the instance at `mountpoint`, asked on its control socket (usable from any thread).
    static func stats(mountpoint: String, controlSocket: String) throws -> StatsReport {
        let result = try run(cachefsBinary, ["stats", mountpoint, "--json", "--control-socket", controlSocket], timeout: 30)
        guard result.status == 0 else { throw TestFailure("cachefs stats failed: \(result.error)") }
        return try JSONDecoder().decode(StatsReport.self, from: Data(result.output.utf8))
    }

    /// Peak resident memory of the daemon, from /proc (VmHWM).
    func peakResidentBytes() throws -> Int {
        guard let status = readToEnd("/proc/\(pid)/status") else { throw TestFailure("cannot read /proc/\(pid)/status") }
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { throw TestFailure("no VmHWM in /proc/\(pid)/status") }
        return kib * 1024
    }

    @discardableResult
    func stop() -> Int32 { stopDaemon(process, mountpoint: mountpoint) }

    deinit { stop() }
}

/// The rows of `cachefs stats` (without --json): "  name  value", names as in the JSON.
func statsRows(_ table: String) -> [String: String] {
    Dictionary(
        table.split(separator: "\n").filter { $0.hasPrefix("  ") }.map { line in
            let words = line.split(separator: " ", maxSplits: 1)
            return (String(words[0]), words.count > 1 ? words[1].trimmingCharacters(in: .whitespaces) : "")
        }, uniquingKeysWith: { first, _ in first })
}

/// Drops the kernel's page cache, so the next read through a FUSE mount reaches the daemon.
func dropKernelCaches() throws {
    sync()
    try "3\n".write(toFile: "/proc/sys/vm/drop_caches", atomically: false, encoding: .utf8)
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(within seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    repeat {
        if try condition() { return true }
        usleep(50_000)
    } while Date() < deadline
    return try condition()
}

/// A scratch source tree made by a shell script, mirrored by a fresh cachefs mount.
/// Call `stop()` (in a `defer`) so the tree outlives every use of the mount.
final class MountedTree {
    let scratch: ScratchDirectory
    let source: String
    let mount: CachefsMount

    init(_ script: String, capacity: String = "256M", extra: [String] = [], launcher: [String] = []) throws {
        scratch = try ScratchDirectory()
        source = try scratch.make("src")
        try shell(script, in: source)
        mount = try CachefsMount(
            source: source, mountpoint: try scratch.make("mnt"), capacity: capacity,
            extra: extra, launcher: launcher)
    }

    func stop() { mount.stop() }
}
