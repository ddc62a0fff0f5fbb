import Reporting

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
    /// The figures, as each part of the daemon reported its own; a figure that does not apply (peers
    /// without --peers) is absent.
    public var figures: FigureValues

    public init(settings: MountSettings, pid: Int32, uptimeSeconds: Double, figures: FigureValues = FigureValues()) {
        self.settings = settings
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.figures = figures
    }

    /// A figure's value (0 if it was not reported; a labelled figure's values added up).
    public subscript(_ figure: Figure) -> UInt64 {
        figures[figure] ?? figures[labelled: figure]?.values.reduce(0, +) ?? 0
    }

    /// Whether the daemon reported this figure at all.
    public func has(_ figure: Figure) -> Bool { figures.has(figure) }

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
        let values = try decoder.container(keyedBy: FigureKey.self)
        figures = FigureValues()
        for figure in Figure.all {
            let key = FigureKey(stringValue: figure.name)
            if figure.label == nil {
                figures[figure] = try values.decodeIfPresent(UInt64.self, forKey: key)
            } else {
                figures[labelled: figure] = try values.decodeIfPresent([String: UInt64].self, forKey: key)
            }
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
        var values = encoder.container(keyedBy: FigureKey.self)
        for (figure, value) in figures.numbers {
            try values.encode(value, forKey: FigureKey(stringValue: figure.name))
        }
        for (figure, table) in figures.labelled {
            try values.encode(table, forKey: FigureKey(stringValue: figure.name))
        }
    }
}
