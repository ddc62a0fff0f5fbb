/// Peer-to-peer counters in `cachefs stats`, present when the daemon runs with `--listen` or `--peers`.
public struct PeerStatsReport: Codable, Sendable, Equatable {
    /// The address this instance serves blocks on, if any.
    public var listen: String?
    /// Peers currently known (resolved, not this instance), and how many of them are in backoff.
    public var livePeers: [String]
    public var peersInBackoff: Int
    /// Block requests this instance made to peers, and their outcomes.
    public var requests: UInt64
    public var blocksFromPeers: UInt64
    public var notFound: UInt64
    public var failures: UInt64
    /// Blocks no peer provided, read from the source instead.
    public var fallbacks: UInt64
    /// What this instance served to peers.
    public var servedBlocks: UInt64
    public var servedBytes: UInt64
    public var servedNotResident: UInt64
    public var servedRefused: UInt64

    public init(
        listen: String?, livePeers: [String], peersInBackoff: Int, requests: UInt64, blocksFromPeers: UInt64,
        notFound: UInt64, failures: UInt64, fallbacks: UInt64, servedBlocks: UInt64, servedBytes: UInt64,
        servedNotResident: UInt64, servedRefused: UInt64
    ) {
        self.listen = listen
        self.livePeers = livePeers
        self.peersInBackoff = peersInBackoff
        self.requests = requests
        self.blocksFromPeers = blocksFromPeers
        self.notFound = notFound
        self.failures = failures
        self.fallbacks = fallbacks
        self.servedBlocks = servedBlocks
        self.servedBytes = servedBytes
        self.servedNotResident = servedNotResident
        self.servedRefused = servedRefused
    }
}
