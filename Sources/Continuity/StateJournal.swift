import BlockCache
import CLinux
import CRC32C
import MirrorFS
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What the kernel holds of a mount and must find again in whichever daemon serves it next,
/// kept in a memory file that outlives the daemon (handed over, or kept in systemd's store):
/// the mount's INIT negotiation, the open handles, how far node IDs have gone, the pins, and
/// the counter that names memory files. Each version's memory file carries its own ledger
/// (BlockCache's `VersionLedger`); this journal holds what is not the cache's.
///
/// Every record checks itself, so a record torn by a crash is skipped, never misread:
/// - a handle slot is written whole, with a CRC-32C, before its state word says "in use" (one
///   atomic store); cleared by that word alone, its generation kept;
/// - the mount record and the pins are blobs in two halves: a new one goes into the half not in
///   use, with its CRC-32C, and its sequence number is stored last; a reader takes the valid half
///   with the higher number, so a torn write leaves the previous one;
/// - the node ID reservation and the name counter are single atomic words.
///
/// Layout (format 1): a 4 KiB header (magic "CFSJRNL1", format, slot size and count, CRC-32C of
/// those; then the live words: node IDs reserved, names used, slots used), the mount record's two
/// halves, the pins' two halves, then the handle slots.
///
/// Threads: any. A slot belongs to the handle that holds it (OpenHandles hands them out);
/// blobs are written by one caller at a time (mount once; pins under the caller's lock).
public final class StateJournal: KernelStateJournal, @unchecked Sendable {
    // @unchecked: the mapping is set once; shared words are accessed with atomics, slots by their owner.
    public static let format: UInt32 = 1
    static let magic: UInt64 = 0x314C_4E52_4A53_4643 // "CFSJRNL1" little-endian
    static let headerLength = 4096
    static let slotSize = 4608
    static let mountHalf = 64 << 10
    static let pinsHalf = 16 << 20
    public static let defaultSlots = 1 << 16

    public let descriptor: Int32
    private let base: UnsafeMutableRawPointer
    private let length: Int
    private let slotCount: Int
    /// Serializes blob writes (two at once would pick the same half); guards nothing else.
    /// Lock order: a leaf, taken under no other lock.
    private let blobWrites = Mutex<Void>(())
    private let mountOffset = StateJournal.headerLength
    private var pinsOffset: Int { mountOffset + 2 * Self.mountHalf }
    private var slotsOffset: Int { pinsOffset + 2 * Self.pinsHalf }

    // Live words of the header.
    private static let nodeReserveOffset = 64
    private static let namesOffset = 72
    private static let slotsUsedOffset = 80

    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    /// A new, empty journal (a sparse memory file: only what is written takes memory).
    public static func create(slots: Int = defaultSlots) throws(Errno) -> StateJournal {
        let fd = try makeMemoryFile(named: "cachefs-state-journal", size: length(slots: slots))
        let journal: StateJournal
        do {
            journal = try StateJournal(descriptor: fd, slots: slots, creating: true)
        } catch {
            throw error as? Errno ?? .ioError
        }
        var header = ByteWriter()
        header.append(Self.magic)
        header.append(Self.format)
        header.append(UInt32(Self.slotSize))
        header.append(UInt32(slots))
        header.append(UInt32(0))
        header.append(UInt64.random(in: 1...UInt64.max)) // names memory files apart from another journal's
        header.bytes.withUnsafeBytes { journal.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        journal.base.storeBytes(of: cachefs_crc32c(0, journal.base, 32).littleEndian, toByteOffset: 32, as: UInt32.self)
        return journal
    }

    /// Takes over a predecessor's journal (the descriptor is the journal's from now on, or closed).
    public static func adopt(_ fd: Int32) throws(Refused) -> StateJournal {
        var header = [UInt8](repeating: 0, count: 40)
        guard header.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 40, 0) }) == 40 else {
            close(fd)
            throw Refused(description: "the state journal is shorter than its header")
        }
        let parsed: (format: UInt32, slotSize: UInt32, slots: UInt32, crc: UInt32)? = header.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            guard (try? reader.read(UInt64.self)) == Self.magic, let format = try? reader.read(UInt32.self),
                let slotSize = try? reader.read(UInt32.self), let slots = try? reader.read(UInt32.self)
            else { return nil }
            return (format, slotSize, slots, UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
        }
        guard let parsed else {
            close(fd)
            throw Refused(description: "not a cachefs state journal")
        }
        guard parsed.format == Self.format else {
            close(fd)
            throw Refused(description: "state journal format \(parsed.format); this cachefs reads format \(Self.format)")
        }
        guard parsed.crc == header.withUnsafeBytes({ cachefs_crc32c(0, $0.baseAddress!, 32) }), parsed.slotSize == UInt32(Self.slotSize),
            parsed.slots > 0, parsed.slots <= 1 << 22
        else {
            close(fd)
            throw Refused(description: "the state journal's header does not check out")
        }
        do {
            return try StateJournal(descriptor: fd, slots: Int(parsed.slots), creating: false)
        } catch {
            close(fd)
            throw Refused(description: "the state journal cannot be mapped: \(error)")
        }
    }

    /// The size of a journal of `slots` handle slots.
    private static func length(slots: Int) -> Int { headerLength + 2 * mountHalf + 2 * pinsHalf + slots * slotSize }

    private init(descriptor: Int32, slots: Int, creating: Bool) throws {
        let total = Self.length(slots: slots)
        if !creating {
            var attributes = stat()
            guard fstat(descriptor, &attributes) == 0, Int(attributes.st_size) >= total else { throw Errno.invalidArgument }
        }
        guard let mapped = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, descriptor, 0), mapped != MAP_FAILED else {
            let error = Errno(rawValue: errno)
            if creating { close(descriptor) }
            throw error
        }
        self.descriptor = descriptor
        base = mapped
        length = total
        slotCount = slots
    }

    deinit {
        munmap(base, length)
        close(descriptor)
    }

    private func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (base + offset).assumingMemoryBound(to: UInt64.self)
    }

    // MARK: Node IDs and names

    public func reserveNodeIDs(through id: UInt64) {
        cachefs_atomic_store_u64(word(Self.nodeReserveOffset), max(id, cachefs_atomic_load_u64(word(Self.nodeReserveOffset))))
    }

    /// Node IDs up to this may have been handed out.
    public var nodeIDsReserved: UInt64 { cachefs_atomic_load_u64(word(Self.nodeReserveOffset)) }

    /// A name for a new memory file, never given before by any daemon of this journal, nor of another journal.
    public func nextName() -> String {
        let number = UInt64(
            bitPattern: cachefs_atomic_add_i64(UnsafeMutableRawPointer(word(Self.namesOffset)).assumingMemoryBound(to: Int64.self), 1))
        let journalID = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        return "cachefs-m\(String(journalID, radix: 36))-\(number)"
    }

    // MARK: Handles

    public var handleCapacity: Int { slotCount }

    private func slot(_ index: Int) -> UnsafeMutableRawPointer { base + slotsOffset + index * Self.slotSize }

    public func recordHandle(_ record: OpenHandleRecord) -> Bool {
        let body = Self.encode(record)
        guard record.slot < slotCount, 16 + body.count <= Self.slotSize else { return false }
        let slot = slot(record.slot)
        let state = slot.assumingMemoryBound(to: UInt32.self)
        cachefs_atomic_store_u32(state, 0)
        slot.storeBytes(of: record.generation.littleEndian, toByteOffset: 8, as: UInt32.self)
        slot.storeBytes(of: UInt32(body.count).littleEndian, toByteOffset: 12, as: UInt32.self)
        body.withUnsafeBytes { (slot + 16).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        slot.storeBytes(of: cachefs_crc32c(0, slot + 8, 8 + body.count).littleEndian, toByteOffset: 4, as: UInt32.self)
        cachefs_atomic_store_u32(state, 1) // last: the record is whole
        let used = word(Self.slotsUsedOffset)
        if cachefs_atomic_load_u64(used) <= UInt64(record.slot) { cachefs_atomic_store_u64(used, UInt64(record.slot) + 1) }
        return true
    }

    public func clearHandle(slot index: Int, generation: UInt32) {
        guard index < slotCount else { return }
        cachefs_atomic_store_u32(slot(index).assumingMemoryBound(to: UInt32.self), 0)
    }

    /// The handles recorded as open, the generation every slot used so far last had, and how many
    /// slots marked in use did not check out (torn by a crash, or altered).
    public func openHandles() -> (records: [OpenHandleRecord], generations: [Int: UInt32], torn: Int) {
        var records: [OpenHandleRecord] = [], generations: [Int: UInt32] = [:], torn = 0
        let used = min(Int(cachefs_atomic_load_u64(word(Self.slotsUsedOffset))), slotCount)
        for index in 0..<used {
            let slot = slot(index)
            let generation = UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            generations[index] = generation
            guard cachefs_atomic_load_u32(slot.assumingMemoryBound(to: UInt32.self)) == 1 else { continue }
            let count = Int(UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            guard count <= Self.slotSize - 16,
                UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) == cachefs_crc32c(0, slot + 8, 8 + count),
                let record = Self.decode(UnsafeRawBufferPointer(start: slot + 16, count: count), slot: index, generation: generation)
            else {
                torn += 1
                continue
            }
            records.append(record)
        }
        return (records, generations, torn)
    }

    /// A handle record's body: kind, node, type, backing id, path, identity (the path's when they
    /// agree), and the version's size and times (its identity is the record's).
    static func encode(_ record: OpenHandleRecord) -> [UInt8] {
        var writer = ByteWriter()
        writer.append(record.kind.rawValue)
        writer.append(record.node)
        writer.append(record.nodeType)
        writer.append(record.backingID)
        writer.append(lengthPrefixed: record.path)
        if record.identity == .path(record.path) {
            writer.append(UInt8(0))
        } else {
            writer.append(UInt8(1))
            writer.append(record.identity)
        }
        if let version = record.version, version.identity == record.identity {
            writer.append(UInt8(1))
            writer.appendContent(of: version)
        } else if let version = record.version {
            writer.append(UInt8(2))
            writer.append(version)
        } else {
            writer.append(UInt8(0))
        }
        return writer.bytes
    }

    static func decode(_ bytes: UnsafeRawBufferPointer, slot: Int, generation: UInt32) -> OpenHandleRecord? {
        var reader = ByteReader(bytes)
        do {
            guard let kind = OpenHandleRecord.Kind(rawValue: try reader.read(UInt8.self)) else { return nil }
            let node: UInt64 = try reader.read()
            let type: UInt32 = try reader.read()
            let backingID: Int32 = try reader.read()
            let path = try reader.readLengthPrefixed(limit: 4096)
            let identity: FileIdentity = try reader.read(UInt8.self) == 0 ? .path(path) : try reader.readIdentity()
            let version: FileVersion?
            switch try reader.read(UInt8.self) {
            case 0: version = nil
            case 1: version = try reader.readVersion(of: identity)
            default: version = try reader.readVersion()
            }
            guard (kind == .directory) == (version == nil) else { return nil }
            return OpenHandleRecord(
                handle: OpenHandleRecord.handle(slot: slot, generation: generation), kind: kind, node: node, nodeType: type,
                identity: identity, path: path, version: version, backingID: backingID)
        } catch {
            return nil
        }
    }

    // MARK: Blobs in two halves

    public func writeMountRecord(_ bytes: [UInt8]) -> Bool { writeBlob(bytes, at: mountOffset, half: Self.mountHalf) }
    public func mountRecord() -> [UInt8]? { readBlob(at: mountOffset, half: Self.mountHalf) }

    public func recordPins(_ versions: [FileVersion]) {
        var writer = ByteWriter()
        writer.append(UInt32(versions.count))
        for version in versions { writer.append(version) }
        _ = writeBlob(writer.bytes, at: pinsOffset, half: Self.pinsHalf)
    }

    /// The pinned versions last recorded; empty if none were, or the record does not check out.
    public func pins() -> [FileVersion] {
        guard let bytes = readBlob(at: pinsOffset, half: Self.pinsHalf) else { return [] }
        return bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            guard let count = try? reader.read(UInt32.self) else { return [] }
            var versions: [FileVersion] = []
            for _ in 0..<count {
                guard let version = try? reader.readVersion() else { return [] }
                versions.append(version)
            }
            return versions
        }
    }

    /// Each half: sequence (u64, stored last), length (u32), CRC-32C of the bytes (u32), the bytes.
    private func writeBlob(_ bytes: [UInt8], at offset: Int, half: Int) -> Bool {
        guard bytes.count + 16 <= half else { return false }
        return blobWrites.withLock { _ in writeBlobLocked(bytes, at: offset, half: half) }
    }

    private func writeBlobLocked(_ bytes: [UInt8], at offset: Int, half: Int) -> Bool {
        let sequences = (0..<2).map { cachefs_atomic_load_u64(word(offset + $0 * half)) }
        let target = sequences[0] <= sequences[1] ? 0 : 1
        let start = base + offset + target * half
        start.storeBytes(of: UInt32(bytes.count).littleEndian, toByteOffset: 8, as: UInt32.self)
        bytes.withUnsafeBytes { raw in
            if raw.count > 0 { (start + 16).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
            start.storeBytes(
                of: cachefs_crc32c(0, raw.baseAddress ?? UnsafeRawPointer(start), raw.count).littleEndian, toByteOffset: 12, as: UInt32.self
            )
        }
        cachefs_atomic_store_u64(word(offset + target * half), max(sequences[0], sequences[1]) + 1)
        return true
    }

    private func readBlob(at offset: Int, half: Int) -> [UInt8]? {
        var best: (sequence: UInt64, bytes: [UInt8])?
        for index in 0..<2 {
            let start = base + offset + index * half
            let sequence = cachefs_atomic_load_u64(word(offset + index * half))
            let count = Int(UInt32(littleEndian: start.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            guard sequence > 0, count <= half - 16, sequence > best?.sequence ?? 0 else { continue }
            let bytes = Array(UnsafeRawBufferPointer(start: start + 16, count: count))
            let crc = bytes.withUnsafeBytes { cachefs_crc32c(0, $0.baseAddress ?? UnsafeRawPointer(start), count) }
            guard crc == UInt32(littleEndian: start.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) else { continue }
            best = (sequence, bytes)
        }
        return best?.bytes
    }
}
