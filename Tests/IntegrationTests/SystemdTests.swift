import ControlPlane
import Foundation
import Reporting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What Scripts/test prepares for the tests that boot a container: a debootstrapped Debian 12
/// (`CACHEFS_CONTAINER_BASE`, Scripts/lib/container.sh) and `DESTDIR=… Scripts/install`'s
/// files (`CACHEFS_INSTALL_STAGE`), or the reason it could not (`CACHEFS_CONTAINER_SKIP`).
enum ContainerPrerequisites {
    static let environment = ProcessInfo.processInfo.environment
    static let library = packageRoot.appendingPathComponent("Scripts/lib/container.sh").path

    /// Why these tests cannot run here, or nil.
    static let missing: String? = {
        if let reason = environment["CACHEFS_CONTAINER_SKIP"] { return reason }
        guard let base = environment["CACHEFS_CONTAINER_BASE"], let stage = environment["CACHEFS_INSTALL_STAGE"] else {
            return "CACHEFS_CONTAINER_BASE and CACHEFS_INSTALL_STAGE are not set; Scripts/test prepares both"
        }
        guard FileManager.default.fileExists(atPath: base + "/usr/lib/systemd/systemd") else { return "no container root at \(base)" }
        guard FileManager.default.isExecutableFile(atPath: stage + "/usr/local/bin/cachefs") else { return "no staged install at \(stage)" }
        return nil
    }()

    static var skipComment: Comment { Comment(rawValue: missing ?? "") }
}

/// A copy of the base root booted with systemd in systemd-nspawn, with Scripts/install's
/// files in it; powered off (its mounts go with it) and deleted at deinit.
final class BootedContainer {
    let scratch: ScratchDirectory
    let root: String
    private let console: String
    private(set) var nspawnPid: Int32 = 0
    private(set) var initPid: Int32 = 0

    /// - Parameter prepare: writes files into the root before the first boot.
    init(prepare: (String) throws -> Void = { _ in }) throws {
        let environment = ContainerPrerequisites.environment
        scratch = try ScratchDirectory("cachefs-test-container")
        root = scratch.path + "/root"
        console = scratch.path + "/console.log"
        try shell(
            "cp -a --reflink=auto \"$0\" \"$1\" && cp -a \"$2/.\" \"$1/\"",
            arguments: [environment["CACHEFS_CONTAINER_BASE"]!, root, environment["CACHEFS_INSTALL_STAGE"]!])
        try Self.padMountTable(root: root)
        try prepare(root)
        try boot()
    }

    deinit { stop() }

    /// A unit that mounts 60 small tmpfs with long names early at every boot, before local and
    /// remote file systems: the mount table is then well past one page (4 KiB) before any
    /// cachefs mount, which a one-read parser of /proc/self/mountinfo does not see.
    private static func padMountTable(root: String) throws {
        let unit = """
            [Unit]
            Description=Mount table longer than a page (cachefs tests)
            DefaultDependencies=no
            Wants=remote-fs-pre.target
            Before=local-fs.target remote-fs-pre.target

            [Service]
            Type=oneshot
            RemainAfterExit=yes
            ExecStart=/bin/sh -c 'for i in $$(seq 60); do d=/run/cachefs-test-padding/a-mount-with-a-long-name-to-fill-the-table-$$i; mkdir -p $$d && mount -t tmpfs -o size=4k padding-$$i $$d; done'

            [Install]
            WantedBy=local-fs.target

            """
        let units = root + "/etc/systemd/system"
        try unit.write(toFile: units + "/cachefs-test-padding.service", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: units + "/local-fs.target.wants", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: units + "/local-fs.target.wants/cachefs-test-padding.service",
            withDestinationPath: "../cachefs-test-padding.service")
    }

    private func boot() throws {
        let pids = try shell(
            "source \"$0\"; container_boot \"$1\" \"$2\"", arguments: [ContainerPrerequisites.library, root, console], timeout: 180
        )
        .split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard pids.count == 2 else { throw TestFailure("container_boot printed no PIDs") }
        (nspawnPid, initPid) = (pids[0], pids[1])
        // For Scripts/test's cleanup, should this process die before deinit.
        try "\(nspawnPid)\n".write(toFile: scratch.path + "/nspawn.pid", atomically: true, encoding: .utf8)
    }

    /// Runs a bash script inside the container, as root with a clean environment.
    @discardableResult
    func exec(_ script: String, timeout: Double = 120) throws -> CommandResult {
        try run(
            "/bin/bash",
            [
                "-c", "source \"$0\"; container_exec \"$@\"", ContainerPrerequisites.library,
                "\(initPid)", "bash", "-euo", "pipefail", "-c", script,
            ], timeout: timeout)
    }

    /// Runs a bash script inside the container; throws with its standard error unless it succeeds.
    @discardableResult
    func check(_ script: String, timeout: Double = 120) throws -> String {
        let result = try exec(script, timeout: timeout)
        guard result.status == 0 else { throw TestFailure("in the container (\(result.status)): \(script)\n\(result.error)") }
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `cachefs stats MOUNTPOINT --json` inside the container, decoded; throws unless it succeeds.
    /// The binary is the one Scripts/install and the image's COPY put at /usr/local/bin/cachefs.
    func stats(_ mountpoint: String) throws -> StatsReport {
        try JSONDecoder().decode(StatsReport.self, from: Data(try check("/usr/local/bin/cachefs stats \(mountpoint) --json").utf8))
    }

    /// `systemctl reboot` inside, then boots the same root again (systemd-nspawn exits on a reboot).
    func reboot() throws {
        _ = try exec("systemctl reboot")
        guard eventually(within: 60, { !isAlive(nspawnPid) }) else { throw TestFailure("the container did not go down for the reboot") }
        try boot()
    }

    func stop() {
        guard nspawnPid > 0 else { return }
        _ = try? shell("source \"$0\"; container_stop \"$1\"", arguments: [ContainerPrerequisites.library, "\(nspawnPid)"], timeout: 60)
        nspawnPid = 0
    }

    /// A unit's property, from `systemctl show`.
    func property(_ unit: String, _ name: String) throws -> String {
        try check("systemctl show -P \(name) \(unit)")
    }

    /// The fuse.cachefs entries at `mountpoint` in the container's mount table, with the byte offset of each line.
    func cachefsMounts(at mountpoint: String) throws -> [Int] {
        try check("grep -b ' \(mountpoint) .* - fuse.cachefs ' /proc/self/mountinfo || true")
            .split(separator: "\n").compactMap { Int($0.prefix { $0 != ":" }) }
    }

    /// The last lines of a unit's journal, for failure messages.
    func journal(_ unit: String) -> String {
        (try? exec("journalctl -u \(unit) --no-pager -n 30 -o short-monotonic").output) ?? ""
    }
}

/// Whether a process exists and is not a zombie (a container's systemd-nspawn is not our child).
private func isAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let state = stat.split(separator: ")").last?.split(separator: " ").first
    else { return false }
    return state != "Z"
}

/// `shell` with positional arguments ($0, $1…), so that paths need no quoting.
@discardableResult
private func shell(_ script: String, arguments: [String], timeout: Double = 300) throws -> String {
    let result = try run("/bin/bash", ["-euo", "pipefail", "-c", script] + arguments, timeout: timeout)
    guard result.status == 0 else { throw TestFailure("shell failed (\(result.status)): \(script)\n\(result.error)") }
    return result.output
}

/// The source every test mirrors, written into the root before the first boot.
private let modelSize = 48 << 20
private func writeModels(root: String) throws {
    try shell(
        "mkdir -p \"$0/srv/models\" \"$0/mnt/models\" \"$0/mnt/fstab\" \"$0/etc/cachefs\" && head -c \(modelSize) /dev/urandom > \"$0/srv/models/model.bin\"",
        arguments: [root])
    try "SOURCE=/srv/models\nMOUNTPOINT=/mnt/models\nCAPACITY=256M\n"
        .write(toFile: root + "/etc/cachefs/models.conf", atomically: true, encoding: .utf8)
}

@Suite(
    "Under a booted systemd (Debian 12 in systemd-nspawn)", .serialized,
    .enabled(if: ContainerPrerequisites.missing == nil, ContainerPrerequisites.skipComment))
struct SystemdTests {
    @Test(
        "cachefs@models: active on READY=1, found by warm and stats, a second mount refused, back within 10 s of a SIGKILL, no mount after stop"
    )
    func unitLifecycle() throws {
        let container = try BootedContainer(prepare: writeModels)
        let unit = "cachefs@models.service"
        #expect(Int(try container.check("wc -c < /proc/self/mountinfo")) ?? 0 > 8192, "the mount table was not padded")

        let started = try container.exec("systemctl enable --now \(unit)")
        try #require(started.status == 0, "\(started.error)\n\(container.journal(unit))")
        #expect(try container.property(unit, "ActiveState") == "active")
        // STATUS= travels in the READY=1 datagram: systemd has it only if it took the notification.
        #expect(try container.property(unit, "StatusText") == "serving /srv/models at /mnt/models")
        let firstPid = Int32(try container.property(unit, "MainPID")) ?? 0
        try #require(firstPid > 0, "no main PID") // never `kill -9 0`
        let mounts = try container.cachefsMounts(at: "/mnt/models")
        #expect(mounts.count == 1)
        #expect(mounts.allSatisfy { $0 > 4096 }, "the cachefs entry is within the first page of the mount table: \(mounts)")

        let warm = try container.exec("cachefs warm /mnt/models")
        #expect(warm.status == 0, "cachefs warm: \(warm.error)")
        let statsResult = try container.exec("cachefs stats /mnt/models --json")
        #expect(statsResult.status == 0, "cachefs stats: \(statsResult.error)")
        if statsResult.status == 0 {
            let stats = try JSONDecoder().decode(StatsReport.self, from: Data(statsResult.output.utf8))
            #expect(stats.pid == firstPid, "stats reached pid \(stats.pid), the unit's is \(firstPid)")
            #expect(stats[.cachedBytes] >= modelSize, "warm left \(stats[.cachedBytes]) bytes cached")
        }
        #expect(try container.exec("cmp /srv/models/model.bin /mnt/models/model.bin").status == 0)

        // A second mount on the live mountpoint would take it over (a hand-over); one with a block size
        // that needs a new mount is refused in one line, and the unit's daemon serves on.
        let second = try container.exec("cachefs /srv/models /mnt/models --capacity 64M --block-size 2M")
        #expect(second.status != 0, "a second mount with another block size was accepted")
        #expect(second.error.split(separator: "\n").count == 1 && second.error.contains("--block-size"), "not one line: \(second.error)")
        #expect(try container.cachefsMounts(at: "/mnt/models").count == 1)
        #expect(try container.property(unit, "MainPID") == "\(firstPid)")

        try container.check("kill -9 \(firstPid)")
        let killed = Date()
        let back = try eventually(within: 10) {
            try container.property(unit, "ActiveState") == "active"
                && !["0", "\(firstPid)"].contains(try container.property(unit, "MainPID"))
                && container.cachefsMounts(at: "/mnt/models").count == 1
                && container.exec("stat -f /mnt/models").status == 0
        }
        #expect(back, "not serving again within 10 s of the SIGKILL:\n\(container.journal(unit))")
        print("cachefs@models serving again \(String(format: "%.1f", Date().timeIntervalSince(killed))) s after SIGKILL")
        #expect(try container.exec("cmp /srv/models/model.bin /mnt/models/model.bin").status == 0)

        // A stop right after a crash, before the restart: nothing may be left at the mountpoint, whether the
        // mount keeper survived the crash (it unmounts once systemd empties the store) or not (all killed:
        // ExecStopPost detaches the mount).
        try container.check("pid=$(systemctl show -P MainPID \(unit)) && [ \"$pid\" -gt 0 ] && kill -9 \"$pid\" && systemctl stop \(unit)")
        #expect(
            try eventually(within: 5) { try container.cachefsMounts(at: "/mnt/models").isEmpty },
            "a mount outlived a stop after SIGKILL of the daemon")
        try container.check("systemctl start \(unit) && systemctl kill --signal=SIGKILL \(unit) && systemctl stop \(unit)")
        #expect(
            try eventually(within: 5) { try container.cachefsMounts(at: "/mnt/models").isEmpty },
            "a mount outlived a stop after SIGKILL of the whole unit")

        try container.check("systemctl start \(unit)")
        let stopped = try container.exec("systemctl stop \(unit)")
        #expect(stopped.status == 0, "\(stopped.error)")
        #expect(try container.property(unit, "ActiveState") == "inactive")
        #expect(try container.cachefsMounts(at: "/mnt/models").isEmpty, "a mount outlived systemctl stop")
        #expect(try container.exec("stat -f /mnt/models").status == 0, "the mountpoint is not usable after stop")
        // No procps in the container: read the process names from /proc. The keeper exits once the store is emptied.
        var survivors = ""
        let gone = try eventually(within: 5) {
            let scan = try container.exec("cat /proc/[0-9]*/comm 2>/dev/null | grep -x -e cachefs -e fusermount3 -e cachefs-keeper")
            survivors = scan.output
            return scan.status != 0
        }
        #expect(gone, "processes outlived systemctl stop: \(survivors)")
    }

    @Test(
        "SIGKILL of the daemon while a loop reads a cached file, 5 times: the mount never leaves the mount table, no read fails or differs, and each restarted daemon serves the file from the memory it inherited (nothing from the source)"
    )
    func crashKeepsMountAndCache() throws {
        let container = try BootedContainer(prepare: writeModels)
        let unit = "cachefs@models.service"
        let started = try container.exec("systemctl enable --now \(unit) && cachefs warm /mnt/models")
        try #require(started.status == 0, "\(started.error)\n\(container.journal(unit))")
        // The reader: opens and compares the whole file in a loop; the watcher: the mount table every 20 ms.
        try container.check(
            """
            setsid sh -c 'while :; do if cmp -s /srv/models/model.bin /mnt/models/model.bin; then echo ok; else echo FAIL $?; fi; done' >/run/reader.log 2>&1 </dev/null &
            echo $! > /run/reader.pid
            setsid sh -c 'while :; do grep -q " /mnt/models fuse.cachefs " /proc/self/mounts || echo GONE; sleep 0.02; done' >/run/watcher.log 2>&1 </dev/null &
            echo $! > /run/watcher.pid
            """)
        defer { _ = try? container.exec("kill $(cat /run/reader.pid) $(cat /run/watcher.pid)") }
        for round in 1...5 {
            let pid = try container.property(unit, "MainPID")
            try #require(Int(pid) ?? 0 > 0, "no main PID in round \(round)")
            let okBefore = Int(try container.check("grep -c ok /run/reader.log || true")) ?? 0
            try container.check("kill -9 \(pid)")
            let back = try eventually(within: 15) {
                try !["0", pid].contains(container.property(unit, "MainPID"))
                    && container.exec("cachefs stats /mnt/models --json").status == 0
            }
            #expect(back, "round \(round): no daemon serving again within 15 s:\n\(container.journal(unit))")
            // Reads go on through the new daemon.
            #expect(
                try eventually(within: 15) { (Int(try container.check("grep -c ok /run/reader.log || true")) ?? 0) > okBefore + 2 },
                "round \(round): the reader did not read on")
            let stats = try container.stats("/mnt/models")
            #expect(
                stats.continuity?.start == .restart && stats.continuity?.keptBySystemd == true,
                "round \(round): \(String(describing: stats.continuity))")
            #expect(
                stats.continuity?.inheritedBytes ?? 0 >= modelSize,
                "round \(round): inherited \(stats.continuity?.inheritedBytes ?? 0) bytes")
            #expect(
                stats[.bytesFromSource] == 0, "round \(round): the restarted daemon read \(stats[.bytesFromSource]) bytes from the source")
        }
        let failures = try container.check("grep -v '^ok$' /run/reader.log | head -5 || true")
        #expect(failures.isEmpty, "reads failed or differed: \(failures)")
        let gone = try container.check("cat /run/watcher.log")
        #expect(gone.isEmpty, "the mount left the mount table: \(gone.split(separator: "\n").count) samples")
        print("crash loop: \(try container.check("grep -c ok /run/reader.log")) whole-file reads, all right")
    }

    @Test(
        "cachefs@svc with SPEC=a service JSON: its two cache entries mounted by one unit with CACHEFS_OPTIONS, the oss entry skipped; back after a daemon's SIGKILL; nothing left after stop"
    )
    func specUnit() throws {
        let container = try BootedContainer { root in
            try shell(
                """
                mkdir -p "$0/srv/oss/sd" "$0/srv/oss/lora" "$0/mnt/sd" "$0/mnt/lora" "$0/etc/cachefs"
                head -c 20000000 /dev/urandom > "$0/srv/oss/sd/base.safetensors"
                head -c 6000000 /dev/urandom > "$0/srv/oss/lora/style.safetensors"
                """, arguments: [root])
            // The reference product's form: an oss mount (the node's to make) and caches of directories beneath it.
            try """
            {"metadata": {"name": "sdwebui", "instance": 1},
             "containers": [{"image": "example/sdwebui:latest", "port": 8000}],
             "storage": [
               {"oss": {"path": "oss://examplebucket/models/", "readOnly": true}, "mount_path": "/srv/oss"},
               {"cache": {"capacity": "128M", "path": "/srv/oss/sd"}, "mount_path": "/mnt/sd"},
               {"cache": {"capacity": "64M", "path": "/srv/oss/lora"}, "mount_path": "/mnt/lora"}]}
            """.write(toFile: root + "/etc/cachefs/svc.json", atomically: true, encoding: .utf8)
            try "SPEC=/etc/cachefs/svc.json\nCACHEFS_OPTIONS=--metadata-timeout 2\n"
                .write(toFile: root + "/etc/cachefs/svc.conf", atomically: true, encoding: .utf8)
        }
        let unit = "cachefs@svc.service"
        let started = try container.exec("systemctl enable --now \(unit)")
        try #require(started.status == 0, "\(started.error)\n\(container.journal(unit))")
        #expect(try container.property(unit, "ActiveState") == "active")
        #expect(try container.property(unit, "StatusText") == "serving /mnt/lora, /mnt/sd")
        func serving() throws -> Bool {
            try container.cachefsMounts(at: "/mnt/sd").count == 1 && container.cachefsMounts(at: "/mnt/lora").count == 1
                && container.exec(
                    "cmp /srv/oss/sd/base.safetensors /mnt/sd/base.safetensors && cmp /srv/oss/lora/style.safetensors /mnt/lora/style.safetensors"
                ).status == 0
        }
        #expect(try serving(), "\(container.journal(unit))")
        let stats = try container.stats("/mnt/sd")
        #expect(stats.settings.capacity == 128 << 20 && stats.settings.metadataTimeout == 2 && stats.settings.source == "/srv/oss/sd")
        #expect(
            try container.exec("journalctl -u \(unit) -o cat | grep -q 'skipping storage entry 1 (mount_path /srv/oss)'").status == 0,
            "\(container.journal(unit))")

        // One daemon killed: the unit fails as a whole and systemd starts every mount again.
        let firstPid = try container.property(unit, "MainPID")
        try container.check("kill -9 $(cat /proc/\(firstPid)/task/\(firstPid)/children | cut -d' ' -f1)")
        let back = try eventually(within: 15) {
            try container.property(unit, "ActiveState") == "active" && !["0", firstPid].contains(try container.property(unit, "MainPID"))
                && serving()
        }
        #expect(back, "not serving both again within 15 s of a daemon's SIGKILL:\n\(container.journal(unit))")

        try container.check("systemctl stop \(unit)")
        #expect(
            try container.cachefsMounts(at: "/mnt/sd").isEmpty && container.cachefsMounts(at: "/mnt/lora").isEmpty,
            "a mount outlived systemctl stop")
        let left = try container.exec("cat /proc/[0-9]*/comm 2>/dev/null | grep -x -e cachefs -e fusermount3")
        #expect(left.status != 0, "processes outlived systemctl stop: \(left.output)")
    }

    @Test("After a reboot, an /etc/fstab line (fuse.cachefs, _netdev,nofail) and the enabled unit are mounted and serve the source's bytes")
    func fstabAfterReboot() throws {
        let container = try BootedContainer(prepare: writeModels)
        try container.check(
            """
            echo '/srv/models /mnt/fstab fuse.cachefs capacity=128M,_netdev,nofail 0 0' >> /etc/fstab
            systemctl enable cachefs@models.service
            """)
        try container.reboot()
        let mounted = try eventually(within: 30) { try container.cachefsMounts(at: "/mnt/fstab").count == 1 }
        #expect(mounted, "the fstab line did not mount:\n\(container.journal("mnt-fstab.mount"))")
        #expect(try container.cachefsMounts(at: "/mnt/fstab").allSatisfy { $0 > 4096 })
        #expect(try container.exec("cmp /srv/models/model.bin /mnt/fstab/model.bin").status == 0)
        #expect(
            try container.property("cachefs@models.service", "ActiveState") == "active",
            "\(container.journal("cachefs@models.service"))")
        #expect(try container.exec("cmp /srv/models/model.bin /mnt/models/model.bin").status == 0)
    }
}
