import BlockCache

/// What a mount is, once and for all, in the state journal (written by the daemon that mounted
/// it, read by every successor): where it is, what it mirrors, the settings the kernel or the
/// cache's layout fixed, the mount's device (to tell it from another mount at the same place),
/// and the INIT exchange a successor replays to libfuse.
public struct MountRecord: Sendable, Equatable {
    public var mountpoint: String
    public var source: String
    public var allowOther: Bool
    public var blockSize: Int
    /// The mount's device numbers (`major:minor` in /proc/self/mountinfo).
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    /// The kernel's INIT request as it came, and the flags2 it was told in reply.
    public var initRequest: [UInt8]
    public var kernelFlags2: UInt32

    public init(
        mountpoint: String, source: String, allowOther: Bool, blockSize: Int, deviceMajor: UInt32, deviceMinor: UInt32,
        initRequest: [UInt8], kernelFlags2: UInt32
    ) {
        self.mountpoint = mountpoint
        self.source = source
        self.allowOther = allowOther
        self.blockSize = blockSize
        self.deviceMajor = deviceMajor
        self.deviceMinor = deviceMinor
        self.initRequest = initRequest
        self.kernelFlags2 = kernelFlags2
    }

    public var device: String { "\(deviceMajor):\(deviceMinor)" }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.append(lengthPrefixed: Array(mountpoint.utf8))
        writer.append(lengthPrefixed: Array(source.utf8))
        writer.append(UInt8(allowOther ? 1 : 0))
        writer.append(UInt64(blockSize))
        writer.append(deviceMajor)
        writer.append(deviceMinor)
        writer.append(lengthPrefixed: initRequest)
        writer.append(kernelFlags2)
        return writer.bytes
    }

    public init?(decoding bytes: [UInt8]) {
        let decoded: MountRecord? = bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            guard let mountpoint = try? reader.readLengthPrefixed(limit: 4096), let source = try? reader.readLengthPrefixed(limit: 4096),
                let allowOther = try? reader.read(UInt8.self), let blockSize = try? reader.read(UInt64.self),
                let major = try? reader.read(UInt32.self), let minor = try? reader.read(UInt32.self),
                let initRequest = try? reader.readLengthPrefixed(limit: 4096), let flags2 = try? reader.read(UInt32.self),
                blockSize > 0, blockSize <= 1 << 30
            else { return nil }
            return MountRecord(
                mountpoint: String(decoding: mountpoint, as: UTF8.self), source: String(decoding: source, as: UTF8.self),
                allowOther: allowOther != 0, blockSize: Int(blockSize), deviceMajor: major, deviceMinor: minor,
                initRequest: initRequest, kernelFlags2: flags2)
        }
        guard let decoded else { return nil }
        self = decoded
    }
}

extension StateJournal {
    /// The mount record, if one was written and checks out.
    public var mount: MountRecord? { mountRecord().flatMap(MountRecord.init(decoding:)) }
}
