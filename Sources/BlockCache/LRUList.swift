/// Keys in least-recently-used order, each with a value, with O(1) lookup,
/// touch, insert and removal. Nodes live in one array linked by index, so a
/// large cache costs no per-entry allocation and no reference counting.
public struct LRUList<Key: Hashable, Value> {
    public init() {}

    private struct Node {
        var key: Key?
        var value: Value?
        var newer = -1
        var older = -1
    }

    private var nodes: [Node] = []
    private var slots: [Key: Int] = [:]
    private var freeSlots: [Int] = []
    private var newest = -1
    private var oldest = -1

    public var count: Int { slots.count }
    public var isEmpty: Bool { slots.isEmpty }

    public func peek(_ key: Key) -> Value? {
        slots[key].flatMap { nodes[$0].value }
    }

    /// Returns the value and marks the key most recently used.
    public mutating func touch(_ key: Key) -> Value? {
        guard let slot = slots[key] else { return nil }
        unlink(slot)
        linkNewest(slot)
        return nodes[slot].value
    }

    /// Inserts a key that is not present as the most recently used.
    public mutating func insert(_ key: Key, _ value: Value) {
        precondition(slots[key] == nil, "key inserted twice")
        let node = Node(key: key, value: value)
        let slot: Int
        if let reused = freeSlots.popLast() {
            nodes[reused] = node
            slot = reused
        } else {
            nodes.append(node)
            slot = nodes.count - 1
        }
        slots[key] = slot
        linkNewest(slot)
    }

    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let slot = slots.removeValue(forKey: key) else { return nil }
        return release(slot)
    }

    public mutating func removeOldest() -> (key: Key, value: Value)? {
        guard oldest >= 0 else { return nil }
        let slot = oldest
        let key = nodes[slot].key!
        slots[key] = nil
        return (key, release(slot)!)
    }

    /// Keys from least to most recently used.
    public var keysOldestFirst: [Key] {
        var keys: [Key] = []
        keys.reserveCapacity(count)
        var slot = oldest
        while slot >= 0 {
            keys.append(nodes[slot].key!)
            slot = nodes[slot].newer
        }
        return keys
    }

    private mutating func release(_ slot: Int) -> Value? {
        unlink(slot)
        let value = nodes[slot].value
        nodes[slot] = Node()
        freeSlots.append(slot)
        return value
    }

    private mutating func unlink(_ slot: Int) {
        let (newer, older) = (nodes[slot].newer, nodes[slot].older)
        if newer >= 0 { nodes[newer].older = older } else { newest = older }
        if older >= 0 { nodes[older].newer = newer } else { oldest = newer }
        nodes[slot].newer = -1
        nodes[slot].older = -1
    }

    private mutating func linkNewest(_ slot: Int) {
        nodes[slot].older = newest
        nodes[slot].newer = -1
        if newest >= 0 { nodes[newest].newer = slot } else { oldest = slot }
        newest = slot
    }
}
