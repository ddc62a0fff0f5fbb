/// The warm-up and pinning part of the control API, as JSON bodies:
///
///     POST /warm/plan   WarmPlanRequest  -> WarmPlan       list (and with `pin`, pin) the files
///     POST /warm        WarmRangeRequest -> WarmRangeResult load one range of one file
///     POST /unpin       UnpinRequest     -> UnpinResult
///
/// Paths are relative to the mountpoint (= the source root). A client warms a
/// file range by range so it can show progress.
public struct WarmPlanRequest: Codable, Sendable {
    public var paths: [String]
    /// Pin every listed file, all or none: refused (409) if they do not fit the capacity.
    public var pin: Bool

    public init(paths: [String], pin: Bool) {
        self.paths = paths
        self.pin = pin
    }
}

public struct WarmPlan: Codable, Sendable {
    public struct File: Codable, Sendable, Equatable {
        public var path: String
        public var size: Int64

        public init(path: String, size: Int64) {
            self.path = path
            self.size = size
        }
    }

    public var files: [File]
    public var pinned: Bool

    public init(files: [File], pinned: Bool) {
        self.files = files
        self.pinned = pinned
    }

    public var totalBytes: Int64 { files.reduce(0) { $0 + $1.size } }
}

public struct WarmRangeRequest: Codable, Sendable {
    public var path: String
    public var offset: Int64
    public var length: Int64

    public init(path: String, offset: Int64, length: Int64) {
        self.path = path
        self.offset = offset
        self.length = length
    }
}

public struct WarmRangeResult: Codable, Sendable {
    /// Bytes of the range now cached, and the file's size when it was loaded.
    public var bytes: Int64
    public var fileSize: Int64

    public init(bytes: Int64, fileSize: Int64) {
        self.bytes = bytes
        self.fileSize = fileSize
    }
}

public struct UnpinRequest: Codable, Sendable {
    public var paths: [String]

    public init(paths: [String]) { self.paths = paths }
}

public struct UnpinResult: Codable, Sendable {
    public var files: Int
    public var bytes: Int

    public init(files: Int, bytes: Int) {
        self.files = files
        self.bytes = bytes
    }
}

/// What the daemon does for each control request. The server calls these off
/// SwiftNIO's event loops (they may block on source I/O), from any thread.
public protocol ControlHandler: Sendable {
    func stats() -> StatsReport
    func planWarm(_ request: WarmPlanRequest) throws(ControlRequestError) -> WarmPlan
    func warm(_ request: WarmRangeRequest) throws(ControlRequestError) -> WarmRangeResult
    func unpin(_ request: UnpinRequest) throws(ControlRequestError) -> UnpinResult
    /// See ListingAPI.swift.
    func list(_ request: ListRequest) throws(ControlRequestError) -> ListAnswer
    /// See RestartAPI.swift.
    func restart() throws(ControlRequestError) -> RestartAnswer
}

/// A refused control request: an HTTP status and the one-line reason the client prints.
public struct ControlRequestError: Error, CustomStringConvertible {
    public var status: Int
    public var message: String

    public init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    public static func badRequest(_ message: String) -> Self { Self(status: 400, message: message) }
    public static func notFound(_ message: String) -> Self { Self(status: 404, message: message) }
    public static func conflict(_ message: String) -> Self { Self(status: 409, message: message) }
}
