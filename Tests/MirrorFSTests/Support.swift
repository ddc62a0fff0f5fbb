import BlockCache
import CLinux
import Foundation
import Logging
import MirrorFS
import PeerTransport
import Prefetch
import SourceTree
import SystemPackage
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The mirror without FUSE: a temporary source tree, read through MirrorFilesystem directly.
final class SourceFixture {
    let root: String
    let filesystem: MirrorFilesystem
    /// The fixture whose source this one shares; it removes the tree.
    private let owner: SourceFixture?

    /// - Parameter sharing: another fixture's root to mirror as well (a second instance over one source).
    init(
        blockSize: Int = 64 << 10, cacheBlocks: Int = 64, sourceHandleLimit: Int = 4096, sourceCallTimeout: Duration? = nil,
        sharing other: SourceFixture? = nil, fleet: (any BlockFleet)? = nil,
        prefetcher: Prefetcher? = nil, blockIO: any SourceBlockIO = DescriptorBlockIO(),
        kernelFeatures: (any KernelFeatures)? = nil
    ) throws {
        root = other?.root ?? FileManager.default.temporaryDirectory.appendingPathComponent("mirrorfs-\(UUID().uuidString)").path
        owner = other
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var logger = Logger(label: "test")
        logger.logLevel = .error // source read failures that tests provoke on purpose are warnings
        filesystem = try MirrorFilesystem(
            sourceRoot: try PathHandle.openRoot(root),
            cache: BlockCache(capacity: cacheBlocks * blockSize, blockSize: blockSize),
            prefetcher: prefetcher,
            sourceHandleLimit: sourceHandleLimit,
            sourceCalls: sourceCallTimeout.map { SourceCallPool(timeout: $0) }, fleet: fleet,
            blockIO: blockIO, kernelFeatures: kernelFeatures, logger: logger
        )
    }

    deinit { if owner == nil { try? FileManager.default.removeItem(atPath: root) } }

    func path(_ name: String) -> String { root + "/" + name }

    func write(_ name: String, _ bytes: [UInt8]) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path(name)))
    }

    /// Overwrites bytes at `offset` without truncating: the file keeps its inode.
    func overwrite(_ name: String, at offset: Int64 = 0, with bytes: [UInt8]) throws {
        let descriptor = try FileDescriptor.open(path(name), .writeOnly)
        defer { try? descriptor.close() }
        _ = try descriptor.writeAll(toAbsoluteOffset: offset, bytes)
    }

    func makeDirectory(_ name: String) throws {
        try FileManager.default.createDirectory(atPath: path(name), withIntermediateDirectories: false)
    }

    func symlink(_ name: String, to target: String) throws {
        guard Glibc.symlink(target, path(name)) == 0 else { throw Errno(rawValue: errno) }
    }

    func hardLink(_ name: String, to existing: String) throws {
        guard link(path(existing), path(name)) == 0 else { throw Errno(rawValue: errno) }
    }

    func status(_ name: String) throws -> stat {
        var attributes = stat()
        guard lstat(path(name), &attributes) == 0 else { throw Errno(rawValue: errno) }
        return attributes
    }

    /// Sets the source file's access and modification times.
    func setTimes(_ name: String, modified: timespec) throws {
        let times = [modified, modified]
        guard utimensat(AT_FDCWD, path(name), times, AT_SYMLINK_NOFOLLOW) == 0 else { throw Errno(rawValue: errno) }
    }

    func lookup(_ name: String, in parent: UInt64 = MirrorFilesystem.rootNode) throws -> UInt64 {
        try lookupWithAttributes(name, in: parent).node
    }

    func lookupWithAttributes(_ name: String, in parent: UInt64 = MirrorFilesystem.rootNode) throws -> (node: UInt64, attributes: stat) {
        try name.withCString { try filesystem.lookup(parent: parent, name: $0) }
    }

    /// Reads through the mirror, checking that the slices are well formed, and returns their bytes joined.
    func read(_ file: OpenFile, at offset: Int64, count: Int) throws -> [UInt8] {
        let slices = try filesystem.read(file, at: offset, count: count)
        var bytes: [UInt8] = []
        for slice in slices {
            #expect(!slice.range.isEmpty && slice.range.upperBound <= slice.block.count, "a slice outside its block")
            withExtendedLifetime(slice) { bytes.append(contentsOf: slice.bytes) }
        }
        #expect(bytes.count <= count)
        return bytes
    }
}

/// Deterministic pseudo-random bytes, so that a failing run can be repeated.
func randomBytes(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var generator = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { buffer in
        var offset = 0
        while offset < count {
            var word = generator.next()
            let chunk = min(8, count - offset)
            withUnsafeBytes(of: &word) { buffer[offset..<offset + chunk].copyBytes(from: $0.prefix(chunk)) }
            offset += chunk
        }
    }
    return bytes
}

/// `bytes[offset ..< offset + count]`, clipped to the array like a read clips to the end of file.
func expectedRead(_ bytes: [UInt8], at offset: Int, count: Int) -> [UInt8] {
    let lower = min(max(offset, 0), bytes.count)
    return Array(bytes[lower..<min(lower + count, bytes.count)])
}

func fileType(_ attributes: stat) -> mode_t { attributes.st_mode & S_IFMT }

func sameTime(_ a: timespec, _ b: timespec) -> Bool { a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec }

/// Whether the temporary directory's file system takes user extended attributes (tmpfs before Linux 6.6 does not).
func userExtendedAttributesSupported() -> Bool {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("xattr-probe-\(UUID().uuidString)").path
    guard FileManager.default.createFile(atPath: path, contents: Data()) else { return false }
    defer { unlink(path) }
    return setxattr(path, "user.cachefs-probe", "1", 1, 0) == 0
}
