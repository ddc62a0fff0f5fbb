/// What names a source file across its versions: what a rewrite in place keeps.
///
/// Which one a source gets is decided once per source, from its file system type
/// (see `IdentityRule` in MirrorFS): the inode where the source keeps inode numbers
/// stable, the path where it hands out new ones (object-store FUSE clients).
public enum FileIdentity: Hashable, Sendable, CustomStringConvertible {
    /// Device and inode numbers: local and network file systems. A file renamed over
    /// the name is another inode, so it is another file whatever its size and times.
    case inode(device: UInt64, inode: UInt64)
    /// The path beneath the source root, as raw bytes: sources whose inode numbers change
    /// each time the kernel forgets a file (s3fs, ossfs, high-level libfuse file systems).
    case path([UInt8])

    public var description: String {
        switch self {
        case .inode(let device, let inode): "dev \(device) ino \(inode)"
        case .path(let path): "path \(String(decoding: path, as: UTF8.self))"
        }
    }
}

/// One version of one source file's content.
///
/// Two reads see the same bytes only if their versions are equal, so a block
/// cached for one version is never returned for another: a file rewritten in
/// place changes its size, mtime or ctime; a file renamed over gets a new inode
/// (where inodes identify files) or new times.
public struct FileVersion: Hashable, Sendable, CustomStringConvertible {
    public var identity: FileIdentity
    public var size: Int64
    public var modified: Timestamp
    /// The status-change time catches rewrites that restore the old mtime (`cp -p`, `rsync -t`).
    public var changed: Timestamp

    public init(identity: FileIdentity, size: Int64, modified: Timestamp, changed: Timestamp) {
        self.identity = identity
        self.size = size
        self.modified = modified
        self.changed = changed
    }

    public var description: String {
        "\(identity) size \(size) mtime \(modified)"
    }
}

/// A point in time with nanosecond resolution, as `struct timespec` carries it.
public struct Timestamp: Hashable, Sendable, CustomStringConvertible {
    public var seconds: Int64
    public var nanoseconds: Int64

    public init(seconds: Int64, nanoseconds: Int64) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// Seconds and nine digits of nanoseconds, as `stat` prints times: 1 s and 5 ns is "1.000000005".
    public var description: String {
        let fraction = String(nanoseconds)
        return "\(seconds)." + String(repeating: "0", count: max(0, 9 - fraction.count)) + fraction
    }
}

/// A block of a file version: bytes `[index * blockSize, (index + 1) * blockSize)`.
public struct BlockKey: Hashable, Sendable, CustomStringConvertible {
    public var file: FileVersion
    public var index: Int64

    public init(file: FileVersion, index: Int64) {
        self.file = file
        self.index = index
    }

    public var description: String { "block \(index) of \(file)" }
}
