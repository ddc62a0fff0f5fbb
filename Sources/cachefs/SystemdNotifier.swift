import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Tells systemd (Type=notify) when the mount is ready and when it is stopping,
/// by the datagram protocol of sd_notify(3), without linking libsystemd.
struct SystemdNotifier: Sendable {
    private let address: [UInt8]

    /// The notifier systemd asked for through NOTIFY_SOCKET, if any. The variable is
    /// removed so that programs the daemon starts (fusermount3) do not notify in its name.
    static func fromEnvironment() -> SystemdNotifier? {
        guard let value = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        unsetenv("NOTIFY_SOCKET")
        guard value.hasPrefix("/") || value.hasPrefix("@") else { return nil }
        var bytes = Array(value.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 } // an abstract socket
        return SystemdNotifier(address: bytes)
    }

    func ready(status: String) { send("READY=1\nSTATUS=\(status)\nMAINPID=\(getpid())") }

    func stopping() { send("STOPPING=1") }

    /// Sends a notification, with descriptors attached (FDSTORE=1); returns whether it was sent.
    @discardableResult
    func send(_ message: String, descriptors: [Int32] = []) -> Bool {
        let fd = socket(AF_UNIX, CACHEFS_SOCK_DGRAM_CLOEXEC, 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var target = sockaddr_un()
        target.sun_family = sa_family_t(AF_UNIX)
        let pathCapacity = MemoryLayout.size(ofValue: target.sun_path)
        guard address.count < pathCapacity else { return false }
        withUnsafeMutableBytes(of: &target.sun_path) { $0.copyBytes(from: address) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        let bytes = Array(message.utf8)
        let sent = bytes.withUnsafeBytes { raw in
            descriptors.withUnsafeBufferPointer { fds in
                withUnsafePointer(to: &target) {
                    cachefs_send_with_fds(fd, UnsafeRawPointer($0), length, raw.baseAddress, raw.count, fds.baseAddress, Int32(fds.count))
                }
            }
        }
        return sent == bytes.count
    }
}
