import BlockCache
import Logging
import SourceTree
import Synchronization
import SystemPackage

/// Reads a block's bytes from the source: the seam where tests put a slow, stalling or
/// failing source under the mirror and its prefetch lanes, without FUSE (the way
/// mountpoint-s3 tests its prefetcher against mock and failure clients).
///
/// Called on a source-call thread (or the loading thread when there is no source
/// timeout); a call may outlive its caller's wait, so it must write only to `buffer`.
public protocol SourceBlockReader: Sendable {
    /// Fills `buffer` with the bytes of `file` at `offset`, reading through `reader` (the
    /// file itself, or a prefetch lane's own descriptor of it); returns the bytes read,
    /// fewer only at the end of the file.
    /// - Throws: the read's errno; `ESTALE` if the file's content changed while it was read.
    func read(_ file: SourceFile, through reader: SourceFile, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int
}

/// The production reader: `pread` through the descriptor, then `fstat` to check that the
/// file is still the version it was opened as, so a block read while the file was being
/// rewritten is refused rather than cached under the old version.
public struct DescriptorBlockReader: SourceBlockReader {
    public init() {}

    public func read(_ file: SourceFile, through reader: SourceFile, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        let count = try reader.descriptor.readFully(into: buffer, at: offset)
        guard file.version.isContent(of: try reader.descriptor.attributes()) else { throw .staleNFSFileHandle }
        return count
    }
}

/// One block of a byte range: its index, where it starts, and its length in the file.
struct BlockSpan {
    var index: Int64
    var start: Int64
    var length: Int
}

/// Loads blocks into the cache: from memory if resident, else from a peer, else from
/// the source (under the source timeout). Counts where the loaded bytes came from.
///
/// Threads: any thread but an event loop (FUSE workers, prefetch lanes, warm-up work);
/// a load blocks its caller.
final class BlockLoader: Sendable {
    let cache: BlockCache
    private let session: SourceSession
    private let reader: any SourceBlockReader
    /// Other instances' caches, asked on a miss before the source (see PeerSupport.swift).
    let remote: (any RemoteBlockSource)?
    let counters = Counters()
    private let staging: StagingBuffers
    private let logger: Logger

    final class Counters: Sendable {
        let bytesFromSource = Atomic<UInt64>(0)
        let bytesFromPeers = Atomic<UInt64>(0)
        let errors = Atomic<UInt64>(0)
    }

    /// - Parameter stagedAtOnce: the bytes loads may stage at once (the prefetch lanes' chunks); the
    ///   staging pool keeps that many idle, at least its default.
    init(cache: BlockCache, session: SourceSession, reader: any SourceBlockReader, remote: (any RemoteBlockSource)?,
         stagedAtOnce: Int, logger: Logger) {
        staging = StagingBuffers(idleLimit: max(StagingBuffers.defaultIdleLimit, stagedAtOnce))
        self.cache = cache
        self.session = session
        self.reader = reader
        self.remote = remote
        self.logger = logger
    }

    /// The blocks covering `[offset, end)` of a file of `size` bytes, clipped to the file.
    func spans(from offset: Int64, to end: Int64, size: Int64) -> [BlockSpan] {
        let blockSize = Int64(cache.blockSize)
        let end = min(end, size)
        guard offset >= 0, offset < end else { return [] }
        return stride(from: offset / blockSize, through: (end - 1) / blockSize, by: 1).map { index in
            BlockSpan(index: index, start: index * blockSize, length: Int(min(blockSize, size - index * blockSize)))
        }
    }

    /// The block of `file` at `span`, loaded through `reader` (the file itself by default) on a miss.
    func block(_ span: BlockSpan, of file: SourceFile, reader readerFile: SourceFile? = nil) throws(Errno) -> (block: Block, tier: ReadTier) {
        let key = BlockKey(file: file.version, index: span.index)
        let through = readerFile ?? file
        do {
            return try cache.fetch(for: key, length: span.length) { buffer in
                if let count = loadFromRemote(span.index, of: file, into: buffer) { return (count, .peer) }
                let count = try staging.fill(CollectionOfOne(buffer)) { (target) throws(Errno) in
                    try readSource(file, through: through, into: target, at: span.start)
                }
                counters.bytesFromSource.add(UInt64(count), ordering: .relaxed)
                return (count, .source)
            }
        } catch {
            throw loadFailure(error, of: "\(key)")
        }
    }

    /// Loads the missing blocks of `file` from `first` (at most `count`) through `reader`, with one
    /// source read for the whole run where the cache can give it side by side in memory: what a
    /// prefetch lane asks, so that a source reading ahead per handle (rclone, s3fs) sees long reads.
    /// Peers are asked block by block first; from the first block they lack, the source reads the rest.
    /// - Returns: how many blocks from `first` are now loaded (0: none could be run; load `first` alone).
    func blockRun(from first: Int64, count: Int, of file: SourceFile, reader readerFile: SourceFile) throws(Errno) -> Int {
        let blockSize = cache.blockSize
        do {
            return try cache.loadRun(of: file.version, from: first, count: count) { start, buffers in
                var fromPeers = 0
                for buffer in buffers {
                    guard loadFromRemote(start + Int64(fromPeers), of: file, into: buffer) != nil else { break }
                    fromPeers += 1
                }
                guard fromPeers < buffers.count else { return (buffers.reduce(0) { $0 + $1.memory.count }, .peer) }
                let offset = (start + Int64(fromPeers)) * Int64(blockSize)
                let count = try staging.fill(buffers[fromPeers...]) { (target) throws(Errno) in
                    try readSource(file, through: readerFile, into: target, at: offset)
                }
                counters.bytesFromSource.add(UInt64(count), ordering: .relaxed)
                return (fromPeers * blockSize + count, .source)
            }
        } catch {
            throw loadFailure(error, of: "\(first)... of \(file.version)")
        }
    }

    /// Reads the source into `target` under the source timeout. The call owns the target and the
    /// reader, so a read that outlives the timeout writes only to memory nobody else sees.
    private func readSource(_ file: SourceFile, through readerFile: SourceFile, into target: StagingTarget, at offset: Int64) throws(Errno) -> Int {
        try session.call(.read) { [reader] () throws(Errno) in
            try reader.read(file, through: readerFile, into: target.memory, at: offset)
        }
    }

    /// Counts and logs a failed load, and returns what its reader gets: the source's errno, or
    /// EIO when the source's mount is gone or the failure is not an errno.
    private func loadFailure(_ error: any Error, of blocks: String) -> Errno {
        counters.errors.add(1, ordering: .relaxed)
        guard let error = error as? Errno else {
            logger.error("source read failed", metadata: ["block": "\(blocks)", "error": "\(error)"])
            return .ioError
        }
        let cause = error == .staleNFSFileHandle ? "the file changed while it was read" : error.meansSourceGone ? "the source's mount is gone" : "\(error)"
        logger.warning("source read failed", metadata: ["block": "\(blocks)", "cause": "\(cause)"])
        return error.meansSourceGone ? .ioError : error
    }

    /// Asks the peers for a block of a file opened with a known path; nil to read the source.
    private func loadFromRemote(_ index: Int64, of file: SourceFile, into buffer: BlockBuffer) -> Int? {
        guard let remote, !file.relativePath.isEmpty else { return nil }
        let request = RemoteBlockRequest(
            relativePath: file.relativePath, fileSize: file.version.size, modified: file.version.modified,
            blockSize: cache.blockSize, index: index
        )
        let length = buffer.memory.count
        // A peer's short answer (0: none) leaves the block to the source, which writes it again in full.
        guard let count = try? staging.fill(CollectionOfOne(buffer), read: { target in remote.readBlock(request, into: target.memory) ?? 0 }),
              count == length
        else { return nil }
        counters.bytesFromPeers.add(UInt64(count), ordering: .relaxed)
        return count
    }
}
