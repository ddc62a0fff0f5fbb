import ArgumentParser
import ControlPlane
import HTTPServing
import Logging

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount SOURCE read-only at MOUNTPOINT, caching file data in memory (the default command).",
        discussion: """
            Without -f the command returns once the mount answers, and the daemon keeps serving in the \
            background. Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`, or send the daemon \
            SIGTERM or SIGINT.
            With --spec FILE, a PAI-EAS service JSON (or its storage list) names the mounts instead: each \
            storage entry with a cache object is mounted (cache.path at mount_path, cache.capacity), with the \
            other options given here; with -f one process runs them all until SIGTERM.
            """
    )

    @Argument(help: "The directory to mirror: an object-store FUSE mount, a NAS, or any directory.")
    var source: String?

    @Argument(help: "An existing directory where the read-only mirror appears.")
    var mountpoint: String?

    @Option(
        parsing: .unconditional,
        help:
            "Memory for cached file data: 20G, 20GiB, 512M, 1.5G or bytes (K/M/G/T are powers of 1024). Required, unless --spec gives it.",
        transform: ByteCount.init(parsing:))
    var capacity: ByteCount?

    @Option(
        help: ArgumentHelp(
            "Mount every cache entry of this PAI-EAS service JSON (or its storage list) instead of SOURCE MOUNTPOINT --capacity.",
            valueName: "file"))
    var spec: String?

    @Flag(name: .shortAndLong, help: "Stay in the foreground (for systemd and containers); logs go to standard error.")
    var foreground = false

    @Flag(help: "Let other users read the mount (needs root, or user_allow_other in /etc/fuse.conf).")
    var allowOther = false

    @Option(parsing: .unconditional, help: "Size of a cached block: a power of two from 64K to 64M.", transform: ByteCount.init(parsing:))
    var blockSize = ByteCount(bytes: MountSettings.defaults.blockSize)

    @Option(help: "Seconds the kernel may cache names and attributes; changes in the source show within this time.")
    var metadataTimeout = MountSettings.defaults.metadataTimeout

    @Option(help: "Seconds a source read may stall before the reader gets EIO (0: wait forever).")
    var sourceTimeout = MountSettings.defaults.sourceTimeout ?? 0

    @Option(help: "Most FUSE worker threads; each waits on the source while it serves a miss.")
    var threads = MountSettings.defaults.threads

    @Option(help: "Blocks loaded ahead of a sequential reader, in parallel (0 turns prefetching off).")
    var prefetchDepth = MountSettings.defaults.prefetchDepth

    @Option(help: "Adjacent blocks one prefetch lane loads in order before the next chunk is handed out.")
    var prefetchChunk = MountSettings.defaults.prefetchChunk

    @Option(
        help:
            "Threads that load prefetched blocks: at most this many prefetch reads reach the source at once, and at most this many lanes serve one file."
    )
    var prefetchThreads = MountSettings.defaults.prefetchThreads

    @Option(parsing: .unconditional, help: "The kernel's read-ahead window on the mount.", transform: ByteCount.init(parsing:))
    var readAhead = ByteCount(bytes: MountSettings.defaults.readAhead)

    @Option(
        help: ArgumentHelp("Let the kernel read wholly cached files from memory itself (FUSE passthrough): on or off.", valueName: "on|off")
    )
    var passthrough = Switch(MountSettings.defaults.passthrough)

    @Option(
        help: ArgumentHelp(
            "Read files not yet wholly cached with direct I/O, each reply straight into the reader's buffer: on or off (off: through the page cache, faster for readers of cold files in small pieces such as 4 KiB).",
            valueName: "on|off"))
    var directIO = Switch(MountSettings.defaults.directIO)

    @Flag(help: "Accept a capacity larger than this machine's (or container's) memory.")
    var force = false

    @Option(help: "Path of the control socket `cachefs stats` talks to (default: derived from the mountpoint).")
    var controlSocket: String?

    @Option(help: "Least severe log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel = MountSettings.defaults.logLevel

    @Option(help: "Append the daemon's log to this file (in the background, logs are discarded otherwise).")
    var logFile: String?

    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, shown by `cachefs stats`).",
            valueName: "host:port"))
    var metrics: String?

    @Option(
        help: ArgumentHelp(
            "Warm source files matching this glob (relative to SOURCE; * also matches /) in the background at start. Repeatable.",
            valueName: "glob"))
    var preload: [String] = []

    @Flag(help: "Pin the --preload files, so they are never evicted (refused, with a log line, if they do not fit the capacity).")
    var preloadPin = false

    @Option(help: "On SIGTERM or SIGINT, wait up to this many seconds for reads in progress before unmounting.")
    var shutdownGrace = MountSettings.defaults.shutdownGrace
    @Option(
        help: ArgumentHelp("Serve this instance's cached blocks to peers on HOST:PORT (TCP), e.g. 0.0.0.0:7070.", valueName: "host:port"))
    var listen: String?

    @Option(
        help: ArgumentHelp(
            "Peers to ask for missing blocks: HOST:PORT,HOST:PORT or dns:NAME:PORT (every address of NAME, re-resolved every 10 s).",
            valueName: "peers"))
    var peers: String?

    @Option(help: ArgumentHelp("A file holding the shared secret peers must present (Authorization: Bearer).", valueName: "path"))
    var peerTokenFile: String?

    func validate() throws {
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be between 1 and 1024") }
        guard (0...4096).contains(prefetchDepth) else { throw ValidationError("--prefetch-depth must be between 0 and 4096") }
        guard (1...1024).contains(prefetchChunk) else { throw ValidationError("--prefetch-chunk must be between 1 and 1024") }
        guard (1...256).contains(prefetchThreads) else { throw ValidationError("--prefetch-threads must be between 1 and 256") }
        guard metadataTimeout >= 0, metadataTimeout.isFinite else {
            throw ValidationError("--metadata-timeout must be zero or more seconds")
        }
        guard shutdownGrace >= 0, shutdownGrace <= 600 else { throw ValidationError("--shutdown-grace must be between 0 and 600 seconds") }
        if preloadPin && preload.isEmpty { throw ValidationError("--preload-pin needs at least one --preload GLOB") }
        guard sourceTimeout >= 0, sourceTimeout <= 86_400 else { throw ValidationError("--source-timeout must be from 0 to 86400 seconds") }
        let block = blockSize.bytes
        guard block & (block - 1) == 0, (64 << 10)...(64 << 20) ~= block else {
            throw ValidationError("--block-size must be a power of two from 64K to 64M, not \(blockSize)")
        }
        if spec != nil {
            guard source == nil, mountpoint == nil, capacity == nil else {
                throw ValidationError("--spec names each mount's SOURCE, MOUNTPOINT and capacity; give none of them with it")
            }
            return
        }
        guard source != nil, mountpoint != nil else { throw ValidationError("missing SOURCE and MOUNTPOINT (or --spec FILE)") }
        guard let capacity else { throw ValidationError("missing --capacity SIZE, the memory for cached file data (e.g. 20G)") }
        guard capacity.bytes >= block else {
            throw ValidationError("--capacity \(capacity) is smaller than one block (\(blockSize))")
        }
    }

    func run() throws {
        if let reason = ProcFilesystem.foreignNamespace() { throw UsageError(reason) }
        if let spec { return try SpecMounts.mount(ServiceSpec(contentsOf: spec), options: self) }
        let settings = try mountSettings()
        if foreground {
            try Daemon(settings: settings, readiness: nil).run()
        } else {
            try BackgroundLauncher.launch(settings: settings)
        }
    }
}

extension MountCommand {
    /// The settings this command line asks for, checked against this machine. First a dead cachefs
    /// mount left at the mountpoint is removed (the path cannot be checked while it is there); then the
    /// prefetch window is held to its limit, a quarter of the capacity (the daemon's log says when it is at it).
    func mountSettings() throws -> MountSettings {
        // Not when systemd kept a dead daemon's mount for this one: it is not stale, it waits for us.
        if let mountpoint, !FileDescriptorStore.holdsAMount { try MountSettings.clearStaleMount(at: MountSettings.absolute(mountpoint)) }
        var settings = try MountSettings(self)
        settings.prefetchDepth = min(settings.prefetchDepth, settings.prefetchDepthLimit)
        return settings
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `on` or `off`, as an option's value (a flag could not be turned off from fstab's `-o`).
struct Switch: ExpressibleByArgument {
    let isOn: Bool

    init(_ isOn: Bool) { self.isOn = isOn }

    init?(argument: String) {
        switch argument.lowercased() {
        case "on", "yes", "true", "1": isOn = true
        case "off", "no", "false", "0": isOn = false
        default: return nil
        }
    }

    var defaultValueDescription: String { isOn ? "on" : "off" }
}
