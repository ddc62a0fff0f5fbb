import HTTPServing
import Logging

/// Everything a mount was given, checked and resolved: canonical paths, sizes in
/// bytes, durations in seconds. One value, made once from the command line (any of
/// its forms: foreground, background, `-o` as mount(8) passes it), handed whole to
/// the daemon (the background launcher sends it as JSON on the daemon's standard
/// input), and shown whole by `cachefs stats`, so what a running mount was given
/// can always be seen.
public struct MountSettings: Codable, Sendable, Equatable {
    public var source: String
    public var mountpoint: String
    /// Bytes of memory for cached file data.
    public var capacity: Int
    public var blockSize = 1 << 20
    /// Seconds the kernel may cache names and attributes.
    public var metadataTimeout = 1.0
    /// Seconds a source open or block read may take before the reader gets EIO; nil waits forever.
    public var sourceTimeout: Double? = 30
    /// Most FUSE worker threads.
    public var threads = 16
    /// Blocks kept loading ahead of a sequential reader, at most a quarter of the capacity
    /// so that prefetching cannot evict what is being read.
    public var prefetchDepth = 32
    public var prefetchThreads = 8
    public var prefetchChunk = 4
    /// The kernel read-ahead window asked for on the mount, in bytes.
    public var readAhead = 1 << 20
    /// Hand wholly cached files to the kernel to read from memory directly (FUSE passthrough), where it can.
    public var passthrough = true
    /// Read files with blocks still to load with direct I/O (each reply straight into the reader's
    /// buffer, not through the page cache), where the kernel can still map such opens.
    public var directIO = true
    public var allowOther = false
    public var controlSocket = ""
    public var logLevel = Logger.Level.info
    public var logFile: String?
    public var metrics: HostPort?
    /// Globs of source files warmed at start, and whether they are pinned.
    public var preload: [String] = []
    public var preloadPin = false
    /// Seconds a SIGTERM waits for reads in progress.
    public var shutdownGrace = 5.0
    /// Where this instance serves its blocks to peers; nil serves nothing.
    public var listen: HostPort?
    /// Peers asked for missing blocks: addresses or names, re-resolved every 10 s.
    public var peers: [HostPort] = []
    /// The file holding the peers' shared secret (the secret itself is read by the daemon and never shown).
    public var peerTokenFile: String?

    /// A mount with every other setting at its default: the defaults `cachefs --help` shows are these.
    public init(source: String, mountpoint: String, capacity: Int) {
        self.source = source
        self.mountpoint = mountpoint
        self.capacity = capacity
    }

    public static let defaults = MountSettings(source: "", mountpoint: "", capacity: 0)

    public var peersEnabled: Bool { listen != nil || !peers.isEmpty }

    /// The most blocks prefetch may keep loading ahead of a reader: a quarter of the capacity, so
    /// that prefetching cannot evict what is being read.
    public var prefetchDepthLimit: Int { capacity / blockSize / 4 }
}
