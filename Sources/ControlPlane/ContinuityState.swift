/// How the daemon came to serve its mount, and what it took over: `cachefs stats` shows it.
public struct ContinuityState: Codable, Sendable, Equatable {
    public enum Start: String, Codable, Sendable {
        /// It mounted the mountpoint itself.
        case mounted
        /// A running daemon handed the mount over to it (`cachefs mount` again, `cachefs restart`).
        case handOver = "hand-over"
        /// It found the mount and its cache in systemd's file descriptor store (a restart after a crash, or `cachefs restart` under systemd).
        case restart
    }

    public var start: Start
    /// The daemon it took over from, when it knows (a hand-over).
    public var predecessorPid: Int32?
    /// Memory files taken over, their complete blocks' bytes, and those kept for passthrough readers.
    public var inheritedFiles: Int
    public var inheritedBytes: Int
    public var inheritedHeldFiles: Int
    /// Memory files not used, each with why (a ledger torn or altered, another format or block size).
    public var droppedFiles: [String]
    /// Complete blocks let go because the new capacity had no room for them.
    public var blocksOverCapacity: Int
    /// Open files and directories the kernel held, answered on; and those whose file could not be opened again.
    public var inheritedHandles: Int
    public var handlesUnavailable: Int
    /// Records of open handles that did not check out (a crash while one was written).
    public var tornHandleRecords: Int
    /// Seconds from the start of the take-over until this daemon read the kernel's queue again.
    public var takeoverSeconds: Double?
    /// Whether systemd keeps the mount and the cache for a restart (its file descriptor store).
    public var keptBySystemd: Bool?

    public init(start: Start) {
        self.start = start
        predecessorPid = nil
        inheritedFiles = 0
        inheritedBytes = 0
        inheritedHeldFiles = 0
        droppedFiles = []
        blocksOverCapacity = 0
        inheritedHandles = 0
        handlesUnavailable = 0
        tornHandleRecords = 0
        takeoverSeconds = nil
    }
}
