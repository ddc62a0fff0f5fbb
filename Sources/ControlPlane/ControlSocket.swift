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

    /// Whether a process listens on the Unix socket at `path` (a connection is accepted). A socket
    /// left by a daemon that died refuses connections.
    static func isListening(_ path: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }

    static func hexHash(_ text: String) -> String {
        var hash = FNV1a()
        hash.add(text.utf8)
        return hash.hex
    }
}
