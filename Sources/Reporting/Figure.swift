/// One figure of a daemon's statistics. Its name is the key in `cachefs stats --json` and the row in
/// the table; the Prometheus metric is derived from it (`cachefs_` + snake_case, `_total` for a
/// counter): one name everywhere.
///
/// This catalogue is the one list of figures, in the order the table shows them. Each figure's
/// value comes from the one part of the daemon that keeps it, which reports it itself
/// (`FigureReporter`); a test checks that every figure here reaches `--json` and `/metrics`.
/// Adding a figure: a case and its line in `definition` here, and a line in its owner's `report(into:)`.
public enum Figure: String, CaseIterable, Hashable, Sendable {
    case cachedBytes, cachedBlocks, reservedBytes, hits, misses, coalescedMisses, evictions, evictedBytes
    case pinnedBytes, pinnedFiles, pinnedCachedBytes, unreturnedBytes, holePunchFailures
    case readRequests, bytesRead, memoryReads, memoryReadBytes, peerReads, peerReadBytes, sourceReads, sourceReadBytes
    case extendedAttributeRequests, directIOOpens, failedOperations
    case passthroughOpens, passthroughFiles, passthroughBytes
    case bytesFromSource, bytesFromPeers, sourceErrors, sourceTimeouts, sourceReattaches, sourceUnavailable
    case knownNodes, sourceHandles, sourceHandleReopens
    case prefetchQueuedBlocks, prefetchedBlocks, prefetchSkippedBlocks
    case peerRequests, blocksFromPeers, blocksFromHolders, blocksFromOwners, holdingsQueries, holdersFound, ownerRequests
    case ownerDeadlinesMissed, peerNotFound, peerFailures, peerFallbacks, peersInBackoff
    case servedBlocks, servedBytes, servedNotResident, servedRefused, holdingsServed, blocksLoadedForPeers, bytesLoadedForPeers

    public enum Kind: Sendable { case counter, gauge }
    public enum Unit: Sendable { case count, bytes }
    /// The table's sections, in order.
    public enum Group: String, CaseIterable, Sendable { case cache, reads, passthrough, source, prefetch, peers }

    /// Every figure, in the order the table shows them.
    public static var all: [Figure] { allCases }

    public var name: String { rawValue }
    public var kind: Kind { definition.kind }
    public var unit: Unit { definition.unit }
    public var group: Group { definition.group }
    public var help: String { definition.help }
    /// For a figure with a value per label (per FUSE operation), the label's name; nil for one value.
    public var label: String? { definition.label }

    public var prometheusName: String {
        var snake = "cachefs_"
        for character in name {
            if character.isUppercase { snake += "_" + character.lowercased() } else { snake.append(character) }
        }
        return kind == .counter ? snake + "_total" : snake
    }

    private struct Definition {
        var kind: Kind
        var unit: Unit
        var group: Group
        var help: String
        var label: String?

        init(_ kind: Kind, _ unit: Unit, _ group: Group, _ help: String, label: String? = nil) {
            (self.kind, self.unit, self.group, self.help, self.label) = (kind, unit, group, help, label)
        }
    }

    private var definition: Definition {
        switch self {
        case .cachedBytes: Definition(.gauge, .bytes, .cache, "File data in memory, pinned files included.")
        case .cachedBlocks: Definition(.gauge, .count, .cache, "Blocks in memory.")
        case .reservedBytes: Definition(.gauge, .bytes, .cache, "Capacity held by block loads in flight.")
        case .hits: Definition(.counter, .count, .cache, "Block lookups answered from memory.")
        case .misses: Definition(.counter, .count, .cache, "Block lookups that loaded the block.")
        case .coalescedMisses:
            Definition(.counter, .count, .cache, "Block lookups that waited for another reader's load of the same block.")
        case .evictions: Definition(.counter, .count, .cache, "Blocks evicted to make room.")
        case .evictedBytes: Definition(.counter, .bytes, .cache, "Bytes of the blocks evicted.")
        case .pinnedBytes: Definition(.gauge, .bytes, .cache, "Capacity held by pinned files: their full sizes.")
        case .pinnedFiles: Definition(.gauge, .count, .cache, "Pinned files.")
        case .pinnedCachedBytes: Definition(.gauge, .bytes, .cache, "Bytes of pinned files loaded so far.")
        case .unreturnedBytes:
            Definition(
                .gauge, .bytes, .cache,
                "Memory of evicted blocks that could not be given back to the system (a failed hole punch), still counted against the capacity."
            )
        case .holePunchFailures:
            Definition(.counter, .count, .cache, "Evicted blocks whose memory could not be given back (fallocate PUNCH_HOLE failed).")

        case .readRequests: Definition(.counter, .count, .reads, "Read requests from the kernel.")
        case .bytesRead: Definition(.counter, .bytes, .reads, "Bytes returned to the kernel's read requests.")
        case .memoryReads: Definition(.counter, .count, .reads, "Reads whose blocks were all in memory.")
        case .memoryReadBytes: Definition(.counter, .bytes, .reads, "Bytes of those reads.")
        case .peerReads: Definition(.counter, .count, .reads, "Reads that needed a block from a peer, none from the source.")
        case .peerReadBytes: Definition(.counter, .bytes, .reads, "Bytes of those reads.")
        case .sourceReads:
            Definition(.counter, .count, .reads, "Reads that needed a block from the source (or waited for another reader's load).")
        case .sourceReadBytes: Definition(.counter, .bytes, .reads, "Bytes of those reads.")
        case .extendedAttributeRequests:
            Definition(
                .counter, .count, .reads,
                "getxattr and listxattr requests from the kernel (one at most when the source has no extended attributes).")
        case .directIOOpens:
            Definition(
                .counter, .count, .reads,
                "Opens of files with blocks still to load, read with direct I/O: each reply goes straight into the reader's buffer, not through the mount's page cache."
            )
        case .failedOperations:
            Definition(
                .counter, .count, .reads,
                "Requests from the kernel answered with an error, by FUSE operation (a lookup of a name that does not exist counts too).",
                label: "operation")

        case .passthroughOpens:
            Definition(
                .counter, .count, .passthrough,
                "Opens handed to the kernel, which reads the file from memory itself (no read request reaches the daemon).")
        case .passthroughFiles: Definition(.gauge, .count, .passthrough, "Files held in memory for passthrough opens.")
        case .passthroughBytes: Definition(.gauge, .bytes, .passthrough, "Bytes of those files.")

        case .bytesFromSource: Definition(.counter, .bytes, .source, "Bytes of blocks loaded from the source.")
        case .bytesFromPeers: Definition(.counter, .bytes, .source, "Bytes of blocks loaded from peers.")
        case .sourceErrors: Definition(.counter, .count, .source, "Block loads that failed, whatever the cause.")
        case .sourceTimeouts:
            Definition(.counter, .count, .source, "Source opens and reads given up after --source-timeout (the reader got EIO).")
        case .sourceReattaches:
            Definition(.counter, .count, .source, "Times the source root was opened again after its mount went away and came back.")
        case .sourceUnavailable:
            Definition(.counter, .count, .source, "Source calls that found its mount gone and could not reopen it (the reader got EIO).")
        case .knownNodes: Definition(.gauge, .count, .source, "Source files and directories the kernel holds a reference to.")
        case .sourceHandles: Definition(.gauge, .count, .source, "Source descriptors kept open for known files.")
        case .sourceHandleReopens:
            Definition(.counter, .count, .source, "Known files found again by name after their descriptor was let go.")

        case .prefetchQueuedBlocks: Definition(.counter, .count, .prefetch, "Blocks queued ahead of sequential readers.")
        case .prefetchedBlocks: Definition(.counter, .count, .prefetch, "Blocks loaded ahead of sequential readers.")
        case .prefetchSkippedBlocks:
            Definition(.counter, .count, .prefetch, "Queued blocks skipped: already cached, or their reader went away.")

        case .peerRequests: Definition(.counter, .count, .peers, "Block requests this instance sent to peers (holders and owners).")
        case .blocksFromPeers: Definition(.counter, .count, .peers, "Blocks peers sent, verified.")
        case .blocksFromHolders: Definition(.counter, .count, .peers, "Of those, blocks from a peer that listed them in its holdings.")
        case .blocksFromOwners:
            Definition(
                .counter, .count, .peers, "Of those, blocks from their owner (loaded there for this instance, or already in its memory).")
        case .holdingsQueries: Definition(.counter, .count, .peers, "Holdings queries sent: which blocks of a file a peer holds.")
        case .holdersFound: Definition(.counter, .count, .peers, "Holdings answers that listed at least one block.")
        case .ownerRequests:
            Definition(.counter, .count, .peers, "Requests asking a block's owner to load it, each a wait on the owner's load.")
        case .ownerDeadlinesMissed: Definition(.counter, .count, .peers, "Owner requests not answered within the owner timeout.")
        case .peerNotFound: Definition(.counter, .count, .peers, "Requests a holder could not answer from memory.")
        case .peerFailures:
            Definition(.counter, .count, .peers, "Exchanges that failed (timeout, refused, bad length or checksum, wrong token).")
        case .peerFallbacks:
            Definition(
                .counter, .count, .peers, "Blocks read from this instance's source because their owner failed, declined or was too slow.")
        case .peersInBackoff: Definition(.gauge, .count, .peers, "Peers skipped for now after failures.")
        case .servedBlocks: Definition(.counter, .count, .peers, "Blocks this instance sent to peers.")
        case .servedBytes: Definition(.counter, .bytes, .peers, "Bytes of those blocks.")
        case .servedNotResident:
            Definition(.counter, .count, .peers, "Peer requests for blocks not in memory here (not asked as owner), or of another version.")
        case .servedRefused: Definition(.counter, .count, .peers, "Peer requests refused: malformed, unsafe path, wrong token, not GET.")
        case .holdingsServed: Definition(.counter, .count, .peers, "Holdings queries this instance answered.")
        case .blocksLoadedForPeers:
            Definition(
                .counter, .count, .peers, "Blocks this instance loaded from its source as their owner, for peers (asked, or ahead of them)."
            )
        case .bytesLoadedForPeers: Definition(.counter, .bytes, .peers, "Bytes of those blocks.")
        }
    }
}

/// Figure values as their owners report them: one number per figure, or one per label for a
/// labelled figure (`Figure.label`). A figure that does not apply (peers without --peers) is absent.
public struct FigureValues: Sendable, Equatable {
    public private(set) var numbers: [Figure: UInt64] = [:]
    public private(set) var labelled: [Figure: [String: UInt64]] = [:]

    public init() {}

    /// A figure's one value.
    public subscript(_ figure: Figure) -> UInt64? {
        get { numbers[figure] }
        set {
            precondition(figure.label == nil, "\(figure.name) has a value per \(figure.label!)")
            numbers[figure] = newValue
        }
    }

    /// A labelled figure's values, by label (an empty table is a value: nothing counted yet).
    public subscript(labelled figure: Figure) -> [String: UInt64]? {
        get { labelled[figure] }
        set {
            precondition(figure.label != nil, "\(figure.name) has one value")
            labelled[figure] = newValue
        }
    }

    /// Whether the figure was reported.
    public func has(_ figure: Figure) -> Bool { numbers[figure] != nil || labelled[figure] != nil }

    /// Reports each of `figures` as 0: what the owner of figures that do not apply this time (no
    /// prefetcher) says, so that they show as nothing done rather than disappear.
    public mutating func reportZero(_ figures: [Figure]) {
        for figure in figures { self[figure] = 0 }
    }
}

/// A part of the daemon that keeps figures and reports them itself.
public protocol FigureReporter: Sendable {
    /// Sets the value of each figure this part keeps.
    func report(into figures: inout FigureValues)
}

extension FigureReporter {
    /// This part's figures alone.
    public var figures: FigureValues {
        var figures = FigureValues()
        report(into: &figures)
        return figures
    }
}

/// Whether the kernel serves wholly cached files itself (FUSE passthrough), and if not, why:
/// kept by the FUSE layer, shown by `cachefs stats`.
public struct PassthroughState: Codable, Sendable, Equatable {
    public var available: Bool
    public var reason: String?

    public init(available: Bool, reason: String?) {
        self.available = available
        self.reason = reason
    }
}
