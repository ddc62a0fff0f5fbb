import BlockCache
import SourceTree
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A regular source file under a listed path, with what the cache holds of its current version.
public struct ListedFile: Sendable {
    /// Relative to the source root.
    public var path: String
    public var version: FileVersion
    public var residency: Residency
}

// The cache listing (`cachefs ls`): which files' current versions are in memory, and how much
// of each. It looks only at the source's attributes (one fstatat a file; no file is opened) and
// at the cache's index (nothing is loaded, no block moves in the LRU order, no counter moves).
// Paths are resolved beneath the source root as for warm-up.
//
// Threads: any thread but an event loop; the walk blocks on the source.
extension MirrorFilesystem {
    /// The regular files at `path` (a file, or every file beneath a directory), and the directories walked.
    public func cacheListing(atRelativePath path: String) throws(Errno) -> (files: [ListedFile], directories: [String]) {
        let relative = Self.normalized(path)
        let (handle, attributes) = try access.currentRoot().descendant(atRelativePath: relative)
        var found: [(path: String, version: FileVersion)] = []
        var directories: [String] = []
        switch attributes.st_mode & S_IFMT {
        case S_IFREG: found.append((relative, access.identityRule.version(of: attributes, path: Array(relative.utf8))))
        case S_IFDIR: try walk(handle, path: relative, files: &found, directories: &directories)
        default: break // symlinks, fifos, devices: nothing to cache
        }
        let residency = cache.residency(of: found.map(\.version))
        let files = zip(found, residency).map { ListedFile(path: $0.path, version: $0.version, residency: $1) }
        return (files, directories)
    }

    private func walk(
        _ directory: PathHandle, path: String, files: inout [(path: String, version: FileVersion)],
        directories: inout [String]
    ) throws(Errno) {
        directories.append(path)
        // Names first, then one entry at a time: descriptors stay few however deep the tree.
        var entries: [(name: String, type: UInt8)] = []
        let stream = try directory.openDirectory()
        while let entry = try stream.next() {
            if !entry.isDotOrDotDot { entries.append((String(cString: entry.name), entry.type)) }
        }
        for entry in entries {
            let child = path.isEmpty ? entry.name : path + "/" + entry.name
            let type = Int32(entry.type)
            guard type == DT_REG || type == DT_DIR || type == DT_UNKNOWN else { continue } // nothing to cache
            do throws(Errno) {
                // A directory is opened to be walked; anything else is only looked at.
                if type == DT_DIR {
                    let (handle, attributes) = try named(entry.name) { name throws(Errno) in try directory.child(named: name) }
                    if attributes.st_mode & S_IFMT == S_IFDIR { try walk(handle, path: child, files: &files, directories: &directories) }
                    continue
                }
                let attributes = try named(entry.name) { name throws(Errno) in try directory.childAttributes(named: name) }
                switch attributes.st_mode & S_IFMT {
                case S_IFREG:
                    files.append((child, access.identityRule.version(of: attributes, path: Array(child.utf8))))
                case S_IFDIR: // a source that does not tell types in its listings
                    let (handle, _) = try named(entry.name) { name throws(Errno) in try directory.child(named: name) }
                    try walk(handle, path: child, files: &files, directories: &directories)
                default:
                    break
                }
            } catch .noSuchFileOrDirectory {
                continue // removed since the listing
            }
        }
    }

    /// `body` with `name` as a C string, keeping its typed error.
    private func named<Result>(_ name: String, _ body: (UnsafePointer<CChar>) throws(Errno) -> Result) throws(Errno) -> Result {
        try name.withCString { name in Swift.Result { () throws(Errno) in try body(name) } }.get()
    }
}
