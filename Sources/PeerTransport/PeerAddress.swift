import HTTPServing

/// A peer's numeric address and port, as resolved: `127.0.0.1:7070`, `[fd00::1]:7070`.
public struct PeerAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// A numeric IPv4 or IPv6 address (never a name: names are resolved by `PeerDiscovery`).
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { HostPort(host: host, port: port).description }

    /// The URL authority, with IPv6 brackets.
    var authority: String { description }

    public static func < (a: PeerAddress, b: PeerAddress) -> Bool { (a.host, a.port) < (b.host, b.port) }
}
