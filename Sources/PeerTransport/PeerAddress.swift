/// A peer's numeric address and port, as resolved: `127.0.0.1:7070`, `[fd00::1]:7070`.
public struct PeerAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// A numeric IPv4 or IPv6 address (never a name: names are resolved by `PeerDiscovery`).
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The URL authority, with IPv6 brackets.
    var authority: String { description }

    public static func < (a: PeerAddress, b: PeerAddress) -> Bool { (a.host, a.port) < (b.host, b.port) }
}

/// `HOST:PORT` as written on the command line: a name or a numeric address, `[v6]:PORT` for IPv6.
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; `nil` for a missing host, a missing or out-of-range port, or stray brackets.
    public init?(parsing text: some StringProtocol) {
        let text = String(text)
        let hostPart: Substring, portPart: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            portPart = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        }
        guard !hostPart.isEmpty, !hostPart.contains(where: { $0 == "/" || $0 == "[" || $0 == "]" || $0 == " " }),
              let port = Int(portPart), (1...65535).contains(port), portPart.allSatisfy(\.isASCII)
        else { return nil }
        self.host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
