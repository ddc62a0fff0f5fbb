import BlockCache
import CLinux
import SourceTree
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A node as the kernel knows it, for the daemon that takes over from this one.
public struct NodeRecord: Sendable, Equatable {
    public var id: UInt64
    /// The parent's ID; 0 for the root.
    public var parent: UInt64
    /// The name in the parent, without a terminating NUL.
    public var name: [UInt8]
    public var identity: FileIdentity
    public var type: UInt32
    /// Lookups the kernel has not forgotten; 0 for a node known only as another's parent.
    public var lookups: UInt64
    public var superseded: Bool
    /// The version last opened (whether the kernel's page cache of it may be kept).
    public var lastVersion: FileVersion?

    public init(
        id: UInt64, parent: UInt64, name: [UInt8], identity: FileIdentity, type: UInt32, lookups: UInt64,
        superseded: Bool, lastVersion: FileVersion?
    ) {
        self.id = id
        self.parent = parent
        self.name = name
        self.identity = identity
        self.type = type
        self.lookups = lookups
        self.superseded = superseded
        self.lastVersion = lastVersion
    }
}

/// What a mirror took over from its predecessor.
public struct InheritanceReport: Sendable, Equatable {
    public var nodes = 0
    public var handles = 0
    /// Open files whose source file could not be opened again (gone, or another file now):
    /// what is cached of their version is still served, a miss is ESTALE.
    public var filesUnavailable = 0
    /// Passthrough opens whose memory file the cache did not take: the kernel reads them on; nothing here touches them.
    public var passthroughWithoutMemory = 0

    public init() {}
}

// Inheritance: what the kernel holds of this mirror (node IDs and their lookups, open files and
// directories with their handles, passthrough backing ids), handed from one daemon to the next.
// After a hand-over the predecessor's whole node table comes along; after a crash only what the
// journal kept: the open handles, whose nodes come back from the paths recorded with them, and
// how far node IDs went. A node the successor does not know answers ESTALE, and the kernel looks
// its name up again from a node it knows (the root at least).
extension MirrorFilesystem {
    /// Every node the kernel holds and each one's ancestors, parents before children, and the next free ID.
    public func exportNodes() -> (nodes: [NodeRecord], nextID: UInt64) {
        let (known, nextID) = access.nodes.withLock { ($0.known, $0.nextID) }
        var lookups: [UInt64: UInt64] = [:]
        for (node, count) in known { lookups[node.id] = count }
        var emitted = Set<UInt64>([NodeTable.rootID])
        var records: [NodeRecord] = []
        func emit(_ node: Node) {
            guard !emitted.contains(node.id) else { return }
            emitted.insert(node.id)
            let place = node.location
            if let place { emit(place.parent) }
            records.append(
                NodeRecord(
                    id: node.id, parent: place?.parent.id ?? 0, name: place.map { $0.name.dropLast().map { UInt8(bitPattern: $0) } } ?? [],
                    identity: node.identity, type: UInt32(node.type), lookups: lookups[node.id] ?? 0, superseded: node.superseded,
                    lastVersion: node.opens.withLock { $0.lastVersion }))
        }
        for (node, _) in known { emit(node) }
        return (records, nextID)
    }

    /// Takes over a predecessor's nodes (nil after a crash) and open handles. Call after the cache
    /// adopted the memory files (passthrough opens claim their holds) and before serving.
    /// - Parameters:
    ///   - nextNodeID: IDs from here on are free (the predecessor may have used every one below).
    ///   - generations: the generation each journal slot last had, so new handles never repeat one.
    public func inherit(
        nodes: [NodeRecord]?, nextNodeID: UInt64, handles records: [OpenHandleRecord],
        generations: [Int: UInt32]
    ) -> InheritanceReport {
        var report = InheritanceReport()
        let root = access.nodes.withLock { $0.root }
        var byID: [UInt64: Node] = [NodeTable.rootID: root]
        for record in nodes ?? [] where record.id != NodeTable.rootID {
            let place = byID[record.parent].map { Node.Place(parent: $0, name: record.name.map { CChar(bitPattern: $0) } + [0]) }
            let node = Node(id: record.id, identity: record.identity, type: mode_t(record.type), place: place)
            if record.superseded { node.supersede() }
            if let version = record.lastVersion { node.opens.withLock { $0.lastVersion = version } }
            byID[record.id] = node
            access.nodes.withLock { $0.restore(node, lookups: record.lookups) }
            if record.lookups > 0 { report.nodes += 1 }
        }
        access.nodes.withLock { $0.startIDs(after: max(nextNodeID, 1) - 1) }

        var restored: [(handle: UInt64, target: HandleTarget)] = []
        for record in records {
            let node: Node
            if let known = byID[record.node] {
                node = known
            } else {
                node = rebuild(record, from: root)
                byID[record.node] = node
                access.nodes.withLock { $0.restore(node, lookups: 1) }
                report.nodes += 1
            }
            report.handles += 1
            guard let version = record.version else {
                let stream = try? access.recovering { () throws(Errno) in try self.access.handle(of: node).openDirectory() }
                restored.append((record.handle, stream.map { HandleTarget.directory(OpenDirectory(stream: $0)) } ?? .unavailableDirectory))
                continue
            }
            let source: SourceFile
            let available: Bool
            if let reopened = try? access.reopen(access.handle(of: node), relativePath: record.path, as: version) {
                (source, available) = (reopened, true)
            } else {
                (source, available) = (access.unavailable(version, relativePath: record.path), false)
                report.filesUnavailable += 1
            }
            let passthrough = record.kind == .passthroughFile
            node.opens.withLock { opens in
                if opens.lastVersion == nil { opens.lastVersion = version }
                if !passthrough {
                    opens.daemonServed += 1
                } else if opens.passthrough != nil {
                    opens.passthrough!.opens += 1
                } else {
                    let hold = cache.claimInheritedHold(version)
                    if hold == nil { report.passthroughWithoutMemory += 1 }
                    opens.passthrough = NodeOpens.Passthrough(version: version, hold: hold, backingID: record.backingID, opens: 1)
                }
            }
            // The kernel was answered at open by the predecessor: the mode's flags are only what it recorded.
            let mode: OpenMode =
                passthrough ? .passthrough(backingID: record.backingID) : .daemonServed(keepKernelCache: false, directIO: false)
            let file = OpenFile(
                node: node, source: source, prefetch: !passthrough && available ? prefetchStream(for: source) : nil,
                mode: mode, versionChanged: false)
            restored.append((record.handle, .file(file)))
        }
        handles.restore(restored, generations: generations)
        return report
    }

    /// A node the kernel holds open but this daemon does not know (after a crash), found again from the
    /// root by the path recorded at open: its ancestors are looked up afresh (known only as parents).
    private func rebuild(_ record: OpenHandleRecord, from root: Node) -> Node {
        var parent = root
        var prefix: [UInt8] = []
        let components = record.path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
        for component in components.dropLast() {
            let name = component.map { CChar(bitPattern: $0) } + [0]
            prefix += (prefix.isEmpty ? [] : [UInt8(ascii: "/")]) + component
            let attributes = try? access.handle(of: parent).child(named: name).attributes
            let identity = attributes.map { access.identityRule.identity(of: $0, path: prefix) } ?? .path(prefix)
            parent = Node(id: 0, identity: identity, type: S_IFDIR, place: Node.Place(parent: parent, name: name))
        }
        let name = (components.last.map(Array.init) ?? []).map { CChar(bitPattern: $0) } + [0]
        return Node(
            id: record.node, identity: record.identity, type: mode_t(record.nodeType), place: Node.Place(parent: parent, name: name))
    }
}

extension SourceAccess {
    /// Opens a source file again for an inherited open, pinned to the version it was opened at: if the
    /// file changed since, its cached blocks are still served and a miss reads ESTALE (the block reader's check).
    func reopen(_ handle: PathHandle, relativePath: [UInt8], as version: FileVersion) throws(Errno) -> SourceFile {
        let descriptor = try call(.open) { [readsBypassPageCache] () throws(Errno) in
            try handle.openForReading(bypassingPageCache: readsBypassPageCache)
        }
        return SourceFile(handle: handle, descriptor: descriptor, version: version, relativePath: relativePath)
    }

    /// Stands in for the source of an inherited open whose file is gone: an empty memory file, whose
    /// size and identity never match `version`, so every block not in memory is refused with ESTALE.
    func unavailable(_ version: FileVersion, relativePath: [UInt8]) -> SourceFile {
        let placeholder = cachefs_memfd_create("cachefs-unavailable-source", UInt32(CACHEFS_MFD_CLOEXEC))
        return SourceFile(
            handle: nodes.withLock { $0.rootHandle }, descriptor: FileDescriptor(rawValue: placeholder), version: version,
            relativePath: relativePath)
    }
}
