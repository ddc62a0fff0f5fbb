import HTTPServing
#if canImport(Glibc)
import Glibc
#endif

/// Where a daemon's control socket lives, derived from its mountpoint so that
/// `cachefs stats MOUNTPOINT` finds it without touching the mount.
public enum ControlSocket {
    /// `/run/cachefs` for root, otherwise the user's runtime directory. The name
    /// is a hash of the mountpoint: socket paths are limited to 107 bytes, mountpoints are not.
    public static func defaultPath(forMountpoint mountpoint: String) -> String {
        "\(directory)/\(hexHash(mountpoint)).sock"
    }

    public static var directory: String {
        if geteuid() == 0 { return "/run/cachefs" }
        if let runtime = getenv("XDG_RUNTIME_DIR") { return String(cString: runtime) + "/cachefs" }
        return "/tmp/cachefs-\(geteuid())"
    }

    static func hexHash(_ text: String) -> String {
        var hash = FNV1a()
        hash.add(text.utf8)
        return hash.hex
    }
}
