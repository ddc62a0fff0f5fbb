@testable import BlockCache

// Whole file versions with bytes of their own, for the tests of memory files, holds, hand-overs,
// pins and residency.

/// The block size of those tests. Small blocks keep them fast; the cache works the same at any block size.
let blockSize = 4096

/// A version of `blocks` whole blocks and `extra` bytes more (a shorter last block).
func version(_ inode: UInt64, blocks: Int, extra: Int = 0) -> FileVersion {
    FileVersion(
        identity: .inode(device: 7, inode: inode), size: Int64(blocks * blockSize + extra),
        modified: Timestamp(seconds: 5, nanoseconds: 6), changed: Timestamp(seconds: 5, nanoseconds: 6))
}

/// Block `index`'s own bytes: they differ from block to block and from version to version.
func bytes(_ file: FileVersion, _ index: Int64, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(index) &* 17 &+ Int(file.size) &+ 1) }
}

/// The length of block `index` of `file`.
func length(_ file: FileVersion, _ index: Int64) -> Int {
    Int(min(Int64(blockSize), file.size - index * Int64(blockSize)))
}

/// Fetches block `index` of `file`, loading it with its own bytes (as the loader does) on a miss;
/// returns the block and whether it had to be loaded (was not already resident).
func fetchBlock(_ cache: BlockCache, _ file: FileVersion, _ index: Int64) throws -> (block: Block, loaded: Bool) {
    var loaded = false
    let (block, _) = try cache.fetch(for: BlockKey(file: file, index: index), length: length(file, index)) { buffer in
        loaded = true
        try bytes(file, index, count: length(file, index)).withUnsafeBytes { try buffer.store($0) }
        return (length(file, index), .source)
    }
    return (block, loaded)
}

/// Loads blocks of `file` (all by default) with their own bytes through `fetch`, as the loader does;
/// returns how many were loaded (not already resident).
@discardableResult
func load(_ cache: BlockCache, _ file: FileVersion, _ indexes: Range<Int64>? = nil) throws -> Int {
    var loads = 0
    for index in indexes ?? 0..<((file.size + Int64(blockSize) - 1) / Int64(blockSize)) {
        if try fetchBlock(cache, file, index).loaded { loads += 1 }
    }
    return loads
}
