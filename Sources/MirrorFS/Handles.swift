import BlockCache
import SystemPackage

// The handles the kernel holds (`fh`): what FuseBridge hands out at open and opendir and looks up
// on every read and listing. Each is recorded in the journal before the kernel learns of it and
// cleared after the kernel released it (see OpenHandles).
extension MirrorFilesystem {
    /// `open(node:flags:)`, with the handle the kernel is to send with the open's requests.
    public func openHandle(node id: UInt64, flags: Int32) throws(Errno) -> (file: OpenFile, handle: UInt64) {
        let file = try open(node: id, flags: flags)
        do {
            let handle = try handles.insert(.file(file)) { handle in Self.record(of: file, handle: handle) }
            return (file, handle)
        } catch {
            release(file)
            throw error
        }
    }

    public func file(forHandle handle: UInt64) throws(Errno) -> OpenFile {
        guard case .file(let file) = try handles.target(handle) else { throw .badFileDescriptor }
        return file
    }

    /// The kernel released an open file; a handle it does not know (sent again after a crash) is ignored.
    public func releaseHandle(_ handle: UInt64) {
        if case .file(let file) = handles.remove(handle) { release(file) }
    }

    public func openDirectoryHandle(node id: UInt64) throws(Errno) -> UInt64 {
        let node = try access.node(id)
        let directory = try openDirectory(node: id)
        return try handles.insert(.directory(directory)) { handle in
            OpenHandleRecord(
                handle: handle, kind: .directory, node: id, nodeType: UInt32(node.type), identity: node.identity,
                path: node.relativePath, version: nil, backingID: 0)
        }
    }

    public func directory(forHandle handle: UInt64) throws(Errno) -> OpenDirectory {
        switch try handles.target(handle) {
        case .directory(let directory): return directory
        case .unavailableDirectory: throw .staleNFSFileHandle
        case .file: throw .badFileDescriptor
        }
    }

    public func releaseDirectoryHandle(_ handle: UInt64) {
        _ = handles.remove(handle)
    }

    /// Open handles now (the kernel's view of what is open), for a hand-over's log and tests.
    public var openHandleCount: Int { handles.all.count }

    static func record(of file: OpenFile, handle: UInt64) -> OpenHandleRecord {
        let backingID: Int32
        let kind: OpenHandleRecord.Kind
        switch file.mode {
        case .passthrough(let id): (kind, backingID) = (.passthroughFile, id)
        case .daemonServed: (kind, backingID) = (.daemonServedFile, 0)
        }
        return OpenHandleRecord(
            handle: handle, kind: kind, node: file.opened.id, nodeType: UInt32(file.opened.type),
            identity: file.opened.identity, path: file.source.relativePath, version: file.version, backingID: backingID)
    }
}
