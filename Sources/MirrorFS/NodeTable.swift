import BlockCache
import SourceTree
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A source file the kernel knows by a node ID.
///
/// A node is found again through its parent and its name, not through a
/// descriptor it owns: the kernel may remember far more files than a process
/// may hold descriptors (`find` over a large tree), so descriptors are only a
/// bounded cache in the `NodeTable`.
final class Node: Sendable {
    let id: UInt64
    /// Which source file this is (`IdentityRule`): under the inode rule, hard links share a node.
    let identity: FileIdentity
    /// The file's type (`S_IFMT` bits), which a file found again by name must still have.
    let type: mode_t
    /// Where the kernel last looked the file up; nil for the root. Holding the
    /// parent keeps the whole chain to the root resolvable even after the kernel forgets a directory.
    /// Lock order: last, after `OpenDirectory.stream` and the node table (`SourceAccess.nodes`), which
    /// move a node under them; nothing is taken under it.
    private let place: Mutex<Place?>
    /// How the node's files are open now (daemon-served or passthrough), and the version last opened.
    /// Lock order: first of its chain, before the cache's lock (`BlockCache.state`: holds) and the
    /// passthrough state (`FuseKernelFeatures.state`). Held across BACKING_OPEN and BACKING_CLOSE, so no
    /// open reply can carry a backing id being closed: two short ioctls, never a source call.
    let opens = Mutex(NodeOpens())
    /// Set when the file changed while passthrough readers hold the old version: the next
    /// lookup of its name makes a new node, which the old readers' inode cannot share.
    private let isSuperseded = Atomic<Bool>(false)

    struct Place {
        let parent: Node
        /// The name in the parent, NUL-terminated.
        let name: [CChar]
    }

    init(id: UInt64, identity: FileIdentity, type: mode_t, place: Place?) {
        self.id = id
        self.identity = identity
        self.type = type
        self.place = Mutex(place)
    }

    var location: Place? { place.withLock { $0 } }

    func supersede() { isSuperseded.store(true, ordering: .relaxed) }

    var superseded: Bool { isSuperseded.load(ordering: .relaxed) }

    /// A later lookup under another name (a rename, a second hard link) is where the file is found from now on.
    func moved(to location: Place) { place.withLock { $0 = location } }

    /// The path from the source root, as bytes separated by "/"; empty for the root.
    var relativePath: [UInt8] {
        var components: [[CChar]] = []
        var current = location
        while let place = current {
            components.append(place.name)
            current = place.parent.location
        }
        var path: [UInt8] = []
        for name in components.reversed() {
            if !path.isEmpty { path.append(UInt8(ascii: "/")) }
            path.append(contentsOf: name.dropLast().map { UInt8(bitPattern: $0) })
        }
        return path
    }

    /// The path of `name` (NUL-terminated) in the directory `parent`.
    static func path(of parent: Node, appending name: [CChar]) -> [UInt8] {
        path(from: parent.relativePath, appending: name)
    }

    /// The same, given the parent's path (a listing works it out once for all its entries).
    static func path(from parentPath: [UInt8], appending name: [CChar]) -> [UInt8] {
        var path = parentPath
        if !path.isEmpty { path.append(UInt8(ascii: "/")) }
        path.append(contentsOf: name.dropLast().map { UInt8(bitPattern: $0) })
        return path
    }
}

/// Node IDs handed to the kernel, each with the number of lookups the kernel
/// has not yet forgotten, and a bounded cache of source descriptors for them.
/// One ID per source identity, so hard links share a node.
///
/// IDs are never reused, so the generation number the kernel pairs with them can stay 0.
struct NodeTable: ~Copyable {
    static let rootID: UInt64 = 1

    private struct Entry {
        var node: Node
        var lookups: UInt64
    }

    let root: Node
    private(set) var rootHandle: PathHandle
    private var entries: [UInt64: Entry] = [:]
    private var ids: [FileIdentity: UInt64] = [:]
    private(set) var nextID: UInt64 = NodeTable.rootID + 1
    /// Open O_PATH descriptors of recently used nodes (the root's is kept apart, always open).
    private var handles = LRUList<UInt64, PathHandle>()
    private let handleLimit: Int
    /// Records how far IDs may go before more are handed out (see `KernelStateJournal`), and up to where it has.
    private let journal: (any KernelStateJournal)?
    private var reservedThrough: UInt64 = 0
    static let reservationStep: UInt64 = 4096

    init(root rootHandle: PathHandle, identity: FileIdentity, handleLimit: Int, journal: (any KernelStateJournal)? = nil) {
        precondition(handleLimit > 0)
        root = Node(id: Self.rootID, identity: identity, type: S_IFDIR, place: nil)
        self.rootHandle = rootHandle
        self.handleLimit = handleLimit
        self.journal = journal
        entries[Self.rootID] = Entry(node: root, lookups: 1)
        ids[identity] = Self.rootID
    }

    /// The next ID, recorded as reserved first, so that a daemon taking over after a crash never
    /// gives the kernel an ID it still holds for another file.
    private mutating func takeID() -> UInt64 {
        defer { nextID += 1 }
        if nextID >= reservedThrough, let journal {
            reservedThrough = nextID + Self.reservationStep
            journal.reserveNodeIDs(through: reservedThrough)
        }
        return nextID
    }

    var count: Int { entries.count }
    var cachedHandleCount: Int { handles.count }

    subscript(id: UInt64) -> Node? { entries[id]?.node }

    /// Returns the node for `identity` found as `name` in `parent`, counting one
    /// more lookup; `handle`, just opened for it, joins the descriptor cache. Without one (a
    /// listing's lookup), the node lets go of any descriptor it has and is opened by name when
    /// next needed, so that it never keeps a descriptor older than its latest lookup.
    /// - Parameter released: descriptors pushed out of the cache, to close outside the lock.
    mutating func remember(
        _ identity: FileIdentity, type: mode_t, in parent: Node, name: [CChar], handle: PathHandle?, released: inout [PathHandle]
    ) -> Node {
        let node: Node
        if let id = ids[identity], var entry = entries[id], !entry.node.superseded {
            entry.lookups += 1
            entries[id] = entry
            node = entry.node
            if id != Self.rootID { node.moved(to: Node.Place(parent: parent, name: name)) }
        } else {
            node = Node(id: takeID(), identity: identity, type: type, place: Node.Place(parent: parent, name: name))
            entries[node.id] = Entry(node: node, lookups: 1)
            ids[identity] = node.id
        }
        if node.id != Self.rootID {
            if let handle {
                cache(handle, for: node.id, released: &released)
            } else if let older = handles.remove(node.id) {
                released.append(older) // from an earlier lookup: the name may lead to another file now
            }
        }
        return node
    }

    /// The cached descriptor of a node, marked recently used.
    mutating func cachedHandle(of id: UInt64) -> PathHandle? {
        id == Self.rootID ? rootHandle : handles.touch(id)
    }

    /// Caches `handle` for `id`, replacing any other, and evicts the least recently used beyond the limit.
    mutating func cache(_ handle: PathHandle, for id: UInt64, released: inout [PathHandle]) {
        if let previous = handles.remove(id) { released.append(previous) }
        handles.insert(id, handle)
        while handles.count > handleLimit, let (_, oldest) = handles.removeOldest() {
            released.append(oldest)
        }
    }

    /// Puts a new source root in place of one that stopped answering (its mount went away
    /// and came back). Every cached descriptor belonged to the old mount, so all are dropped;
    /// nodes are found again by name and, being other files now, answer ESTALE until the kernel looks them up afresh.
    mutating func replaceRoot(with handle: PathHandle, released: inout [PathHandle]) {
        released.append(rootHandle)
        rootHandle = handle
        while let (_, dropped) = handles.removeOldest() { released.append(dropped) }
    }

    /// Every node the kernel holds, with its lookup count.
    var known: [(node: Node, lookups: UInt64)] { entries.values.map { ($0.node, $0.lookups) } }

    /// Puts an inherited node back under its ID, with the kernel's lookup count (0: known only as a
    /// parent). The root keeps this daemon's node.
    mutating func restore(_ node: Node, lookups: UInt64) {
        guard node.id != Self.rootID else { return }
        if lookups > 0 {
            entries[node.id] = Entry(node: node, lookups: lookups)
            if !node.superseded { ids[node.identity] = node.id }
        }
        nextID = max(nextID, node.id + 1)
    }

    /// IDs start above `id` from now on (inherited: the predecessor may have handed out every one up to it).
    mutating func startIDs(after id: UInt64) {
        nextID = max(nextID, id + 1)
    }

    /// Drops `count` lookups; returns the descriptor of a node that was forgotten, for the caller to close outside any lock.
    mutating func forget(_ id: UInt64, count: UInt64) -> PathHandle? {
        guard id != Self.rootID, var entry = entries[id] else { return nil }
        entry.lookups -= min(count, entry.lookups)
        guard entry.lookups == 0 else {
            entries[id] = entry
            return nil
        }
        entries[id] = nil
        if ids[entry.node.identity] == id { ids[entry.node.identity] = nil }
        return handles.remove(id)
    }
}
