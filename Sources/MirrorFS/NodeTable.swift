import Synchronization
import BlockCache
import SourceTree

/// The identity of a source file: what makes two names hard links to one file.
struct SourceIdentity: Hashable {
    var device: UInt64
    var inode: UInt64
}

/// A source file the kernel knows by a node ID.
final class Node: Sendable {
    let id: UInt64
    let handle: PathHandle
    /// The version last opened, which decides whether the kernel may keep its page cache.
    let lastOpenedVersion = Mutex<FileVersion?>(nil)

    init(id: UInt64, handle: PathHandle) {
        self.id = id
        self.handle = handle
    }
}

/// Node IDs handed to the kernel, each with the number of lookups the kernel
/// has not yet forgotten. One ID per source identity, so hard links share a node.
///
/// IDs are never reused, so the generation number the kernel pairs with them can stay 0.
struct NodeTable: ~Copyable {
    static let rootID: UInt64 = 1

    private struct Entry {
        var node: Node
        var identity: SourceIdentity
        var lookups: UInt64
    }

    private var entries: [UInt64: Entry] = [:]
    private var ids: [SourceIdentity: UInt64] = [:]
    private var nextID: UInt64 = NodeTable.rootID + 1

    init(root: PathHandle, identity: SourceIdentity) {
        entries[Self.rootID] = Entry(node: Node(id: Self.rootID, handle: root), identity: identity, lookups: 1)
        ids[identity] = Self.rootID
    }

    var count: Int { entries.count }

    subscript(id: UInt64) -> Node? { entries[id]?.node }

    /// Returns the node for `identity`, counting one more lookup; `handle` becomes the node's if it is new.
    mutating func remember(_ identity: SourceIdentity, handle: PathHandle) -> Node {
        if let id = ids[identity], var entry = entries[id] {
            entry.lookups += 1
            entries[id] = entry
            return entry.node
        }
        let node = Node(id: nextID, handle: handle)
        nextID += 1
        entries[node.id] = Entry(node: node, identity: identity, lookups: 1)
        ids[identity] = node.id
        return node
    }

    /// Drops `count` lookups; returns the node if that was its last, for the caller to release outside any lock.
    mutating func forget(_ id: UInt64, count: UInt64) -> Node? {
        guard id != Self.rootID, var entry = entries[id] else { return nil }
        entry.lookups -= min(count, entry.lookups)
        guard entry.lookups == 0 else {
            entries[id] = entry
            return nil
        }
        entries[id] = nil
        if ids[entry.identity] == id { ids[entry.identity] = nil }
        return entry.node
    }
}
