#if canImport(Glibc)
import Glibc
#endif
import BlockCache
import SourceTree
import Synchronization
import SystemPackage

/// A block as named across instances: by path below the source root and
/// version (size, mtime), not by this machine's device and inode numbers.
public struct RemoteBlockRequest: Sendable, Equatable {
    /// Path relative to the source root, as raw bytes.
    public var relativePath: [UInt8]
    public var fileSize: Int64
    public var modified: Timestamp
    public var blockSize: Int
    public var index: Int64

    public init(relativePath: [UInt8], fileSize: Int64, modified: Timestamp, blockSize: Int, index: Int64) {
        self.relativePath = relativePath
        self.fileSize = fileSize
        self.modified = modified
        self.blockSize = blockSize
        self.index = index
    }
}

/// Where a missing block is looked for before the source: other instances' caches.
///
/// Called on the thread loading the block (a FUSE worker or a prefetch thread),
/// which blocks until it returns; an implementation must bound that wait.
public protocol RemoteBlockSource: Sendable {
    /// Fills all of `buffer` (the block's exact length) and returns its length, or
    /// returns nil (whatever it wrote to `buffer`) for the caller to read the source.
    func readBlock(_ request: RemoteBlockRequest, into buffer: UnsafeMutableRawBufferPointer) -> Int?
}

extension MirrorFilesystem {
    /// The resident block a peer asks for, or nil; never reads the source's data.
    ///
    /// The path is resolved beneath the source root (no `..`, absolute path or
    /// symlink), must be a regular file, and its current size and mtime must be
    /// the requested ones; the block is then looked up under the file's full
    /// version (device, inode, size, mtime, ctime), so only a block of exactly
    /// that file as it is now (or as it was checked within the last second) can
    /// answer. Called on a server thread, not a FUSE one.
    public func residentBlock(for request: RemoteBlockRequest) -> Block? {
        // A peer streaming a file asks for its blocks one after another: one check of
        // the source per file and second, not one per block (a stat through an object-store
        // mount can cost a network round trip). Only a remembered version the request
        // names is trusted; any other answer checks the source again.
        switch residentBlockWithoutCheckingSource(for: request) {
        case .resident(let block): return block
        case .absent: return nil
        case .undetermined: break
        }
        guard let root = try? session.currentRoot(), // reopened if the source's mount came back
              let (_, attributes) = try? root.descendant(atRelativePath: request.relativePath),
              attributes.st_mode & S_IFMT == S_IFREG
        else { return nil }
        let version = session.identityRule.version(of: attributes, path: request.relativePath)
        checkedVersions.record(version, of: request.relativePath)
        guard version.size == request.fileSize, version.modified == request.modified else { return nil }
        return cache.residentBlock(for: BlockKey(file: version, index: request.index))
    }

    /// What `residentBlock(for:)` answers when it can tell without any I/O: when the
    /// request names the version of its file checked within the last second. Cheap
    /// enough for a network event loop.
    public func residentBlockWithoutCheckingSource(for request: RemoteBlockRequest) -> ResidencyAnswer {
        guard request.blockSize == cache.blockSize else { return .absent }
        guard let recent = checkedVersions.version(of: request.relativePath),
              recent.size == request.fileSize, recent.modified == request.modified
        else { return .undetermined }
        return cache.residentBlock(for: BlockKey(file: recent, index: request.index)).map(ResidencyAnswer.resident) ?? .absent
    }
}

/// File versions recently read from the source on a peer's behalf, each trusted for `freshness`.
final class RecentlyCheckedVersions: Sendable {
    private struct Entry {
        var version: FileVersion
        var checkedAt: ContinuousClock.Instant
    }

    private let entries = Mutex<[[UInt8]: Entry]>([:])
    private let freshness: Duration
    private let capacity: Int

    init(freshness: Duration = .seconds(1), capacity: Int = 4096) {
        self.freshness = freshness
        self.capacity = capacity
    }

    func version(of path: [UInt8]) -> FileVersion? {
        let now = ContinuousClock.now
        return entries.withLock { entries in
            guard let entry = entries[path], now - entry.checkedAt < freshness else { return nil }
            return entry.version
        }
    }

    func record(_ version: FileVersion, of path: [UInt8]) {
        let now = ContinuousClock.now
        entries.withLock { entries in
            // Stale entries are useless; dropping them all keeps the table bounded without an LRU.
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[path] = Entry(version: version, checkedAt: now)
        }
    }
}
