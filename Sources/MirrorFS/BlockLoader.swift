import BlockCache
import Logging
import PeerTransport
import Reporting
import SourceTree
import Synchronization
import SystemPackage

/// How a block's bytes are read from the source: the seam where tests put a slow, stalling or
/// failing source under the mirror and its prefetch lanes, without FUSE (the way
/// mountpoint-s3 tests its prefetcher against mock and failure clients).
///
/// Called on a source-call thread (or the loading thread when there is no source
/// timeout); a call may outlive its caller's wait, so it must write only to `buffer`.
public protocol SourceBlockIO: Sendable {
    /// Fills `buffer` with the bytes of `file` at `offset`, read through `opened` (the file
    /// itself, or a prefetch lane's own opening of it); returns the bytes read, fewer only at
    /// the end of the file.
    /// - Throws: the read's errno; `ESTALE` if the file's content changed while it was read.
    func read(_ file: SourceFile, through opened: SourceFile, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno)
        -> Int
}

/// The production source I/O: `pread` through the descriptor, then `fstat` to check that the
/// file is still the version it was opened as, so a block read while the file was being
/// rewritten is refused rather than cached under the old version.
public struct DescriptorBlockIO: SourceBlockIO {
    public init() {}

    public func read(_ file: SourceFile, through opened: SourceFile, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64)
        throws(Errno) -> Int
    {
        let count = try opened.descriptor.readFully(into: buffer, at: offset)
        guard file.version.isContent(of: try opened.descriptor.attributes()) else { throw .staleNFSFileHandle }
        return count
    }
}

/// One block of a byte range: its index, where it starts, and its length in the file.
struct BlockSpan {
    var index: Int64
    var start: Int64
    var length: Int
}

/// Loads blocks into the cache: from memory if resident, else from the fleet (a peer holding the
/// block, or its owner), else from the source (under the source timeout). Counts where the loaded
/// bytes came from.
///
/// Threads: any thread but an event loop (FUSE workers, prefetch lanes, warm-up work, loads for
/// peers); a load blocks its caller.
final class BlockLoader: Sendable {
    let cache: BlockCache
    private let access: SourceAccess
    private let blockIO: any SourceBlockIO
    /// The other instances, asked on a miss before the source (see PeerTransport's `PeerFleet`).
    let fleet: (any BlockFleet)?
    let counters = Counters()
    private let staging: StagingBuffers
    /// The checksum peers are sent, computed as a source load stages each block, when this instance serves peers.
    private let peerChecksum: (@Sendable (UnsafeRawBufferPointer) -> UInt32)?
    private let logger: Logger

    final class Counters: Sendable {
        let bytesFromSource = Atomic<UInt64>(0)
        let bytesFromPeers = Atomic<UInt64>(0)
        let errors = Atomic<UInt64>(0)
    }

    /// - Parameter stagedAtOnce: the bytes loads may stage at once (the prefetch lanes' chunks); the
    ///   staging pool keeps that many idle, at least its default.
    /// - Parameter servesPeers: whether peers are sent these blocks: their checksums are then computed as they load.
    init(
        cache: BlockCache, access: SourceAccess, blockIO: any SourceBlockIO, fleet: (any BlockFleet)?,
        servesPeers: Bool, stagedAtOnce: Int, logger: Logger
    ) {
        staging = StagingBuffers(idleLimit: max(StagingBuffers.defaultIdleLimit, stagedAtOnce))
        peerChecksum = servesPeers ? Self.checksum : nil
        self.cache = cache
        self.access = access
        self.blockIO = blockIO
        self.fleet = fleet
        self.logger = logger
    }

    /// The CRC-32C a peer server sends with a block.
    @Sendable private static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { CRC32CChecksum(of: bytes).value }

    /// The blocks covering `[offset, end)` of a file of `size` bytes, clipped to the file.
    func spans(from offset: Int64, to end: Int64, size: Int64) -> [BlockSpan] {
        let blockSize = Int64(cache.blockSize)
        let end = min(end, size)
        guard offset >= 0, offset < end else { return [] }
        return stride(from: offset / blockSize, through: (end - 1) / blockSize, by: 1).map { index in
            BlockSpan(index: index, start: index * blockSize, length: Int(min(blockSize, size - index * blockSize)))
        }
    }

    /// The block of `file` at `span`, loaded through `opened` (the file itself by default) on a miss.
    /// - Parameter askingFleet: false for a load on behalf of a peer, which reads only this instance's source.
    func block(_ span: BlockSpan, of file: SourceFile, through opened: SourceFile? = nil, askingFleet: Bool = true) throws(Errno) -> (
        block: Block, tier: ReadTier
    ) {
        let key = BlockKey(file: file.version, index: span.index)
        let name = askingFleet ? fleetName(of: file) : nil
        do {
            return try cache.fetch(for: key, length: span.length) { buffer in
                try load([buffer], from: span.index, of: file, through: opened ?? file, name: name)
            }
        } catch {
            throw loadFailure(error, of: "\(key)")
        }
    }

    /// Loads the missing blocks of `file` from `first` (at most `count`) through `opened`, where the
    /// cache can lay them side by side in memory: what a prefetch lane asks, so that the fleet gets one
    /// request for a run and a source reading ahead per handle (rclone, s3fs) sees long reads.
    /// - Returns: how many blocks from `first` are now loaded (0: none could be run; load `first` alone).
    func blockRun(from first: Int64, count: Int, of file: SourceFile, through opened: SourceFile, askingFleet: Bool = true) throws(Errno)
        -> Int
    {
        let name = askingFleet ? fleetName(of: file) : nil
        // Claims only what one exchange with the fleet serves (see `BlockFleet.segment`); the lane asks again for the rest.
        let count = name.flatMap { name in fleet?.segment(of: name.blocks(first, count: count)) } ?? count
        do {
            return try cache.loadRun(of: file.version, from: first, count: count) { start, buffers in
                try load(buffers, from: start, of: file, through: opened, name: name)
            }
        } catch {
            throw loadFailure(error, of: "\(first)... of \(file.version)")
        }
    }

    /// Fills adjacent blocks from `start`: what the fleet sends, the rest from the source. Returns the
    /// bytes filled from the first block on (fewer only where the source ended early), and the slowest tier.
    private func load(
        _ buffers: [BlockBuffer], from start: Int64, of file: SourceFile, through opened: SourceFile,
        name: PeerFile?
    ) throws(Errno) -> (count: Int, tier: ReadTier) {
        var position = 0, filled = 0, tier = ReadTier.peer
        while position < buffers.count {
            let index = start + Int64(position)
            var fromSource = buffers.count - position
            if let fleet, let name {
                let rest = buffers[position...]
                switch fleet.load(name.blocks(index, count: rest.count), into: rest.map(\.receiveTarget)[...]) {
                case .received(let blocks, let checksums):
                    for (buffer, checksum) in zip(rest, checksums) { buffer.noteDigest(checksum) }
                    let bytes = rest.prefix(blocks).reduce(0) { $0 + $1.memory.count }
                    counters.bytesFromPeers.add(UInt64(bytes), ordering: .relaxed)
                    filled += bytes
                    position += blocks
                    continue
                case .readSource(let blocks):
                    fromSource = blocks
                }
            }
            let run = buffers[position..<(position + fromSource)]
            let count = try staging.fill(run, digest: peerChecksum) { (target) throws(Errno) in
                try readSource(file, through: opened, into: target, at: index * Int64(cache.blockSize))
            }
            counters.bytesFromSource.add(UInt64(count), ordering: .relaxed)
            filled += count
            tier = .source
            guard count == run.reduce(0, { $0 + $1.memory.count }) else { break } // the source ended early
            position += fromSource
        }
        return (filled, tier)
    }

    /// How the fleet names a file: its path below the source root and its version (none without a path).
    private func fleetName(of file: SourceFile) -> PeerFile? {
        guard fleet != nil, !file.relativePath.isEmpty else { return nil }
        return PeerFile(
            path: file.relativePath, size: file.version.size, modifiedNanoseconds: file.version.modified.nanosecondsSinceEpoch,
            blockSize: cache.blockSize)
    }

    /// Reads the source into `target` under the source timeout. The call owns the target and the
    /// opened file, so a read that outlives the timeout writes only to memory nobody else sees.
    private func readSource(_ file: SourceFile, through opened: SourceFile, into target: StagingTarget, at offset: Int64) throws(Errno)
        -> Int
    {
        try access.call(.read) { [blockIO] () throws(Errno) in
            try blockIO.read(file, through: opened, into: target.memory, at: offset)
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
        let cause =
            error == .staleNFSFileHandle
            ? "the file changed while it was read" : error.meansSourceGone ? "the source's mount is gone" : "\(error)"
        logger.warning("source read failed", metadata: ["block": "\(blocks)", "cause": "\(cause)"])
        return error.meansSourceGone ? .ioError : error
    }
}

extension BlockLoader: FigureReporter {
    func report(into figures: inout FigureValues) {
        figures[.bytesFromSource] = counters.bytesFromSource.load(ordering: .relaxed)
        figures[.bytesFromPeers] = counters.bytesFromPeers.load(ordering: .relaxed)
        figures[.sourceErrors] = counters.errors.load(ordering: .relaxed)
    }
}

extension BlockBuffer {
    /// Where a peer's answer for this block goes: spliced into its range of the memory file, if it has one.
    var receiveTarget: ReceiveTarget { ReceiveTarget(memory: memory, file: fileRange) }
}

extension Timestamp {
    init(nanosecondsSinceEpoch value: Int64) {
        let (seconds, nanoseconds) = value.quotientAndRemainder(dividingBy: 1_000_000_000)
        self.init(
            seconds: nanoseconds < 0 ? seconds - 1 : seconds, nanoseconds: nanoseconds < 0 ? nanoseconds + 1_000_000_000 : nanoseconds)
    }

    var nanosecondsSinceEpoch: Int64 { seconds &* 1_000_000_000 &+ nanoseconds }
}
