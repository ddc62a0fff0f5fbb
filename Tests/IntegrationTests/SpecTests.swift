import ControlPlane
import Foundation
import Reporting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `cachefs mount --spec FILE`: the reference product's service JSON, as its users write it.
@Suite("Mounts from a PAI-EAS service spec", .serialized)
struct SpecTests {
    private func stats(_ mountpoint: String) throws -> StatsReport {
        let result = try run(cachefsBinary, ["stats", mountpoint, "--json"], timeout: 30)
        guard result.status == 0 else { throw TestFailure("cachefs stats \(mountpoint): \(result.error)") }
        return try JSONDecoder().decode(StatsReport.self, from: Data(result.output.utf8))
    }

    /// Unmounts and waits for the background daemon to go, so the scratch directory can be removed.
    private func unmount(_ mountpoints: [String]) {
        for mountpoint in mountpoints where isMounted(mountpoint) { _ = try? run("/bin/fusermount3", ["-u", mountpoint]) }
        _ = eventually(within: 10) { mountpoints.allSatisfy { !isMounted($0) } }
    }

    @Test(
        "The documented single-entry form (cache.path, cache.capacity, mount_path) mounts in the background and serves reads; so does the bare storage list"
    )
    func singleEntry() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("data-slow"), mountpoint = try scratch.make("data-fast")
        try shell("head -c 3000000 /dev/urandom > model.safetensors", in: source)
        for (name, json) in [
            ("service.json", #"{"storage": [{"cache": {"capacity": "20G", "path": "\#(source)"}, "mount_path": "\#(mountpoint)"}]}"#),
            ("storage.json", #"[{"mount_path": "\#(mountpoint)", "cache": {"path": "\#(source)", "capacity": "48M"}}]"#),
        ] {
            try json.write(toFile: scratch.path + "/" + name, atomically: true, encoding: .utf8)
            // 20G may be more than this machine has: --force, as on the command line.
            let mounted = try run(cachefsBinary, ["mount", "--spec", scratch.path + "/" + name, "--force"], timeout: 30)
            defer { unmount([mountpoint]) }
            #expect(mounted.status == 0 && mounted.error.isEmpty, "\(name): \(mounted.error)")
            #expect(isMounted(mountpoint), "\(name): returned before the mount answered, or did not mount")
            let report = try stats(mountpoint)
            #expect(report.settings.source == source && report.settings.mountpoint == mountpoint)
            #expect(report.settings.capacity == (name == "service.json" ? 20 << 30 : 48 << 20))
            #expect(try run("/usr/bin/cmp", [source + "/model.safetensors", mountpoint + "/model.safetensors"]).status == 0)
        }
    }

    /// A full service description: an OSS mount cachefs leaves alone, and caches of directories beneath it.
    private func service(oss: String, caches: [(path: String, mountPath: String, capacity: String)]) -> String {
        let entries = caches.map { #"{"cache": {"capacity": "\#($0.capacity)", "path": "\#($0.path)"}, "mount_path": "\#($0.mountPath)"}"# }
        return #"""
            {
              "cloud": {"computing": {"instance_type": "ml.gu7i.c16m60.1-gu30"}},
              "containers": [{"image": "eas-registry.example.com/pai-eas/stable-diffusion-webui:4.2", "port": 8000,
                              "script": "./webui.sh --listen --port 8000 --data-dir /code/data-fast"}],
              "metadata": {"cpu": 16, "gpu": 1, "instance": 1, "memory": 60000, "name": "sdwebui_test"},
              "options": {"enable_cache": true},
              "storage": [
                {"mount_path": "\#(oss)", "oss": {"path": "oss://examplebucket/data-oss", "readOnly": false}},
                \#(entries.joined(separator: ",\n    "))
              ]
            }
            """#
    }

    @Test(
        "A full service JSON: the oss entry skipped with one line, each cache beneath its mount_path mounted with the options given after --spec, in the background and under -f until SIGTERM"
    )
    func fullService() throws {
        let scratch = try ScratchDirectory()
        let oss = try scratch.make("data-oss") // stands in for the bucket the platform mounts
        try shell(
            "mkdir -p models/sd models/lora && head -c 5000000 /dev/urandom > models/sd/base.safetensors && head -c 700000 /dev/urandom > models/lora/a.safetensors",
            in: oss)
        let sd = try scratch.make("data-fast"), lora = try scratch.make("lora-fast")
        let spec = scratch.path + "/service.json"
        try service(oss: oss, caches: [(oss + "/models/sd", sd, "64M"), (oss + "/models/lora", lora, "32M")])
            .write(toFile: spec, atomically: true, encoding: .utf8)
        func serves() throws -> Bool {
            try run("/usr/bin/cmp", [oss + "/models/sd/base.safetensors", sd + "/base.safetensors"]).status == 0
                && run("/usr/bin/cmp", [oss + "/models/lora/a.safetensors", lora + "/a.safetensors"]).status == 0
        }

        let mounted = try run(cachefsBinary, ["mount", "--spec", spec, "--metadata-timeout", "3", "--block-size", "2M"], timeout: 60)
        #expect(mounted.status == 0, "\(mounted.error)")
        #expect(
            mounted.error
                == "cachefs: skipping storage entry 1 (mount_path \(oss)): no cache object (oss oss://examplebucket/data-oss); cachefs mounts only cache entries\n",
            "\(mounted.error)")
        #expect(try serves())
        for (mountpoint, capacity, source) in [(sd, 64 << 20, oss + "/models/sd"), (lora, 32 << 20, oss + "/models/lora")] {
            let settings = try stats(mountpoint).settings
            #expect(settings.capacity == capacity && settings.source == source, "\(settings)")
            #expect(settings.metadataTimeout == 3 && settings.blockSize == 2 << 20, "the options after --spec did not reach \(mountpoint)")
        }
        unmount([sd, lora])

        // In the foreground (systemd, a container) one process keeps them, tells systemd alone, and SIGTERM ends them all.
        let notify = try NotifySocket(path: scratch.path + "/notify.sock")
        let supervisor = ChildProcess()
        supervisor.executableURL = URL(fileURLWithPath: cachefsBinary)
        supervisor.arguments = ["mount", "--spec", spec, "-f"]
        supervisor.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": notify.path]) { $1 }
        supervisor.standardInput = FileHandle.nullDevice
        supervisor.standardError = FileHandle.nullDevice
        try supervisor.run()
        defer { if supervisor.isRunning { kill(supervisor.processIdentifier, SIGKILL) }; unmount([sd, lora]) }
        let ready = notify.receive()
        #expect(ready == "READY=1\nSTATUS=serving \(sd), \(lora)\nMAINPID=\(supervisor.processIdentifier)", "got \(ready ?? "nothing")")
        #expect(isMounted(sd) && isMounted(lora), "ready before both mounts answered")
        #expect(try serves())
        kill(supervisor.processIdentifier, SIGTERM)
        #expect(notify.receive() == "STOPPING=1")
        #expect(eventually(within: 15) { !supervisor.isRunning }, "still running 15 s after SIGTERM")
        supervisor.waitUntilExit()
        #expect(supervisor.terminationStatus == 0)
        #expect(!isMounted(sd) && !isMounted(lora), "a mount outlived the SIGTERM")
    }

    @Test(
        "A spec with no cache entry, a missing source, a bad capacity or an unknown field inside cache: one line, a non-zero exit, nothing mounted"
    )
    func refusedSpecs() throws {
        let scratch = try ScratchDirectory()
        let oss = try scratch.make("data-oss"), good = try scratch.make("good-fast"), other = try scratch.make("other-fast")
        try shell("mkdir -p models/sd models/lora && echo x > models/sd/model.bin", in: oss)
        let first = (path: oss + "/models/sd", mountPath: good, capacity: "64M") // fine: only the second entry is wrong
        let cases: [(String, String, String)] = [
            ("no cache entry", service(oss: oss, caches: []), "no storage entry has a cache object"),
            ("missing source", service(oss: oss, caches: [first, (oss + "/models/absent", other, "32M")]), "No such file or directory"),
            (
                "bad capacity", service(oss: oss, caches: [first, (oss + "/models/lora", other, "32X")]),
                #"cache.capacity "32X" is not a size"#
            ),
            (
                "zero capacity", service(oss: oss, caches: [first, (oss + "/models/lora", other, "0")]),
                #"cache.capacity "0" is not a size"#
            ),
            (
                "unknown field in cache",
                service(oss: oss, caches: [first, (oss + "/models/lora", other, "32M")])
                    .replacingOccurrences(of: #""capacity": "32M""#, with: #""capacity": "32M", "ttl": 600"#),
                #"unknown field "ttl" in cache"#
            ),
            ("not JSON", "storage:\n  - cache: {}", "not JSON"),
        ]
        for (name, json, reason) in cases {
            let spec = scratch.path + "/spec.json"
            try json.write(toFile: spec, atomically: true, encoding: .utf8)
            let result = try run(cachefsBinary, ["mount", "--spec", spec], timeout: 60)
            #expect(result.status != 0, "\(name): accepted")
            #expect(
                result.error.split(separator: "\n").count == 1 && result.error.hasPrefix("cachefs: ") && result.error.contains(reason),
                "\(name): \(result.error)")
            #expect(mountedPaths(under: scratch.path).isEmpty, "\(name): left \(mountedPaths(under: scratch.path)) mounted")
            unmount(mountedPaths(under: scratch.path))
        }
        let alongside = try run(cachefsBinary, ["mount", "--spec", scratch.path + "/spec.json", oss, good, "--capacity", "1G"])
        #expect(alongside.status != 0 && alongside.error.contains("--spec"), "\(alongside.error)")
    }
}
