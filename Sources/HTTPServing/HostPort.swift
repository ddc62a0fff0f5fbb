/// `HOST:PORT` as written on the command line: a name or a numeric address, `[v6]:PORT` for IPv6.
/// The one parser of addresses: `--listen`, `--metrics` and each `--peers` entry.
public struct HostPort: Hashable, Sendable, Codable, CustomStringConvertible {
    public var host: String
    /// 0 asks the system for any free port (only meaningful to listen on).
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
            portPart.allSatisfy({ $0.isASCII && $0.isNumber }), let port = Int(portPart), (0...65535).contains(port)
        else { return nil }
        self.host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
