import ControlPlane
import Foundation
import FuseBridge
import HTTPServing
import Logging

#if canImport(Glibc)
import Glibc
#endif

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A mount request checked against this machine: paths resolved and free, sizes parsed, limits met.
/// Checking changes nothing (the mount command does what must be done first: `MountCommand.mountSettings`).
extension MountSettings {
    init(_ command: MountCommand) throws {
        guard let sourcePath = command.source, let mountpointPath = command.mountpoint, let capacity = command.capacity else {
            throw UsageError("a mount needs SOURCE, MOUNTPOINT and --capacity") // MountCommand.validate says which
        }
        let source = try Self.existingDirectory(sourcePath, role: "source")
        let mountpoint: String
        if FileDescriptorStore.holdsAMount {
            // systemd kept the mount of a daemon that died: nobody answers it until this daemon does,
            // so anything that asks the mount (stat, statfs) would wait for ever. Its path is taken as given.
            mountpoint = Self.canonicalParent(Self.absolute(mountpointPath))
        } else {
            mountpoint = try Self.existingDirectory(mountpointPath, role: "mountpoint")
        }
        if mountpoint == source || mountpoint.hasPrefix(source == "/" ? "/" : source + "/") {
            throw UsageError("mountpoint \(mountpoint) is inside the source \(source): the mirror would contain itself")
        }
        // A live cachefs mount is taken over by the new daemon (Handover); any other mount is in the way.
        if let entry = MountTable.current().last(where: { $0.mountpoint == mountpoint }), entry.type != "fuse.cachefs" {
            throw UsageError("\(mountpoint) is already a mount point; unmount it first or choose another directory")
        }
        let memory = MemoryLimit.usable()
        if capacity.bytes > memory && !command.force {
            throw UsageError(
                "--capacity \(capacity) exceeds this machine's memory (\(ByteCount.format(memory))); pass --force to use it anyway")
        }
        self.init(source: source, mountpoint: mountpoint, capacity: capacity.bytes)
        blockSize = command.blockSize.bytes
        metadataTimeout = command.metadataTimeout
        sourceTimeout = command.sourceTimeout > 0 ? command.sourceTimeout : nil
        threads = command.threads
        prefetchDepth = command.prefetchDepth
        prefetchThreads = command.prefetchThreads
        prefetchChunk = command.prefetchChunk
        readAhead = command.readAhead.bytes
        passthrough = command.passthrough.isOn
        directIO = command.directIO.isOn
        allowOther = command.allowOther
        controlSocket = command.controlSocket.map(Self.absolute) ?? ControlSocket.defaultPath(forMountpoint: mountpoint)
        logLevel = command.logLevel
        logFile = command.logFile.map(Self.absolute)
        metrics = try command.metrics.map { text in
            guard let address = HostPort(parsing: text) else {
                throw UsageError("--metrics '\(text)' is not HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
            }
            return address
        }
        preload = command.preload
        preloadPin = command.preloadPin
        shutdownGrace = command.shutdownGrace
        try PeerOptions.apply(listen: command.listen, peers: command.peers, tokenFile: command.peerTokenFile, to: &self)
    }

    /// Resolves `path` to a canonical directory path, or explains in one line why it is not one.
    fileprivate static func existingDirectory(_ path: String, role: String) throws -> String {
        guard let resolved = realpath(path, nil) else {
            let reason = String(cString: strerror(errno))
            throw UsageError("\(role) \(path): \(reason)")
        }
        defer { free(resolved) }
        var attributes = stat()
        guard stat(resolved, &attributes) == 0 else {
            throw UsageError("\(role) \(path): \(String(cString: strerror(errno)))")
        }
        guard attributes.st_mode & S_IFMT == S_IFDIR else { throw UsageError("\(role) \(path) is not a directory") }
        return String(cString: resolved)
    }

    /// A daemon killed without unmounting leaves "Transport endpoint is not connected" behind: remove it.
    static func clearStaleMount(at path: String) throws {
        guard let entry = MountTable.current().last(where: { $0.mountpoint == path }), entry.type == "fuse.cachefs" else { return }
        // statfs always asks the daemon, where stat may be answered from cached attributes.
        var statistics = statvfs()
        guard statvfs(path, &statistics) != 0, errno == ENOTCONN else { return }
        FuseServer.detach(path)
        if MountTable.current().contains(where: { $0.mountpoint == path }) {
            throw UsageError("\(path) holds a dead cachefs mount that could not be removed; run fusermount3 -uz \(path)")
        }
    }

    /// `path` (absolute) with its parent resolved (symlinks, `..`), without looking at the last component itself.
    static func canonicalParent(_ path: String) -> String {
        guard path != "/", let slash = path.lastIndex(of: "/") else { return path }
        let parentPath = slash == path.startIndex ? "/" : String(path[..<slash])
        guard let resolved = realpath(parentPath, nil) else { return path }
        defer { free(resolved) }
        let parent = String(cString: resolved)
        return (parent == "/" ? "" : parent) + "/" + path[path.index(after: slash)...]
    }

    /// `path` made absolute and normalized (`.`, `..`, repeated slashes) by its text alone: nothing is looked
    /// up, so a mountpoint nobody answers yet (a restart under systemd) is never asked.
    static func absolute(_ path: String) -> String {
        let joined = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var components: [Substring] = []
        for component in joined.split(separator: "/") where component != "." {
            if component == ".." { _ = components.popLast() } else { components.append(component) }
        }
        return "/" + components.joined(separator: "/")
    }
}
