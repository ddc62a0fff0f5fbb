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

    /// 64-bit FNV-1a: stable across runs and builds, unlike `Hasher`.
    static func hexHash(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        let digits = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
