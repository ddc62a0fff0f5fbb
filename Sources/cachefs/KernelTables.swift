import Foundation

#if canImport(Glibc)
import Glibc
#endif

// What the daemon reads of the kernel's own tables: the mount table, the memory
// limit of its cgroup and the read-ahead window of its mount. Files in /proc and
// /sys report a size of 0 and are generated as they are read, so each is read
// with repeated read(2) calls until EOF: one read of a fixed size (what
// `String(contentsOfFile:)` does for a zero-size file) stops at the first page
// and silently loses the rest of a long mount table.

/// Reads a procfs or sysfs file to its end; nil if it cannot be opened or read.
func readKernelFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    let chunk = 64 << 10
    while true {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: chunk))
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + start, chunk) }
        if count < 0 && errno == EINTR {
            bytes.removeLast(chunk)
            continue
        }
        guard count >= 0 else { return nil }
        bytes.removeLast(chunk - count)
        if count == 0 { return String(decoding: bytes, as: UTF8.self) }
    }
}

/// The kernel's view of mounts, from /proc/self/mountinfo.
struct MountTable {
    struct Entry: Equatable {
        var mountpoint: String
        var type: String
        /// The per-superblock options (the field after the source), e.g. `rw,memory` for a cgroup v1 hierarchy.
        var superOptions: String
        /// The directory of the file system mounted here (the "root" field; `/` for a whole file system).
        var root: String
        /// The mount's device numbers, `major:minor`.
        var device: String = ""
    }

    static func current() -> [Entry] {
        parse(readKernelFile("/proc/self/mountinfo") ?? "")
    }

    /// Parses mountinfo(5) lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS`.
    static func parse(_ text: String) -> [Entry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 7, let separator = fields.firstIndex(of: "-"), separator + 1 < fields.count else { return nil }
            return Entry(
                mountpoint: unescape(fields[4]), type: String(fields[separator + 1]),
                superOptions: separator + 3 < fields.count ? String(fields[separator + 3]) : "",
                root: unescape(fields[3]), device: String(fields[2])
            )
        }
    }

    /// mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    private static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The memory this process may use: physical memory, or less where its cgroup
/// (v2's `memory.max`, v1's `memory.limit_in_bytes`) sets a lower limit on it or on an ancestor.
enum MemoryLimit {
    static func usable() -> Int {
        let physical = sysconf(Int32(_SC_PHYS_PAGES)) * sysconf(Int32(_SC_PAGESIZE))
        let limits = cgroupLimitFiles(cgroups: readKernelFile("/proc/self/cgroup") ?? "", mounts: MountTable.current())
            .compactMap { readKernelFile($0).flatMap(parseLimit) }
        return ([physical] + limits).min()!
    }

    /// A limit file's value; nil for "max" (v2) or v1's "no limit" (a page-rounded Int64.max).
    static func parseLimit(_ text: String) -> Int? {
        let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let limit = Int(value), limit > 0, limit < Int.max / 2 else { return nil }
        return limit
    }

    /// The limit files of this process's memory cgroup and of each ancestor up to the
    /// hierarchy's mount, deepest first. Inside a container (a cgroup namespace) the own
    /// cgroup is the mount's root, so only the root's file is read.
    static func cgroupLimitFiles(cgroups: String, mounts: [MountTable.Entry]) -> [String] {
        var files: [String] = []
        for line in cgroups.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let controllers = fields[1].split(separator: ",")
            let path = String(fields[2])
            let isUnified = fields[0] == "0" && fields[1].isEmpty
            let mount: MountTable.Entry?
            if isUnified {
                mount = mounts.last { $0.type == "cgroup2" }
            } else if controllers.contains("memory") {
                mount = mounts.last { $0.type == "cgroup" && $0.superOptions.split(separator: ",").contains("memory") }
            } else {
                continue
            }
            guard let mount else { continue }
            let fileName = isUnified ? "memory.max" : "memory.limit_in_bytes"
            // The cgroup's path is relative to the hierarchy's root; the mount may show only a subtree of it.
            // A path outside the mounted subtree (another namespace's view) leaves only the mount's own file.
            var relative = path
            if mount.root != "/" {
                let inside = relative == mount.root || relative.hasPrefix(mount.root + "/")
                relative = inside ? String(relative.dropFirst(mount.root.count)) : ""
            }
            var components = relative.split(separator: "/").map(String.init)
            while true {
                let directory = ([mount.mountpoint] + components).joined(separator: "/")
                files.append(directory + "/" + fileName)
                guard !components.isEmpty else { break }
                components.removeLast()
            }
        }
        return files
    }
}

/// The kernel's read-ahead window on a mount (its backing device's `read_ahead_kb` in sysfs).
/// FUSE starts it at 128 KiB and its INIT reply can only lower it; only a write here raises it,
/// which needs root and a writable /sys (not the case inside most containers).
enum ReadAheadWindow {
    static func sysfsPath(mountpoint: String) -> String? {
        var attributes = stat()
        guard stat(mountpoint, &attributes) == 0 else { return nil }
        let device = UInt64(attributes.st_dev)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        return "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
    }

    /// The window in force, in bytes.
    static func current(mountpoint: String) -> Int? {
        guard let path = sysfsPath(mountpoint: mountpoint), let text = readKernelFile(path),
            let kib = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
        else { return nil }
        return kib * 1024
    }

    /// Sets the window; returns the errno of a failed attempt, nil on success.
    static func set(mountpoint: String, bytes: Int) -> Int32? {
        guard let path = sysfsPath(mountpoint: mountpoint) else { return errno }
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let value = "\(max(bytes / 1024, 4))\n"
        let written = value.withCString { write(fd, $0, strlen($0)) }
        return written == value.utf8.count ? nil : (written < 0 ? errno : EIO)
    }
}

/// Whether /proc is this process's: a PID namespace entered without mounting its own proc (`unshare
/// --pid --fork` without `--mount-proc`) leaves the outer namespace's, where /proc/TID names another
/// thread or none. libdispatch's worker monitor opens /proc/TID/stat for each of its threads once a
/// second and crashes the process (SIGILL, "registered worker exited prematurely") when one is missing,
/// so a daemon started there would die at a random moment; it refuses to start instead.
enum ProcFilesystem {
    /// Why /proc cannot be used, in one line; nil when it is this namespace's.
    static func foreignNamespace() -> String? {
        var target = [CChar](repeating: 0, count: 64)
        let count = readlink("/proc/self", &target, target.count - 1)
        guard count > 0 else { return "/proc is not mounted (cachefs reads its mount table there)" }
        let seen = String(decoding: target.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard seen != String(getpid()) else { return nil }
        return
            "/proc belongs to another PID namespace (this process is \(getpid()) here, /proc says \(seen)); mount this namespace's own (unshare --mount-proc, as a container runtime does)"
    }
}
