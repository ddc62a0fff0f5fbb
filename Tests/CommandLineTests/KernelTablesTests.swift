import Foundation
import Testing

@testable import cachefs

#if canImport(Glibc)
import Glibc
#endif

/// The kernel tables the command reads: every entry of a mount table longer than a page, and the cgroup memory limit on v1 and v2.
@Suite(.serialized) struct KernelTablesTests {
    /// 60 tmpfs mounts with long names push /proc/self/mountinfo well past 4 KiB; every one must be seen.
    @Test func mountTableLongerThanAPageIsReadWhole() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("cachefs-mounttable-\(UUID().uuidString.prefix(8))").path
        var mounted: [String] = []
        defer {
            for path in mounted { umount2(path, Int32(MNT_DETACH)) }
            try? FileManager.default.removeItem(atPath: base)
        }
        for index in 0..<60 {
            let path = base + "/a-rather-long-directory-name-to-fill-the-mount-table-\(index)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            guard mount("cachefs-test", path, "tmpfs", 0, "size=64k") == 0 else {
                throw TestFailure("mount tmpfs at \(path): \(String(cString: strerror(errno)))")
            }
            mounted.append(path)
        }
        let text = try #require(readKernelFile("/proc/self/mountinfo"))
        #expect(text.utf8.count > 8192, "the table should span several pages")
        let mountpoints = Set(MountTable.current().map(\.mountpoint))
        let missing = mounted.filter { !mountpoints.contains($0) }
        #expect(missing.isEmpty, "\(missing.count) of \(mounted.count) mounts missing from the table, first \(missing.first ?? "")")
        // The last line is the last mount: nothing was cut off.
        #expect(MountTable.current().last?.mountpoint == mounted.last)
    }

    @Test func mountinfoFieldsAreParsed() {
        let table = MountTable.parse(
            """
            36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue
            25 22 0:22 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory
            """)
        #expect(
            table == [
                .init(mountpoint: "/mnt/with space", type: "ext3", superOptions: "rw,errors=continue", root: "/mnt1", device: "98:0"),
                .init(mountpoint: "/sys/fs/cgroup/memory", type: "cgroup", superOptions: "rw,memory", root: "/", device: "0:22"),
            ])
    }

    @Test func cgroupV2LimitFilesWalkUpToTheRoot() {
        let mounts = [MountTable.Entry(mountpoint: "/sys/fs/cgroup", type: "cgroup2", superOptions: "rw,nsdelegate", root: "/")]
        let files = MemoryLimit.cgroupLimitFiles(cgroups: "0::/system.slice/cachefs@models.service\n", mounts: mounts)
        #expect(
            files == [
                "/sys/fs/cgroup/system.slice/cachefs@models.service/memory.max",
                "/sys/fs/cgroup/system.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ])
    }

    @Test func cgroupV1MemoryControllerIsFound() {
        // A hybrid host: cgroup v1 controllers, the unified hierarchy without controllers beside them.
        let mounts = [
            MountTable.Entry(mountpoint: "/sys/fs/cgroup/unified", type: "cgroup2", superOptions: "rw", root: "/"),
            MountTable.Entry(mountpoint: "/sys/fs/cgroup/cpu,cpuacct", type: "cgroup", superOptions: "rw,cpu,cpuacct", root: "/"),
            MountTable.Entry(mountpoint: "/sys/fs/cgroup/memory", type: "cgroup", superOptions: "rw,memory", root: "/"),
        ]
        let cgroups = "12:memory:/machine.slice/pod\n4:cpu,cpuacct:/machine.slice/pod\n0::/machine.slice/pod\n"
        let files = MemoryLimit.cgroupLimitFiles(cgroups: cgroups, mounts: mounts)
        #expect(
            files.prefix(3) == [
                "/sys/fs/cgroup/memory/machine.slice/pod/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/machine.slice/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            ])
        #expect(files.contains("/sys/fs/cgroup/unified/machine.slice/pod/memory.max"))
    }

    @Test func cgroupInsideAContainerReadsTheMountRoot() {
        // A container sees its own cgroup as the hierarchy's root, mounted from a subtree.
        let mounts = [
            MountTable.Entry(mountpoint: "/sys/fs/cgroup/memory", type: "cgroup", superOptions: "ro,memory", root: "/machine.slice/c1")
        ]
        #expect(
            MemoryLimit.cgroupLimitFiles(cgroups: "9:memory:/machine.slice/c1\n", mounts: mounts)
                == ["/sys/fs/cgroup/memory/memory.limit_in_bytes"])
        #expect(MemoryLimit.cgroupLimitFiles(cgroups: "9:memory:/\n", mounts: mounts) == ["/sys/fs/cgroup/memory/memory.limit_in_bytes"])
    }

    @Test func limitValues() {
        #expect(MemoryLimit.parseLimit("max\n") == nil)
        #expect(MemoryLimit.parseLimit("9223372036854771712\n") == nil) // v1's "unlimited"
        #expect(MemoryLimit.parseLimit("2147483648\n") == 2 << 30)
        #expect(MemoryLimit.parseLimit("") == nil)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
