import BlockCache
import SourceTree

#if canImport(Glibc)
import Glibc
#endif

/// How a source's files are told apart: decided once per source, at mount, from the
/// type of file system the source directory is on.
///
/// - `.inode`: local and network file systems keep a file's inode number for its life,
///   so (device, inode) names it; a file renamed over the name is seen as another file
///   even when its size and times match.
/// - `.path`: FUSE sources are object-store clients (s3fs, ossfs, goofys) or other
///   daemons that may give a file a new inode number each time the kernel forgets it and
///   looks it up again; the path beneath the source root names the file instead, so the
///   cache survives the renumbering. A replaced object is then told only by its size,
///   mtime and ctime: an upload that keeps all three within the source's time resolution
///   (s3fs: whole seconds) cannot be seen by any stat-based client. rclone keeps its
///   inode numbers, but is told apart from s3fs by nothing the kernel shows, so it gets
///   the path rule too, which costs it nothing.
public enum IdentityRule: String, Sendable {
    case inode, path

    public init(fileSystemType: Int) {
        self = fileSystemType == PathHandle.fuseFileSystemType ? .path : .inode
    }

    /// The identity of the file with these attributes at `path` (beneath the source root).
    func identity(of attributes: stat, path: @autoclosure () -> [UInt8]) -> FileIdentity {
        switch self {
        case .inode: .inode(device: UInt64(attributes.st_dev), inode: UInt64(attributes.st_ino))
        case .path: .path(path())
        }
    }

    func version(of attributes: stat, path: @autoclosure () -> [UInt8]) -> FileVersion {
        FileVersion(
            identity: identity(of: attributes, path: path()), size: Int64(attributes.st_size),
            modified: Timestamp(seconds: Int64(attributes.st_mtim.tv_sec), nanoseconds: Int64(attributes.st_mtim.tv_nsec)),
            changed: Timestamp(seconds: Int64(attributes.st_ctim.tv_sec), nanoseconds: Int64(attributes.st_ctim.tv_nsec))
        )
    }
}

extension FileVersion {
    /// Whether a file with these attributes still holds this version's bytes (same file,
    /// size and mtime): checked after each block read, so a block read while the file was
    /// rewritten is refused. Under the path rule the descriptor is known to be this file.
    func isContent(of attributes: stat) -> Bool {
        if case .inode(let device, let inode) = identity,
            device != UInt64(attributes.st_dev) || inode != UInt64(attributes.st_ino)
        {
            return false
        }
        return size == Int64(attributes.st_size)
            && modified == Timestamp(seconds: Int64(attributes.st_mtim.tv_sec), nanoseconds: Int64(attributes.st_mtim.tv_nsec))
    }
}
