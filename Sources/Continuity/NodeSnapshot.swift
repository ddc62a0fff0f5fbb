import BlockCache
import CRC32C
import MirrorFS

/// The node table as a predecessor saw it, for a hand-over: every node the kernel holds (with its
/// lookups) and their ancestors, parents first, and the next free ID. One self-checking blob
/// (format 1): magic "CFSNODE1", format, next ID, count, CRC-32C of the records, the records.
public enum NodeSnapshot {
    public static let format: UInt32 = 1
    static let magic: UInt64 = 0x3145_444F_4E53_4643 // "CFSNODE1" little-endian

    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    public static func encode(_ nodes: [NodeRecord], nextID: UInt64) -> [UInt8] {
        var body = ByteWriter()
        for node in nodes {
            body.append(node.id)
            body.append(node.parent)
            body.append(lengthPrefixed: node.name)
            body.append(node.identity)
            body.append(node.type)
            body.append(node.lookups)
            body.append(UInt8(node.superseded ? 1 : 0))
            if let version = node.lastVersion {
                body.append(UInt8(1))
                body.append(version)
            } else {
                body.append(UInt8(0))
            }
        }
        var writer = ByteWriter()
        writer.append(magic)
        writer.append(format)
        writer.append(nextID)
        writer.append(UInt64(nodes.count))
        writer.append(body.bytes.withUnsafeBytes { cachefs_crc32c(0, $0.baseAddress, $0.count) })
        return writer.bytes + body.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(Refused) -> (nodes: [NodeRecord], nextID: UInt64) {
        let decoded: Result<(nodes: [NodeRecord], nextID: UInt64), Refused> = bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            do {
                guard try reader.read(UInt64.self) == magic else { return .failure(Refused(description: "not a node snapshot")) }
                let found: UInt32 = try reader.read()
                guard found == format else {
                    return .failure(Refused(description: "node snapshot format \(found); this cachefs reads format \(format)"))
                }
                let nextID: UInt64 = try reader.read()
                let count: UInt64 = try reader.read()
                let crc: UInt32 = try reader.read()
                guard crc == cachefs_crc32c(0, raw.baseAddress! + reader.position, reader.remaining) else {
                    return .failure(Refused(description: "the node snapshot's checksum does not match"))
                }
                var nodes: [NodeRecord] = []
                nodes.reserveCapacity(Int(min(count, 1 << 24)))
                for _ in 0..<count {
                    let id: UInt64 = try reader.read(), parent: UInt64 = try reader.read()
                    let name = try reader.readLengthPrefixed(limit: 4096)
                    let identity = try reader.readIdentity()
                    let type: UInt32 = try reader.read(), lookups: UInt64 = try reader.read()
                    let superseded = try reader.read(UInt8.self) != 0
                    let lastVersion = try reader.read(UInt8.self) != 0 ? try reader.readVersion() : nil
                    nodes.append(
                        NodeRecord(
                            id: id, parent: parent, name: name, identity: identity, type: type, lookups: lookups,
                            superseded: superseded, lastVersion: lastVersion))
                }
                return .success((nodes, nextID))
            } catch {
                return .failure(Refused(description: "the node snapshot is malformed: \(error)"))
            }
        }
        return try decoded.get()
    }
}
