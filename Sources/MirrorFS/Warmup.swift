import BlockCache
import SourceTree
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A regular source file found for warm-up, by its path relative to the source root.
public struct WarmFile: Sendable, Equatable {
    public var path: String
    public var version: FileVersion

    public var size: Int64 { version.size }
}

// Warm-up loads files into the cache ahead of readers, through the same
// loader as reads and prefetch lanes: a warm load and a reader's miss on one
// block share one load, and a warm-up asks holders and owners in the fleet
// run by run, as a lane does. Paths come from outside the kernel (the control socket, the
// command line), so they are resolved only beneath the source root
// (`PathHandle.descendant`): no `..`, no absolute paths, no symlinks.
//
// Threads: any thread but an event loop; these calls block on source I/O.
extension MirrorFilesystem {
    /// The regular files at `path` (a file, or every file beneath a directory),
    /// sorted by path. Symlinks and special files are skipped.
    public func warmCandidates(atRelativePath path: String) throws(Errno) -> [WarmFile] {
        let relative = Self.normalized(path)
        let (handle, attributes) = try access.currentRoot().descendant(atRelativePath: relative)
        var files: [WarmFile] = []
        try collect(handle, attributes: attributes, path: relative, into: &files)
        return files.sorted { $0.path < $1.path }
    }

    /// Every regular file whose relative path matches one of `patterns` (fnmatch(3);
    /// `*` also matches `/`), walking only beneath each pattern's literal directory prefix.
    public func files(matching patterns: [String]) throws(Errno) -> [WarmFile] {
        var found: [String: WarmFile] = [:]
        for pattern in patterns {
            let normalized = Self.normalized(pattern)
            var candidates: [WarmFile]
            do {
                candidates = try warmCandidates(atRelativePath: Self.literalDirectory(of: normalized))
            } catch .noSuchFileOrDirectory {
                candidates = []
            }
            for file in candidates where fnmatch(normalized, file.path, 0) == 0 { found[file.path] = file }
        }
        return found.values.sorted { $0.path < $1.path }
    }

    /// Loads `[offset, offset + length)` of the file at `path` into the cache and
    /// returns the file's version and the bytes of it now covered.
    ///
    /// The file is opened afresh: if it changed since it was listed, the new
    /// version is loaded (and is not pinned unless pinned again).
    public func warm(relativePath path: String, offset: Int64, length: Int64) throws(Errno) -> (version: FileVersion, bytes: Int64) {
        let (handle, attributes) = try access.currentRoot().descendant(atRelativePath: Self.normalized(path))
        guard attributes.st_mode & S_IFMT == S_IFREG else { throw .isDirectory }
        let source = try access.open(handle, relativePath: Array(Self.normalized(path).utf8))
        let start = max(0, offset), end = min(source.version.size, offset + max(0, length))
        let spans = loader.spans(from: start, to: end, size: source.version.size)
        var covered = start
        var position = 0
        while position < spans.count {
            // A run of blocks at once where the cache keeps them side by side (one request to a peer, one
            // source read); a block it would not keep, alone.
            let run = try loader.blockRun(
                from: spans[position].index, count: min(Self.warmRunBlocks, spans.count - position), of: source, through: source)
            let loaded = run > 0 ? cache.residentRun(of: source.version, from: spans[position].index, count: run) : []
            let blocks = loaded.count == run && run > 0 ? loaded : [try loader.block(spans[position], of: source).block]
            for block in blocks {
                covered = spans[position].start + Int64(block.count)
                // The source ended early.
                if block.count < spans[position].length { return (source.version, max(0, min(end, covered) - start)) }
                position += 1
            }
        }
        return (source.version, max(0, min(end, covered) - start))
    }

    /// Blocks a warm-up asks for at once, at most (a run is cut where the fleet serves it in pieces).
    static let warmRunBlocks = 16

    /// Pins these files' versions in the cache, or none if they do not fit.
    public func pin(_ files: [WarmFile]) throws(PinRefused) {
        try cache.pin(files.map(\.version))
        handles.journal?.recordPins(cache.pinnedVersions)
    }

    /// Unpins every file at or beneath `path`, whatever version is pinned. Returns the files and bytes released.
    public func unpin(atRelativePath path: String) throws(Errno) -> (files: Int, bytes: Int) {
        let released = cache.unpin(try warmCandidates(atRelativePath: path).map(\.version.identity))
        handles.journal?.recordPins(cache.pinnedVersions)
        return released
    }

    private func collect(_ handle: PathHandle, attributes: stat, path: String, into files: inout [WarmFile]) throws(Errno) {
        switch attributes.st_mode & S_IFMT {
        case S_IFREG:
            files.append(WarmFile(path: path, version: access.identityRule.version(of: attributes, path: Array(path.utf8))))
        case S_IFDIR:
            // Names first, then one child at a time: descriptors stay few however large the directory.
            var names: [String] = []
            let stream = try handle.openDirectory()
            while let entry = try stream.next() {
                if !entry.isDotOrDotDot { names.append(String(cString: entry.name)) }
            }
            for name in names {
                let lookup = name.withCString { name in Result { () throws(Errno) in try handle.child(named: name) } }
                let child: (handle: PathHandle, attributes: stat)
                switch lookup {
                case .success(let found): child = found
                case .failure(.noSuchFileOrDirectory): continue // removed since the listing
                case .failure(let error): throw error
                }
                try collect(child.handle, attributes: child.attributes, path: path.isEmpty ? name : path + "/" + name, into: &files)
            }
        default:
            break // symlinks, fifos, devices: nothing to cache
        }
    }

    /// Without leading, trailing or repeated slashes, and without `.` components: "" is the root.
    static func normalized(_ path: String) -> String {
        path.split(separator: "/").filter { $0 != "." }.joined(separator: "/")
    }

    /// The directories of a glob before its first component with a wildcard.
    static func literalDirectory(of pattern: String) -> String {
        let components = pattern.split(separator: "/")
        let literal = components.dropLast().prefix { !$0.contains(where: { "*?[\\".contains($0) }) }
        return literal.joined(separator: "/")
    }
}
