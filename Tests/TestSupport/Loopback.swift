#if canImport(Glibc)
import Glibc
#endif

/// A TCP socket bound to a port the kernel picks on 127.0.0.1, listening with `backlog` if asked; the
/// caller closes it. For tests that play a peer that misbehaves, or need a port nothing answers on.
public func loopbackSocket(listening: Bool, backlog: Int32 = 16) throws -> (descriptor: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && (!listening || listen(fd, backlog) == 0) && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else {
        close(fd)
        throw LoopbackUnavailable()
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

public struct LoopbackUnavailable: Error, CustomStringConvertible {
    public var description: String { "no free port on loopback" }
}
