import CLinux
import CRC32C
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The record that travels with a version's memory file to the next daemon (a hand-over, or
/// a restart after a crash): which file version the memory file holds, and which of its
/// blocks hold complete bytes. A small memory file of its own (the block memory file cannot
/// carry it: the kernel reads that one directly for passthrough opens, up to its end).
///
/// The record is written once, with a CRC-32C over it, before any block is marked; after that
/// only two things change, each with one atomic store that a crash cannot tear: a block's bit,
/// set once its bytes are complete and cleared before its range is written again or given back,
/// and the count of passthrough holds, raised before the kernel is handed the file and lowered
/// after it lets go. So at any instant a set bit means the block's bytes are right, and a
/// nonzero count means the kernel may be reading the file, which must then never be punched.
///
/// Layout (format 1, little-endian):
///
///     0  magic "CFSLDGR1"      8  format (u32)      12 header length (u32, bitmap offset)
///     16 block size (u64)      24 block count (u64) 32 record length (u32)
///     40 CRC-32C of bytes 0..<40 and of the record  48 passthrough holds (i64, live)
///     64 record: the FileVersion (ByteWriter)       header length: one bit per block
///
/// Threads: any; the bitmap and the count are updated atomically.
public final class VersionLedger: @unchecked Sendable {
    // @unchecked: `base` is set once; the bitmap and count are touched only through atomics.
    public static let format: UInt32 = 1
    static let magic: UInt64 = 0x3152_4744_4C53_4643 // "CFSLDGR1" little-endian
    static let recordOffset = 64
    static let holdsOffset = 48
    /// The name a ledger's memory file has (in /proc/PID/fd), which tells it from block memory.
    public static let memoryFileName = "cachefs-block-ledger"

    public let descriptor: Int32
    private let base: UnsafeMutableRawPointer
    private let length: Int
    private let bitmapOffset: Int
    public let blockCount: Int64

    /// Makes the ledger of an empty memory file of `version`.
    init(version: FileVersion, blockSize: Int) throws(Errno) {
        var record = ByteWriter()
        record.append(version)
        let blocks = (version.size + Int64(blockSize) - 1) / Int64(blockSize)
        let headerLength = (Self.recordOffset + record.bytes.count + 63) / 64 * 64
        let total = headerLength + Int((blocks + 7) / 8)
        let fd = try makeMemoryFile(named: Self.memoryFileName, size: total)
        guard let mapped = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        descriptor = fd
        base = mapped
        length = total
        bitmapOffset = headerLength
        blockCount = blocks
        var header = ByteWriter()
        header.append(Self.magic)
        header.append(Self.format)
        header.append(UInt32(headerLength))
        header.append(UInt64(blockSize))
        header.append(UInt64(blocks))
        header.append(UInt32(record.bytes.count))
        header.append(UInt32(0))
        header.bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        record.bytes.withUnsafeBytes { (base + Self.recordOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        // The checksum last: a ledger torn while it was made does not check out.
        base.storeBytes(of: Self.checksum(base, recordLength: record.bytes.count).littleEndian, toByteOffset: 40, as: UInt32.self)
    }

    /// Why an inherited ledger was not used.
    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    /// Takes over the ledger in `descriptor` (closed on failure), checking it whole: magic, format,
    /// checksum, record, and that it belongs to a cache of `blockSize`. Returns it and its version.
    static func adopt(_ descriptor: Int32, blockSize: Int) throws(Refused) -> (VersionLedger, FileVersion) {
        var attributes = stat()
        guard fstat(descriptor, &attributes) == 0, attributes.st_size >= Self.recordOffset else {
            close(descriptor)
            throw Refused(description: "the ledger is shorter than its header")
        }
        let total = Int(attributes.st_size)
        guard let mapped = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), mapped != MAP_FAILED else {
            close(descriptor)
            throw Refused(description: "the ledger cannot be mapped: \(Errno(rawValue: errno))")
        }
        func refuse(_ reason: String) -> Refused {
            munmap(mapped, total)
            close(descriptor)
            return Refused(description: reason)
        }
        let header = UnsafeRawBufferPointer(start: mapped, count: total)
        var reader = ByteReader(header)
        do {
            guard try reader.read(UInt64.self) == Self.magic else { throw refuse("not a cachefs ledger") }
            let format: UInt32 = try reader.read()
            guard format == Self.format else { throw refuse("ledger format \(format); this cachefs reads format \(Self.format)") }
            let headerLength = Int(try reader.read(UInt32.self))
            let ledgerBlockSize: UInt64 = try reader.read()
            let blocks: UInt64 = try reader.read()
            let recordLength = Int(try reader.read(UInt32.self))
            guard recordLength <= total - Self.recordOffset, headerLength >= Self.recordOffset + recordLength,
                blocks <= UInt64(Int64.max), headerLength + Int((blocks + 7) / 8) <= total
            else { throw refuse("the ledger's header is out of bounds") }
            let stored = UInt32(littleEndian: mapped.loadUnaligned(fromByteOffset: 40, as: UInt32.self))
            guard stored == Self.checksum(mapped, recordLength: recordLength) else {
                throw refuse("the ledger's checksum does not match (torn or altered)")
            }
            guard ledgerBlockSize == UInt64(blockSize) else {
                throw refuse("the ledger is of a cache with \(ledgerBlockSize)-byte blocks, this one has \(blockSize)")
            }
            var record = ByteReader(UnsafeRawBufferPointer(start: mapped + Self.recordOffset, count: recordLength))
            let version = try record.readVersion()
            guard (version.size + Int64(blockSize) - 1) / Int64(blockSize) == Int64(blocks) else {
                throw refuse("the ledger's block count does not match its file's size")
            }
            return (
                VersionLedger(descriptor: descriptor, base: mapped, length: total, bitmapOffset: headerLength, blockCount: Int64(blocks)),
                version
            )
        } catch let error as Refused {
            throw error
        } catch {
            throw refuse("the ledger's record is malformed: \(error)")
        }
    }

    private init(descriptor: Int32, base: UnsafeMutableRawPointer, length: Int, bitmapOffset: Int, blockCount: Int64) {
        self.descriptor = descriptor
        self.base = base
        self.length = length
        self.bitmapOffset = bitmapOffset
        self.blockCount = blockCount
    }

    deinit {
        munmap(base, length)
        close(descriptor)
    }

    private static func checksum(_ base: UnsafeRawPointer, recordLength: Int) -> UInt32 {
        cachefs_crc32c(cachefs_crc32c(0, base, 40), base + recordOffset, recordLength)
    }

    private func byte(of index: Int64) -> UnsafeMutablePointer<UInt8> {
        (base + bitmapOffset + Int(index / 8)).assumingMemoryBound(to: UInt8.self)
    }

    /// Marks block `index` as holding complete bytes.
    func markResident(_ index: Int64) {
        guard index >= 0 && index < blockCount else { return }
        cachefs_atomic_or_u8(byte(of: index), UInt8(1) << UInt8(index % 8))
    }

    /// Marks block `index` as not to be trusted: before its range is written again or given back.
    func clearResident(_ index: Int64) {
        guard index >= 0 && index < blockCount else { return }
        cachefs_atomic_and_u8(byte(of: index), ~(UInt8(1) << UInt8(index % 8)))
    }

    public func isResident(_ index: Int64) -> Bool {
        guard index >= 0 && index < blockCount else { return false }
        return cachefs_atomic_load_u8(byte(of: index)) & (UInt8(1) << UInt8(index % 8)) != 0
    }

    /// Passthrough holds on the file: while nonzero, the kernel may be reading it.
    public var holds: Int64 {
        Int64(bitPattern: cachefs_atomic_load_u64((base + Self.holdsOffset).assumingMemoryBound(to: UInt64.self)))
    }

    func addHolds(_ delta: Int64) {
        _ = cachefs_atomic_add_i64((base + Self.holdsOffset).assumingMemoryBound(to: Int64.self), delta)
    }
}
