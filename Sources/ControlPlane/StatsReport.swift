/// One figure of a daemon's statistics. Its name is the key in `cachefs stats --json`
/// and the row in the table; the Prometheus metric is derived from it
/// (`cachefs_` + snake_case, `_total` for a counter): one name everywhere.
public struct Figure: Hashable, Sendable {
    public enum Kind: Sendable { case counter, gauge }
    public enum Unit: Sendable { case count, bytes }
    /// The table's sections, in order.
    public enum Group: String, CaseIterable, Sendable { case cache, reads, passthrough, source, prefetch, peers }

    public let name: String
    public let kind: Kind
    public let unit: Unit
    public let group: Group
    public let help: String

    init(_ name: String, _ kind: Kind, _ unit: Unit = .count, _ group: Group, _ help: String) {
        self.name = name
        self.kind = kind
        self.unit = unit
        self.group = group
        self.help = help
    }

    public var prometheusName: String {
        var snake = "cachefs_"
        for character in name {
            if character.isUppercase { snake += "_" + character.lowercased() } else { snake.append(character) }
        }
        return kind == .counter ? snake + "_total" : snake
    }
}

extension Figure {
    public static let cachedBytes = Figure("cachedBytes", .gauge, .bytes, .cache, "File data in memory, pinned files included.")
    public static let cachedBlocks = Figure("cachedBlocks", .gauge, .count, .cache, "Blocks in memory.")
    public static let reservedBytes = Figure("reservedBytes", .gauge, .bytes, .cache, "Capacity held by block loads in flight.")
    public static let hits = Figure("hits", .counter, .count, .cache, "Block lookups answered from memory.")
    public static let misses = Figure("misses", .counter, .count, .cache, "Block lookups that loaded the block.")
    public static let coalescedMisses = Figure("coalescedMisses", .counter, .count, .cache, "Block lookups that waited for another reader's load of the same block.")
    public static let evictions = Figure("evictions", .counter, .count, .cache, "Blocks evicted to make room.")
    public static let evictedBytes = Figure("evictedBytes", .counter, .bytes, .cache, "Bytes of the blocks evicted.")
    public static let pinnedBytes = Figure("pinnedBytes", .gauge, .bytes, .cache, "Capacity held by pinned files: their full sizes.")
    public static let pinnedFiles = Figure("pinnedFiles", .gauge, .count, .cache, "Pinned files.")
    public static let pinnedCachedBytes = Figure("pinnedCachedBytes", .gauge, .bytes, .cache, "Bytes of pinned files loaded so far.")

    public static let readRequests = Figure("readRequests", .counter, .count, .reads, "Read requests from the kernel.")
    public static let bytesRead = Figure("bytesRead", .counter, .bytes, .reads, "Bytes returned to the kernel's read requests.")
    public static let memoryReads = Figure("memoryReads", .counter, .count, .reads, "Reads whose blocks were all in memory.")
    public static let memoryReadBytes = Figure("memoryReadBytes", .counter, .bytes, .reads, "Bytes of those reads.")
    public static let peerReads = Figure("peerReads", .counter, .count, .reads, "Reads that needed a block from a peer, none from the source.")
    public static let peerReadBytes = Figure("peerReadBytes", .counter, .bytes, .reads, "Bytes of those reads.")
    public static let sourceReads = Figure("sourceReads", .counter, .count, .reads, "Reads that needed a block from the source (or waited for another reader's load).")
    public static let sourceReadBytes = Figure("sourceReadBytes", .counter, .bytes, .reads, "Bytes of those reads.")

    public static let extendedAttributeRequests = Figure("extendedAttributeRequests", .counter, .count, .reads, "getxattr and listxattr requests from the kernel (one at most when the source has no extended attributes).")
    public static let directIOOpens = Figure("directIOOpens", .counter, .count, .reads, "Opens of files with blocks still to load, read with direct I/O: each reply goes straight into the reader's buffer, not through the mount's page cache.")
    public static let passthroughOpens = Figure("passthroughOpens", .counter, .count, .passthrough, "Opens handed to the kernel, which reads the file from memory itself (no read request reaches the daemon).")
    public static let passthroughFiles = Figure("passthroughFiles", .gauge, .count, .passthrough, "Files held in memory for passthrough opens.")
    public static let passthroughBytes = Figure("passthroughBytes", .gauge, .bytes, .passthrough, "Bytes of those files.")

    public static let bytesFromSource = Figure("bytesFromSource", .counter, .bytes, .source, "Bytes of blocks loaded from the source.")
    public static let bytesFromPeers = Figure("bytesFromPeers", .counter, .bytes, .source, "Bytes of blocks loaded from peers.")
    public static let sourceErrors = Figure("sourceErrors", .counter, .count, .source, "Block loads that failed, whatever the cause.")
    public static let sourceTimeouts = Figure("sourceTimeouts", .counter, .count, .source, "Source opens and reads given up after --source-timeout (the reader got EIO).")
    public static let sourceReattaches = Figure("sourceReattaches", .counter, .count, .source, "Times the source root was opened again after its mount went away and came back.")
    public static let sourceUnavailable = Figure("sourceUnavailable", .counter, .count, .source, "Source calls that found its mount gone and could not reopen it (the reader got EIO).")
    public static let knownNodes = Figure("knownNodes", .gauge, .count, .source, "Source files and directories the kernel holds a reference to.")
    public static let sourceHandles = Figure("sourceHandles", .gauge, .count, .source, "Source descriptors kept open for known files.")
    public static let sourceHandleReopens = Figure("sourceHandleReopens", .counter, .count, .source, "Known files found again by name after their descriptor was let go.")

    public static let prefetchQueuedBlocks = Figure("prefetchQueuedBlocks", .counter, .count, .prefetch, "Blocks queued ahead of sequential readers.")
    public static let prefetchedBlocks = Figure("prefetchedBlocks", .counter, .count, .prefetch, "Blocks loaded ahead of sequential readers.")
    public static let prefetchSkippedBlocks = Figure("prefetchSkippedBlocks", .counter, .count, .prefetch, "Queued blocks skipped: already cached, or their reader went away.")

    public static let peerRequests = Figure("peerRequests", .counter, .count, .peers, "Block requests this instance sent to peers (holders and owners).")
    public static let blocksFromPeers = Figure("blocksFromPeers", .counter, .count, .peers, "Blocks peers sent, verified.")
    public static let blocksFromHolders = Figure("blocksFromHolders", .counter, .count, .peers, "Of those, blocks from a peer that listed them in its holdings.")
    public static let blocksFromOwners = Figure("blocksFromOwners", .counter, .count, .peers, "Of those, blocks from their owner (loaded there for this instance, or already in its memory).")
    public static let holdingsQueries = Figure("holdingsQueries", .counter, .count, .peers, "Holdings queries sent: which blocks of a file a peer holds.")
    public static let holdersFound = Figure("holdersFound", .counter, .count, .peers, "Holdings answers that listed at least one block.")
    public static let ownerRequests = Figure("ownerRequests", .counter, .count, .peers, "Requests asking a block's owner to load it, each a wait on the owner's load.")
    public static let ownerDeadlinesMissed = Figure("ownerDeadlinesMissed", .counter, .count, .peers, "Owner requests not answered within the owner timeout.")
    public static let peerNotFound = Figure("peerNotFound", .counter, .count, .peers, "Requests a holder could not answer from memory.")
    public static let peerFailures = Figure("peerFailures", .counter, .count, .peers, "Exchanges that failed (timeout, refused, bad length or checksum, wrong token).")
    public static let peerFallbacks = Figure("peerFallbacks", .counter, .count, .peers, "Blocks read from this instance's source because their owner failed, declined or was too slow.")
    public static let peersInBackoff = Figure("peersInBackoff", .gauge, .count, .peers, "Peers skipped for now after failures.")
    public static let servedBlocks = Figure("servedBlocks", .counter, .count, .peers, "Blocks this instance sent to peers.")
    public static let servedBytes = Figure("servedBytes", .counter, .bytes, .peers, "Bytes of those blocks.")
    public static let servedNotResident = Figure("servedNotResident", .counter, .count, .peers, "Peer requests for blocks not in memory here (not asked as owner), or of another version.")
    public static let servedRefused = Figure("servedRefused", .counter, .count, .peers, "Peer requests refused: malformed, unsafe path, wrong token, not GET.")
    public static let holdingsServed = Figure("holdingsServed", .counter, .count, .peers, "Holdings queries this instance answered.")
    public static let blocksLoadedForPeers = Figure("blocksLoadedForPeers", .counter, .count, .peers, "Blocks this instance loaded from its source as their owner, for peers (asked, or ahead of them).")
    public static let bytesLoadedForPeers = Figure("bytesLoadedForPeers", .counter, .bytes, .peers, "Bytes of those blocks.")

    /// Every figure, in the order the table shows them.
    public static let all: [Figure] = [
        cachedBytes, cachedBlocks, reservedBytes, hits, misses, coalescedMisses, evictions, evictedBytes,
        pinnedBytes, pinnedFiles, pinnedCachedBytes,
        readRequests, bytesRead, memoryReads, memoryReadBytes, peerReads, peerReadBytes, sourceReads, sourceReadBytes,
        extendedAttributeRequests, directIOOpens, passthroughOpens, passthroughFiles, passthroughBytes,
        bytesFromSource, bytesFromPeers, sourceErrors, sourceTimeouts, sourceReattaches, sourceUnavailable, knownNodes, sourceHandles, sourceHandleReopens,
        prefetchQueuedBlocks, prefetchedBlocks, prefetchSkippedBlocks,
        peerRequests, blocksFromPeers, blocksFromHolders, blocksFromOwners, holdingsQueries, holdersFound, ownerRequests,
        ownerDeadlinesMissed, peerNotFound, peerFailures, peerFallbacks, peersInBackoff,
        servedBlocks, servedBytes, servedNotResident, servedRefused, holdingsServed, blocksLoadedForPeers, bytesLoadedForPeers,
    ]

    static let byName = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
}

/// The kernel read-ahead window on the mount, as the daemon found it.
public struct ReadAheadState: Codable, Sendable, Equatable {
    /// The window in force, in bytes (nil if it could not be read).
    public var windowBytes: Int?
    /// Why raising it to `--read-ahead` failed (e.g. a read-only /sys in a container); nil if it worked.
    public var error: String?

    public init(windowBytes: Int?, error: String?) {
        self.windowBytes = windowBytes
        self.error = error
    }
}

/// Whether the kernel serves wholly cached files itself (FUSE passthrough), and if not, why.
public struct PassthroughState: Codable, Sendable, Equatable {
    public var available: Bool
    public var reason: String?

    public init(available: Bool, reason: String?) {
        self.available = available
        self.reason = reason
    }
}

/// What `cachefs stats` shows, as JSON on the control socket: the settings the daemon runs
/// with, its state, and every figure (`Figure.all`) at the top level of the JSON object.
public struct StatsReport: Sendable, Equatable {
    public var settings: MountSettings
    public var pid: Int32
    public var uptimeSeconds: Double
    public var readAhead: ReadAheadState?
    public var passthrough: PassthroughState?
    /// Where Prometheus metrics are served (`HOST:PORT`), if they are.
    public var metricsAddress: String?
    /// Peers currently known (resolved, not this instance); nil without --peers.
    public var livePeers: [String]?
    /// How the daemon came to serve the mount (mounted it, or took it over) and what it inherited.
    public var continuity: ContinuityState?
    /// Figure values by name; a figure that does not apply (peers without --peers) is absent.
    public var values: [String: UInt64]

    public init(settings: MountSettings, pid: Int32, uptimeSeconds: Double, values: [Figure: UInt64] = [:]) {
        self.settings = settings
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.values = Dictionary(uniqueKeysWithValues: values.map { ($0.key.name, $0.value) })
    }

    public subscript(_ figure: Figure) -> UInt64 {
        get { values[figure.name] ?? 0 }
        set { values[figure.name] = newValue }
    }

    /// Whether the daemon reported this figure at all.
    public func has(_ figure: Figure) -> Bool { values[figure.name] != nil }

    /// Share of block lookups served from memory, coalesced waits counted as misses.
    public var hitRatio: Double {
        let lookups = self[.hits] + self[.misses] + self[.coalescedMisses]
        return lookups == 0 ? 0 : Double(self[.hits]) / Double(lookups)
    }
}

extension StatsReport: Codable {
    private enum Key: String, CodingKey {
        case settings, pid, uptimeSeconds, readAhead, passthrough, metricsAddress, livePeers, continuity
    }

    private struct FigureKey: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        settings = try container.decode(MountSettings.self, forKey: .settings)
        pid = try container.decode(Int32.self, forKey: .pid)
        uptimeSeconds = try container.decode(Double.self, forKey: .uptimeSeconds)
        readAhead = try container.decodeIfPresent(ReadAheadState.self, forKey: .readAhead)
        passthrough = try container.decodeIfPresent(PassthroughState.self, forKey: .passthrough)
        metricsAddress = try container.decodeIfPresent(String.self, forKey: .metricsAddress)
        livePeers = try container.decodeIfPresent([String].self, forKey: .livePeers)
        continuity = try container.decodeIfPresent(ContinuityState.self, forKey: .continuity)
        let figures = try decoder.container(keyedBy: FigureKey.self)
        values = [:]
        for figure in Figure.all {
            values[figure.name] = try figures.decodeIfPresent(UInt64.self, forKey: FigureKey(stringValue: figure.name))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(settings, forKey: .settings)
        try container.encode(pid, forKey: .pid)
        try container.encode(uptimeSeconds, forKey: .uptimeSeconds)
        try container.encodeIfPresent(readAhead, forKey: .readAhead)
        try container.encodeIfPresent(passthrough, forKey: .passthrough)
        try container.encodeIfPresent(metricsAddress, forKey: .metricsAddress)
        try container.encodeIfPresent(livePeers, forKey: .livePeers)
        try container.encodeIfPresent(continuity, forKey: .continuity)
        var figures = encoder.container(keyedBy: FigureKey.self)
        for (name, value) in values where Figure.byName[name] != nil {
            try figures.encode(value, forKey: FigureKey(stringValue: name))
        }
    }
}
