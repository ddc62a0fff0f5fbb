import BlockCache
import PeerTransport
import SourceTree
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The mirror's side of the peer server: blocks in memory, holdings, and loads as owner.
///
/// A request names a file by path and version. The path is resolved beneath the source root (no
/// `..`, absolute path or symlink), must be a regular file, and its current size and mtime must be
/// the requested ones; blocks are then looked up under the file's full version (identity, size,
/// mtime, ctime), so only blocks of exactly that file as it is now (or as it was checked within the
/// last second) can answer. Called on server threads, never FUSE ones.
extension MirrorFilesystem: PeerBlockProvider {
    public func residentBlocks(_ range: PeerBlockRange, checkingSource: Bool) -> PeerResidency<[Block]> {
        switch version(of: range.file, checkingSource: checkingSource) {
        case .current(let version): .current(cache.residentRun(of: version, from: range.first, count: range.count))
        case .otherVersion: .otherVersion
        case .undetermined: .undetermined
        }
    }

    public func holdings(of file: PeerFile, checkingSource: Bool) -> PeerResidency<BlockBitmap> {
        switch version(of: file, checkingSource: checkingSource) {
        case .current(let version):
            var bitmap = BlockBitmap(blockCount: file.blockCount)
            cache.forEachResidentBlock(of: version) { bitmap[$0] = true }
            return .current(bitmap)
        case .otherVersion: return .otherVersion
        case .undetermined: return .undetermined
        }
    }

    /// Loads the run from this instance's source with one read where the cache can lay it side by
    /// side (blocks other loads have in flight are waited for, not read again), then collects the
    /// blocks from the first on. Never asks peers.
    public func loadForPeer(_ range: PeerBlockRange) -> PeerLoadAnswer {
        guard case .current(let version) = self.version(of: range.file, checkingSource: true) else { return .otherVersion }
        let source: SourceFile
        do {
            source = try peerLoadSources.file(version, path: range.file.path) { () throws(Errno) in
                let (handle, _) = try access.currentRoot().descendant(atRelativePath: range.file.path)
                return try access.open(handle, relativePath: range.file.path)
            }
        } catch {
            return .failed("\(error)")
        }
        guard source.version == version else { return .otherVersion } // changed between the stat and the open
        // What this call read from the source: the run it loaded. Blocks it then waits for were loaded by others.
        var bytesFromSource = 0
        if let loaded = try? loader.blockRun(from: range.first, count: range.count, of: source, through: source, askingFleet: false) {
            bytesFromSource = range.prefix(loaded).byteCount
        }
        var blocks: [Block] = []
        for span in loader.spans(
            from: range.first * Int64(cache.blockSize), to: range.indices.upperBound * Int64(cache.blockSize), size: version.size)
        {
            do {
                let (block, _) = try loader.block(span, of: source, askingFleet: false)
                guard block.count == span.length else { break } // the source ended early
                blocks.append(block)
            } catch {
                if blocks.isEmpty { return .failed("\(error)") }
                break
            }
        }
        return .blocks(blocks, bytesFromSource: bytesFromSource)
    }

    /// The file's version here if it is the one `file` names. Without `checkingSource`, only the version
    /// checked within the last second, and only for a request naming that very version, answers: a peer
    /// streaming a file asks for its blocks one run after another, and a stat through an object-store
    /// mount can cost a network round trip. A request naming any other version checks the source again.
    func version(of file: PeerFile, checkingSource: Bool) -> PeerResidency<FileVersion> {
        guard file.blockSize == cache.blockSize else { return .otherVersion }
        if let recent = checkedVersions.version(of: file.path), recent.size == file.size,
            recent.modified.nanosecondsSinceEpoch == file.modifiedNanoseconds
        {
            return .current(recent)
        }
        guard checkingSource else { return .undetermined }
        guard let root = try? access.currentRoot(), // reopened if the source's mount came back
            let (_, attributes) = try? root.descendant(atRelativePath: file.path),
            attributes.st_mode & S_IFMT == S_IFREG
        else { return .otherVersion }
        let version = access.identityRule.version(of: attributes, path: file.path)
        checkedVersions.record(version, of: file.path)
        return version.size == file.size && version.modified.nanosecondsSinceEpoch == file.modifiedNanoseconds
            ? .current(version) : .otherVersion
    }
}

/// File versions recently read from the source on a peer's behalf, each trusted for `freshness`.
final class RecentlyCheckedVersions: Sendable {
    private struct Entry {
        var version: FileVersion
        var checkedAt: ContinuousClock.Instant
    }

    /// Guards the table. Lock order: a leaf.
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

/// Source files opened to load blocks for peers, kept open while peers keep asking: an owner reads
/// its stripes of a file run after run, and opening through an object-store mount can cost a request.
final class PeerLoadSources: Sendable {
    private struct Entry {
        var file: SourceFile
        var lastUse: ContinuousClock.Instant
    }

    /// Guards the open files. Lock order: a leaf; opening and closing run outside it.
    private let files = Mutex<[FileVersion: Entry]>([:])
    private let capacity: Int

    init(capacity: Int = 32) { self.capacity = capacity }

    /// The open file of `version`, opened with `open` if none is kept.
    func file(_ version: FileVersion, path: [UInt8], open: () throws(Errno) -> SourceFile) throws(Errno) -> SourceFile {
        let now = ContinuousClock.now
        if let kept = files.withLock({ files -> SourceFile? in
            files[version]?.lastUse = now
            return files[version]?.file
        }) {
            return kept
        }
        let opened = try open()
        var dropped: SourceFile? // closed outside the lock
        defer { _ = dropped }
        return files.withLock { files in
            if let raced = files[version] { return raced.file }
            if files.count >= capacity, let oldest = files.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
                dropped = files.removeValue(forKey: oldest)?.file
            }
            guard opened.version == version else { return opened } // not what was asked for: not kept
            files[version] = Entry(file: opened, lastUse: now)
            return opened
        }
    }
}
