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

    private func send(_ message: String) {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var target = sockaddr_un()
        target.sun_family = sa_family_t(AF_UNIX)
        let pathCapacity = MemoryLayout.size(ofValue: target.sun_path)
        guard address.count < pathCapacity else { return }
        withUnsafeMutableBytes(of: &target.sun_path) { $0.copyBytes(from: address) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + address.count)
        _ = message.withCString { text in
            withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), 0, $0, length) }
            }
        }
    }
}
