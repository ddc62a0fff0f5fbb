import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An open source directory, read entry by entry with resumable offsets.
///
/// Not thread safe: FUSE serializes readdir calls on one directory handle, and
/// the owner must do the same.
public final class DirectoryStream: @unchecked Sendable {
    private let stream: OpaquePointer
    /// The offset `next()` reads from, as `telldir` reports it.
    private var position: Int = 0

    init(_ stream: OpaquePointer) { self.stream = stream }

    deinit { closedir(stream) }

    public struct Entry {
        /// The entry's name, valid until the next call on the stream.
        public var name: UnsafePointer<CChar>
        public var inode: UInt64
        /// The `DT_*` type, or `DT_UNKNOWN`.
        public var type: UInt8
        /// The offset to resume reading after this entry.
        public var nextOffset: Int
    }

    /// Positions the stream at an offset returned earlier as `nextOffset` (0 for the start).
    public func seek(to offset: Int) {
        guard offset != position else { return }
        if offset == 0 { rewinddir(stream) } else { seekdir(stream, offset) }
        position = offset
    }

    private static let nameOffset = MemoryLayout<dirent>.offset(of: \.d_name)!

    public func next() throws(Errno) -> Entry? {
        errno = 0
        guard let entry = readdir(stream) else {
            if errno != 0 { throw Errno(rawValue: errno) }
            return nil
        }
        position = telldir(stream)
        // The name lives inside the dirent, which stays valid until the next readdir.
        let name = UnsafeRawPointer(entry).advanced(by: Self.nameOffset).assumingMemoryBound(to: CChar.self)
        return Entry(name: name, inode: UInt64(entry.pointee.d_ino), type: entry.pointee.d_type, nextOffset: position)
    }
}
