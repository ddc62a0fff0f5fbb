import ControlPlane
import Foundation
import HTTPServing

#if canImport(Glibc)
import Glibc
#endif

/// `--listen`, `--peers` and `--peer-token-file`, checked: every address parses and the token is readable.
enum PeerOptions {
    static func apply(listen: String?, peers: String?, tokenFile: String?, to settings: inout MountSettings) throws {
        if let listen {
            guard let address = HostPort(parsing: listen) else {
                throw UsageError("--listen \(listen): expected HOST:PORT, such as 0.0.0.0:7070 or [::]:7070")
            }
            settings.listen = address
        }
        settings.peers = try peers.map(parsePeers) ?? []
        if let tokenFile {
            guard settings.peersEnabled else { throw UsageError("--peer-token-file needs --listen or --peers") }
            let path = MountSettings.absolute(tokenFile)
            _ = try readToken(path) // refused now, with one line, rather than by the daemon later
            settings.peerTokenFile = path
        }
    }

    /// `dns:NAME:PORT` (every address of NAME) or `HOST:PORT,HOST:PORT,…`.
    static func parsePeers(_ text: String) throws -> [HostPort] {
        let list = text.hasPrefix("dns:") ? [text.dropFirst(4)] : text.split(separator: ",", omittingEmptySubsequences: false)
        guard !list.isEmpty else { throw UsageError("--peers: empty list") }
        return try list.map { item in
            let item = item.trimmingCharacters(in: .whitespaces)
            guard let address = HostPort(parsing: item), address.port != 0 else {
                throw UsageError("--peers: '\(item)' is not HOST:PORT (give HOST:PORT,HOST:PORT or dns:NAME:PORT)")
            }
            return address
        }
    }

    /// The file's content without surrounding whitespace: visible ASCII only, as it goes in an HTTP header.
    static func readToken(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = access(path, R_OK) == 0 ? "cannot read it" : String(cString: strerror(errno))
            throw UsageError("--peer-token-file \(path): \(reason)")
        }
        guard data.count <= 4096, let text = String(data: data, encoding: .utf8) else {
            throw UsageError("--peer-token-file \(path): not a short text token")
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw UsageError("--peer-token-file \(path) is empty") }
        guard token.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw UsageError("--peer-token-file \(path): the token must be printable ASCII without spaces")
        }
        return token
    }
}
