/// One version of one source file's content.
///
/// Two reads see the same bytes only if their versions are equal, so a block
/// cached for one version is never returned for another: a file rewritten in
/// place changes its size, mtime or ctime; a file renamed over gets a new inode.
public struct FileVersion: Hashable, Sendable, CustomStringConvertible {
    public var device: UInt64
    public var inode: UInt64
    public var size: Int64
    public var modified: Timestamp
    /// The status-change time catches rewrites that restore the old mtime (`cp -p`, `rsync -t`).
    public var changed: Timestamp

    public init(device: UInt64, inode: UInt64, size: Int64, modified: Timestamp, changed: Timestamp) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modified = modified
        self.changed = changed
    }

    public var description: String {
        "dev \(device) ino \(inode) size \(size) mtime \(modified)"
    }

    /// Whether `other` is the same file with the same size and mtime: what a
    /// write in progress changes. Unlike equality it ignores ctime, which also
    /// moves on chmod, a new hard link or an unlink (a rename over the name), none of which touch the bytes.
    public func hasSameContent(as other: FileVersion) -> Bool {
        device == other.device && inode == other.inode && size == other.size && modified == other.modified
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

    public var description: String { "\(seconds).\(nanoseconds)" }
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
