/// What `cachefs stats` shows: a daemon's configuration and counters, as JSON on the control socket.
public struct StatsReport: Codable, Sendable, Equatable {
    public var source: String
    public var mountpoint: String
    public var pid: Int32
    public var uptimeSeconds: Double
    public var capacityBytes: Int
    public var blockSizeBytes: Int
    public var cachedBytes: Int
    public var cachedBlocks: Int
    /// Block lookups answered from memory.
    public var hits: UInt64
    /// Block lookups that read the source.
    public var misses: UInt64
    /// Block lookups that waited for another reader's load of the same block.
    public var coalescedMisses: UInt64
    /// Bytes of blocks loaded from the source (not from peers).
    public var bytesFromSource: UInt64
    /// Bytes returned to readers from blocks already in memory, and bytes of blocks loaded from peers.
    public var bytesFromMemory: UInt64 = 0
    public var bytesFromPeers: UInt64 = 0
    /// Present with --listen or --peers.
    public var peers: PeerStatsReport?
    public var evictions: UInt64
    public var evictedBytes: UInt64
    public var sourceErrors: UInt64
    /// Read requests from the kernel and the bytes returned to them.
    public var readRequests: UInt64
    public var bytesRead: UInt64
    /// Source files the kernel currently holds a reference to.
    public var knownNodes: Int
    /// Blocks loaded ahead of sequential readers, and queued ones skipped (already cached, or the reader left).
    public var prefetchedBlocks: UInt64
    public var prefetchSkippedBlocks: UInt64
    /// Capacity held by pinned files (their full sizes), how many they are, and how much of them is loaded.
    public var pinnedBytes: Int = 0
    public var pinnedFiles: Int = 0
    public var pinnedCachedBytes: Int = 0
    /// Successful reads and their bytes by the tier that served them, fastest tier first.
    public var tiers: [TierReport] = []
    /// Where Prometheus metrics are served (`HOST:PORT`), if they are.
    public var metricsAddress: String?

    public struct TierReport: Codable, Sendable, Equatable {
        public var tier: String
        public var reads: UInt64
        public var bytes: UInt64

        public init(tier: String, reads: UInt64, bytes: UInt64) {
            self.tier = tier
            self.reads = reads
            self.bytes = bytes
        }
    }

    public init(
        source: String, mountpoint: String, pid: Int32, uptimeSeconds: Double,
        capacityBytes: Int, blockSizeBytes: Int, cachedBytes: Int, cachedBlocks: Int,
        hits: UInt64, misses: UInt64, coalescedMisses: UInt64, bytesFromSource: UInt64,
        evictions: UInt64, evictedBytes: UInt64, sourceErrors: UInt64,
        readRequests: UInt64, bytesRead: UInt64, knownNodes: Int,
        prefetchedBlocks: UInt64, prefetchSkippedBlocks: UInt64
    ) {
        self.prefetchedBlocks = prefetchedBlocks
        self.prefetchSkippedBlocks = prefetchSkippedBlocks
        self.source = source
        self.mountpoint = mountpoint
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.capacityBytes = capacityBytes
        self.blockSizeBytes = blockSizeBytes
        self.cachedBytes = cachedBytes
        self.cachedBlocks = cachedBlocks
        self.hits = hits
        self.misses = misses
        self.coalescedMisses = coalescedMisses
        self.bytesFromSource = bytesFromSource
        self.evictions = evictions
        self.evictedBytes = evictedBytes
        self.sourceErrors = sourceErrors
        self.readRequests = readRequests
        self.bytesRead = bytesRead
        self.knownNodes = knownNodes
    }

    /// Share of block lookups served from memory, coalesced waits counted as misses.
    public var hitRatio: Double {
        let lookups = hits + misses + coalescedMisses
        return lookups == 0 ? 0 : Double(hits) / Double(lookups)
    }
}
