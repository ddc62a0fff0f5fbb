/// A pin that would take more than the capacity left for it.
public struct PinRefused: Error, Equatable, CustomStringConvertible {
    /// Bytes the refused files would have added to the pinned total.
    public var requestedBytes: Int
    /// Bytes already pinned, and held by loads in flight (or by memory not given back), when it was refused.
    public var pinnedBytes: Int
    public var reservedBytes: Int
    public var capacity: Int

    public var description: String {
        let available = max(0, capacity - pinnedBytes - reservedBytes)
        return "pinning \(requestedBytes) bytes needs more than the \(available) bytes of the \(capacity)-byte capacity not already pinned"
    }
}

// Pinning: a pinned file version's blocks are never evicted. Its whole size is
// counted against the capacity as soon as it is pinned, whether or not its
// blocks are loaded yet, so that warming it later can never fail for room.
// Pins are kept per file identity: pinning a new version of a file replaces
// the pin of the old one, whose blocks are dropped (unless a hold keeps them).
extension BlockCache {
    /// Pins every version in `files`, or none of them if their sizes do not fit
    /// beside what is already pinned or held and what loads in flight hold.
    ///
    /// Blocks of these versions already resident leave the LRU list; other blocks
    /// are made room for by evicting least recently used ones.
    public func pin(_ files: [FileVersion]) throws(PinRefused) {
        var released: [Block] = [] // given back after the lock is dropped
        defer { released.removeAll() }
        try state.withLock { (state: inout State) throws(PinRefused) in
            var newest: [FileIdentity: FileVersion] = [:]
            for file in files { newest[file.identity] = file }
            let added = newest.values.filter { state.pins[$0.identity] != $0 }
            let replaced = added.reduce(0) { $0 + Int(state.pins[$1.identity]?.size ?? 0) }
            // A held version is already paid for in full: pinning it moves its charge.
            let requested = added.reduce(0) { $0 + Int($1.size) }
            let alreadyHeld = added.filter { state.holds[$0] != nil }.reduce(0) { $0 + Int($1.size) }
            let charged = state.pinnedBytes + state.heldBytes + state.reservedBytes
            let bound = usableCapacity // read once: the check and the eviction below must agree
            guard charged - replaced - alreadyHeld + requested <= bound else {
                throw PinRefused(
                    requestedBytes: requested, pinnedBytes: state.pinnedBytes + state.heldBytes,
                    reservedBytes: state.reservedBytes + capacity - bound, capacity: capacity)
            }
            for file in added {
                if let old = state.pins[file.identity] {
                    released += state.unpin(old, keepBlocks: false)
                }
                state.pins[file.identity] = file
                state.pinnedBytes += Int(file.size)
                if state.holds[file] != nil {
                    state.heldBytes -= Int(file.size)
                } else {
                    state.fix(file, blockSize: blockSize)
                }
            }
            // Room for the new pins: reserving nothing evicts down to the bound.
            if state.reserve(0, capacity: bound, evicted: &released) == false {
                preconditionFailure("pinned, held and reserved bytes exceed the capacity that was checked")
            }
        }
    }

    /// Releases the pins of these files (any version); their loaded blocks become
    /// ordinary, most recently used blocks (or stay held). Returns the number of files and bytes unpinned.
    @discardableResult
    public func unpin(_ files: [FileIdentity]) -> (files: Int, bytes: Int) {
        state.withLock { state in
            var count = 0, bytes = 0
            for identity in Set(files) {
                guard let version = state.pins[identity] else { continue }
                _ = state.unpin(version, keepBlocks: true)
                count += 1
                bytes += Int(version.size)
            }
            return (count, bytes)
        }
    }

    /// Releases every pin.
    @discardableResult
    public func unpinAll() -> (files: Int, bytes: Int) {
        unpin(state.withLock { Array($0.pins.keys) })
    }

    /// The versions pinned now.
    public var pinnedVersions: [FileVersion] {
        state.withLock { Array($0.pins.values) }
    }

    /// Whether this version of a file is pinned.
    public func isPinned(_ file: FileVersion) -> Bool {
        state.withLock { $0.isPinned(file) }
    }
}

extension BlockCache.State {
    /// Drops the pin of `version`. A held version keeps its blocks fixed (its charge moves
    /// to the held bytes); otherwise they move to the LRU list (which has room: the pin held
    /// at least their size), or are returned for the caller to release.
    mutating func unpin(_ version: FileVersion, keepBlocks: Bool) -> [Block] {
        pins[version.identity] = nil
        pinnedBytes -= Int(version.size)
        if holds[version] != nil {
            heldBytes += Int(version.size)
            return []
        }
        return unfix(version, keepBlocks: keepBlocks)
    }
}
