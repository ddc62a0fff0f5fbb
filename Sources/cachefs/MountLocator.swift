import ControlPlane
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A path given to `cachefs warm`/`unpin`, found inside a running cachefs mount.
struct PathInMount: Equatable {
    var mountpoint: String
    /// Relative to the mountpoint, "" for the mountpoint itself.
    var relativePath: String
}

enum MountLocator {
    /// Finds the cachefs mount (fstype `fuse.cachefs` in /proc/self/mountinfo)
    /// holding `path`, after resolving symlinks; fails with a one-line reason.
    static func locate(_ path: String) throws -> PathInMount {
        guard let resolved = realpath(path, nil) else {
            throw UsageError("\(path): \(String(cString: strerror(errno)))")
        }
        defer { free(resolved) }
        let canonical = String(cString: resolved)
        let mounts = MountTable.current()
        // The innermost mount holding the path decides: a cachefs mount below another filesystem counts, one hidden under a newer mount does not.
        guard
            let innermost = mounts.enumerated()
                .filter({ contains($0.element.mountpoint, canonical) })
                .max(by: { ($0.element.mountpoint.count, $0.offset) < ($1.element.mountpoint.count, $1.offset) })?.element,
            innermost.type == "fuse.cachefs"
        else {
            throw UsageError("\(path) is not inside a cachefs mount")
        }
        let relative =
            canonical == innermost.mountpoint
            ? "" : String(canonical.dropFirst(innermost.mountpoint == "/" ? 1 : innermost.mountpoint.count + 1))
        return PathInMount(mountpoint: innermost.mountpoint, relativePath: relative)
    }

    private static func contains(_ mountpoint: String, _ path: String) -> Bool {
        mountpoint == "/" || path == mountpoint || path.hasPrefix(mountpoint + "/")
    }

    /// The control socket of the daemon serving `mountpoint`, unless given explicitly.
    static func controlSocket(for mountpoint: String, explicit: String?) -> String {
        explicit.map(MountSettings.absolute) ?? ControlSocket.defaultPath(forMountpoint: mountpoint)
    }

    /// Groups paths by the mount holding them, keeping the order of first appearance.
    static func group(_ paths: [String]) throws -> [(mountpoint: String, relativePaths: [String])] {
        var groups: [(mountpoint: String, relativePaths: [String])] = []
        for path in paths {
            let found = try locate(path)
            if let index = groups.firstIndex(where: { $0.mountpoint == found.mountpoint }) {
                groups[index].relativePaths.append(found.relativePath)
            } else {
                groups.append((found.mountpoint, [found.relativePath]))
            }
        }
        return groups
    }
}
