import Foundation
import Testing

/// deploy/Containerfile and deploy/kubernetes.yaml, checked as far as a machine without a
/// container engine or a cluster allows (Scripts/lib/check_deploy.py says how).
@Suite("Container image and Kubernetes manifest", .serialized)
struct ContainerImageTests {
    static let checker = packageRoot.appendingPathComponent("Scripts/lib/check_deploy.py").path

    static let toolsMissing: String? = {
        let probe = try? run("/bin/bash", ["-c", "command -v hadolint && command -v kubernetes-validate && python3 -c 'import yaml, dockerfile_parse'"])
        return probe?.status == 0 ? nil : "hadolint, kubernetes-validate or dockerfile-parse is missing (Scripts/test installs them from PyPI)"
    }()

    @Test("The manifest passes the Kubernetes schema (strict), the Containerfile hadolint, and both agree with each other and Scripts/install",
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

    @Test("In a Debian 12 container: the image's RUN steps, then its ENTRYPOINT with the DaemonSet's args and its ConfigMap's spec, serve the mount; SIGTERM unmounts",
          .enabled(if: toolsMissing == nil && ContainerPrerequisites.missing == nil,
                   Comment(rawValue: toolsMissing ?? ContainerPrerequisites.missing ?? "")))
    func imageStepsServe() throws {
        let steps = try JSONDecoder().decode(Steps.self, from: Data(try shell("python3 '\(Self.checker)' steps").utf8))
        // The staged install puts the binary where the image's COPY does (check_deploy.py validate checks that).
        let container = try BootedContainer { root in
            try shell("""
                mkdir -p data-slow data-fast etc/cachefs-token
                head -c 20000000 /dev/urandom > data-slow/model.bin
                echo test-token > etc/cachefs-token/token
                """, in: root)
            for (path, text) in steps.files {
                try FileManager.default.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try text.write(toFile: root + path, atomically: true, encoding: .utf8)
            }
        }
        for command in steps.run {
            let result = try container.exec(command, timeout: 300)
            #expect(result.status == 0, "RUN \(command): \(result.error)")
        }
        // What the container runtime does with the pod: run ENTRYPOINT + args as the container's main process.
        let command = (steps.entrypoint + steps.args).map { "'\($0)'" }.joined(separator: " ")
        try container.check("systemd-run --unit=cachefs-pod \(command)")
        let serving = try eventually(within: 20) { try container.exec("/usr/local/bin/cachefs stats /data-fast").status == 0 }
        #expect(serving, "the readiness probe's command never succeeded:\n\(container.journal("cachefs-pod"))")
        #expect(try container.exec("cmp /data-slow/model.bin /data-fast/model.bin").status == 0)

        // Pod deletion: the runtime sends SIGTERM to the container's main process only.
        try container.check("pid=$(systemctl show -P MainPID cachefs-pod) && [ \"$pid\" -gt 0 ] && kill -TERM \"$pid\"")
        let ended = try eventually(within: 15) { try container.exec("systemctl is-active cachefs-pod").output.hasPrefix("active") == false }
        #expect(ended, "still running 15 s after SIGTERM")
        #expect(try container.cachefsMounts(at: "/data-fast").isEmpty, "the mount outlived SIGTERM")
        #expect(try container.exec("journalctl -u cachefs-pod -o cat | grep -q 'unmounted'").status == 0, "\(container.journal("cachefs-pod"))")
    }
}
