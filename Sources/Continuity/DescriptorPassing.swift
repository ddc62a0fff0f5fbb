import CLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A Unix stream socket between two daemons that carries framed messages with descriptors attached
/// (SCM_RIGHTS): the hand-over. A frame is its length (u32), its kind (u8) and its payload; its
/// descriptors (at most `maximumDescriptors`) travel with its first byte.
///
/// Threads: one sender and one receiver at a time.
public final class DescriptorChannel: Sendable {
    public let descriptor: Int32
    public static let maximumDescriptors = Int(CACHEFS_MAX_FDS_PER_MESSAGE)
    /// The largest payload accepted (a node snapshot of millions of nodes fits).
    static let maximumPayload = 1 << 30

    public init(descriptor: Int32) { self.descriptor = descriptor }

    deinit { close(descriptor) }

    /// Listens at `path` (a stale socket there is replaced), reachable by the owner only at every
    /// moment whatever the umask: as the control socket (ControlListener), it is bound in a directory
    /// of its own (mode 0700) beside `path`, restricted to 0600, and only then renamed to `path`.
    public static func listen(at path: String) throws(Errno) -> Int32 {
        let fd = socket(AF_UNIX, CACHEFS_SOCK_STREAM_CLOEXEC, 0)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        let parent = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        var template = Array(((parent.isEmpty ? "" : parent) + "/.cachefs-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        let directory = String(cString: made)
        let boundPath = directory + "/s"
        defer {
            unlink(boundPath) // only there if the socket never moved
            rmdir(directory)
        }
        var address = try socketAddress(boundPath)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(boundPath, 0o600) == 0, Glibc.listen(fd, 4) == 0, rename(boundPath, path) == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        return fd
    }

    public static func connect(to path: String) throws(Errno) -> DescriptorChannel {
        let fd = socket(AF_UNIX, CACHEFS_SOCK_STREAM_CLOEXEC, 0)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        var address = try socketAddress(path)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        return DescriptorChannel(descriptor: fd)
    }

    private static func socketAddress(_ path: String) throws(Errno) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .fileNameTooLong }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        return address
    }

    /// Sends one frame; the descriptors stay the caller's (the receiver gets copies).
    public func send(kind: UInt8, _ payload: [UInt8], descriptors: [Int32] = []) throws(Errno) {
        precondition(descriptors.count <= Self.maximumDescriptors)
        var frame: [UInt8] = []
        frame.reserveCapacity(5 + payload.count)
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { frame.append(contentsOf: $0) }
        frame.append(kind)
        frame.append(contentsOf: payload)
        var sent = 0
        while sent < frame.count {
            let count = frame.withUnsafeBytes { raw in
                descriptors.withUnsafeBufferPointer { fds in
                    cachefs_send_with_fds(
                        descriptor, nil, 0, raw.baseAddress! + sent, raw.count - sent,
                        sent == 0 ? fds.baseAddress : nil, sent == 0 ? Int32(fds.count) : 0)
                }
            }
            guard count > 0 else { throw Errno(rawValue: count < 0 ? errno : EPIPE) }
            sent += count
        }
    }

    /// Receives one frame and the descriptors that came with it (close-on-exec, now the caller's).
    /// Throws EPIPE at the end of the stream (the other daemon exited or closed).
    public func receive() throws(Errno) -> (kind: UInt8, payload: [UInt8], descriptors: [Int32]) {
        var header = [UInt8](repeating: 0, count: 5)
        var fds = [Int32](repeating: -1, count: Self.maximumDescriptors)
        var fdCount: Int32 = 0
        var have = 0
        var received: [Int32] = []
        while have < 5 {
            let count = header.withUnsafeMutableBytes { raw in
                fds.withUnsafeMutableBufferPointer {
                    cachefs_receive_with_fds(descriptor, raw.baseAddress! + have, 5 - have, $0.baseAddress, Int32($0.count), &fdCount)
                }
            }
            received += fds.prefix(Int(fdCount))
            guard count > 0 else {
                received.forEach { close($0) }
                throw Errno(rawValue: count < 0 ? errno : EPIPE)
            }
            have += count
        }
        let length = Int(UInt32(littleEndian: header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
        guard length <= Self.maximumPayload else {
            received.forEach { close($0) }
            throw .messageTooLong
        }
        var payload = [UInt8](repeating: 0, count: length)
        var got = 0
        while got < length {
            let count = payload.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + got, length - got) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                received.forEach { close($0) }
                throw Errno(rawValue: count < 0 ? errno : EPIPE)
            }
            got += count
        }
        return (header[4], payload, received)
    }

    /// Makes a `receive` that waits longer than `seconds` fail (EAGAIN): a peer that stops answering is given up.
    public func setReceiveTimeout(seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Waits until the other end closes (its process exited), at most `seconds`; returns whether it did.
    public func waitForClose(seconds: Double) -> Bool {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            let ready = poll(&poller, 1, 50)
            if ready > 0 {
                var byte: UInt8 = 0
                let count = recv(descriptor, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                if count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR) { return true }
                usleep(10_000)
            }
        }
        return false
    }
}
