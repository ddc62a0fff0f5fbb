/// Keys in least-recently-used order, each with a value, with O(1) lookup,
/// touch, insert and removal. Nodes live in one array linked by index, so a
/// large cache costs no per-entry allocation and no reference counting.
///
/// Inlinable, so that other modules get code specialized for their key and
/// value types: unspecialized, every call looks up generic metadata at run
/// time, which cost MirrorFS's descriptor cache microseconds per FUSE request.
public struct LRUList<Key: Hashable, Value> {
    @inlinable public init() {}

    @usableFromInline
    struct Node {
        @usableFromInline var key: Key?
        @usableFromInline var value: Value?
        @usableFromInline var newer = -1
        @usableFromInline var older = -1

        @inlinable init(key: Key? = nil, value: Value? = nil) {
            self.key = key
            self.value = value
        }
    }

    @usableFromInline var nodes: [Node] = []
    @usableFromInline var slots: [Key: Int] = [:]
    @usableFromInline var freeSlots: [Int] = []
    @usableFromInline var newest = -1
    @usableFromInline var oldest = -1

    @inlinable public var count: Int { slots.count }
    @inlinable public var isEmpty: Bool { slots.isEmpty }

    @inlinable public func peek(_ key: Key) -> Value? {
        slots[key].flatMap { nodes[$0].value }
    }

    /// Returns the value and marks the key most recently used.
    @inlinable public mutating func touch(_ key: Key) -> Value? {
        guard let slot = slots[key] else { return nil }
        unlink(slot)
        linkNewest(slot)
        return nodes[slot].value
    }

    /// Inserts a key that is not present as the most recently used.
    @inlinable public mutating func insert(_ key: Key, _ value: Value) {
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

    @inlinable @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let slot = slots.removeValue(forKey: key) else { return nil }
        return release(slot)
    }

    @inlinable public mutating func removeOldest() -> (key: Key, value: Value)? {
        guard oldest >= 0 else { return nil }
        let slot = oldest
        let key = nodes[slot].key!
        slots[key] = nil
        return (key, release(slot)!)
    }

    /// Keys from least to most recently used.
    @inlinable public var keysOldestFirst: [Key] {
        var keys: [Key] = []
        keys.reserveCapacity(count)
        var slot = oldest
        while slot >= 0 {
            keys.append(nodes[slot].key!)
            slot = nodes[slot].newer
        }
        return keys
    }

    @inlinable mutating func release(_ slot: Int) -> Value? {
        unlink(slot)
        let value = nodes[slot].value
        nodes[slot] = Node()
        freeSlots.append(slot)
        return value
    }

    @inlinable mutating func unlink(_ slot: Int) {
        let (newer, older) = (nodes[slot].newer, nodes[slot].older)
        if newer >= 0 { nodes[newer].older = older } else { newest = older }
        if older >= 0 { nodes[older].newer = newer } else { oldest = newer }
        nodes[slot].newer = -1
        nodes[slot].older = -1
    }

    @inlinable mutating func linkNewest(_ slot: Int) {
        nodes[slot].older = newest
        nodes[slot].newer = -1
        if newest >= 0 { nodes[newest].newer = slot } else { oldest = slot }
        newest = slot
    }
}
