import Dispatch
import Foundation
import HTTPServing
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's control API on a Unix socket:
///
///     GET  /stats       the StatsReport, as JSON
///     POST /warm/plan, /warm, /unpin   see WarmAPI.swift
///     POST /list        see ListingAPI.swift
///     POST /restart     see RestartAPI.swift
///
/// Requests arrive on SwiftNIO's event loops; work that may block on the
/// source runs on a dispatch queue of its own, so the loops never wait for I/O.
///
/// The socket is the daemon's alone: `claim` refuses a path another daemon answers on, and the
/// listener makes its socket where no other user can reach it before it takes the path (`ControlListener`).
public enum ControlServer {
    /// Makes sure `socketPath` is this daemon's to take, before anything is mounted: creates its
    /// directory, and refuses a socket a running daemon answers on, naming that daemon's mount. A
    /// socket nobody listens on (its daemon died) is left for the listener to replace.
    public static func claim(socketPath: String) async throws {
        try createDirectories(of: socketPath)
        guard ControlSocket.isListening(socketPath) else { return }
        if let other = try? await ControlClient(socketPath: socketPath).stats() {
            throw ControlError(
                description:
                    "control socket \(socketPath) belongs to the running cachefs mount at \(other.settings.mountpoint); give this mount another --control-socket"
            )
        }
        throw ControlError(
            description: "control socket \(socketPath) is in use by another process; give this mount another --control-socket")
    }

    /// The listener for `socketPath` (see `claim`); run it as a service.
    public static func make(
        socketPath: String,
        handler: some ControlHandler,
        onRunning: @escaping @Sendable () async -> Void
    ) throws -> ControlListener {
        try ControlListener(socketPath: socketPath, onRunning: onRunning) {
            RespondingHandler { request in await answer(request, handler: handler) }
        }
    }

    static func answer(_ request: HTTPMessage, handler: some ControlHandler) async -> HTTPMessage {
        switch (request.method, request.target) {
        case (.GET, "/stats"):
            return await onWorkQueue { () throws(ControlRequestError) in handler.stats() }
        case (.POST, "/warm/plan"):
            return await decoding(WarmPlanRequest.self, request) { body throws(ControlRequestError) in try handler.planWarm(body) }
        case (.POST, "/warm"):
            return await decoding(WarmRangeRequest.self, request) { body throws(ControlRequestError) in try handler.warm(body) }
        case (.POST, "/unpin"):
            return await decoding(UnpinRequest.self, request) { body throws(ControlRequestError) in try handler.unpin(body) }
        case (.POST, "/list"):
            return await decoding(ListRequest.self, request) { body throws(ControlRequestError) in try handler.list(body) }
        case (.POST, "/restart"):
            return await onWorkQueue { () throws(ControlRequestError) in try handler.restart() }
        case (_, "/stats"), (_, "/warm/plan"), (_, "/warm"), (_, "/unpin"), (_, "/list"), (_, "/restart"):
            return .text(.methodNotAllowed, "method not allowed")
        default:
            return .text(.notFound, "no such control request: \(request.target)")
        }
    }

    private static func decoding<Body: Decodable & Sendable, Answer: Encodable & Sendable>(
        _ type: Body.Type, _ request: HTTPMessage,
        _ work: @escaping @Sendable (Body) throws(ControlRequestError) -> Answer
    ) async -> HTTPMessage {
        let body: Body
        do {
            body = try JSONDecoder().decode(type, from: Data(buffer: request.body))
        } catch {
            return .text(.badRequest, "malformed request body: \(error)")
        }
        return await onWorkQueue { () throws(ControlRequestError) in try work(body) }
    }

    /// Blocking work: several warm requests run at once, each on its own thread.
    private static let workQueue = DispatchQueue(label: "cachefs.control.work", attributes: .concurrent)

    private static func onWorkQueue<Answer: Encodable & Sendable>(
        _ work: @escaping @Sendable () throws(ControlRequestError) -> Answer
    ) async -> HTTPMessage {
        let outcome: Result<Answer, ControlRequestError> = await withCheckedContinuation { continuation in
            workQueue.async { continuation.resume(returning: Result { () throws(ControlRequestError) in try work() }) }
        }
        switch outcome {
        case .success(let answer):
            do {
                return .response(.ok, contentType: "application/json", body: ByteBuffer(bytes: try JSONEncoder().encode(answer)))
            } catch {
                return .text(.internalServerError, "cannot encode the answer: \(error)")
            }
        case .failure(let error):
            return .text(HTTPResponseStatus(statusCode: error.status), error.message)
        }
    }

    /// Creates the directories above the socket.
    static func createDirectories(of path: String) throws {
        var directory = ""
        for component in path.split(separator: "/").dropLast() {
            directory += "/" + component
            guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                throw ControlError(description: "cannot create \(directory): \(String(cString: strerror(errno)))")
            }
        }
    }
}

/// The control socket's listener, as a service. The socket is bound in a directory of its own
/// (mode 0700, beside the socket's path), restricted to its owner (0600), and only then renamed to
/// its path: no other user can reach it at any moment, whatever the umask, and the rename replaces
/// a socket left by a daemon that died. When the listener ends, the socket goes.
public final class ControlListener: Service, Sendable {
    public let socketPath: String
    private let listener: HTTPListener
    /// The private directory the socket is bound in, and the socket's name in it.
    private let bindDirectory: String
    private let boundPath: String
    /// Set once the socket has been renamed to `socketPath`: from then on the path is this daemon's to remove.
    private let published = Published()

    private final class Published: Sendable {
        let flag = Atomic<Bool>(false)
    }

    init(
        socketPath: String, onRunning: @escaping @Sendable () async -> Void,
        makeHandler: @escaping @Sendable () -> any ChannelHandler
    ) throws {
        self.socketPath = socketPath
        let parent = (socketPath as NSString).deletingLastPathComponent
        var template = Array((parent + "/.cachefs-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { // mode 0700
            throw ControlError(description: "cannot create a directory beside \(socketPath): \(String(cString: strerror(errno)))")
        }
        bindDirectory = String(cString: made)
        boundPath = bindDirectory + "/s"
        let (boundPath, bindDirectory, published) = (self.boundPath, self.bindDirectory, self.published)
        listener = HTTPListener(
            target: .unixSocket(boundPath), makeHandler: makeHandler,
            onRunning: { _ in
                guard chmod(boundPath, 0o600) == 0, rename(boundPath, socketPath) == 0 else {
                    throw ControlError(
                        description: "cannot move the control socket into place at \(socketPath): \(String(cString: strerror(errno)))")
                }
                rmdir(bindDirectory) // empty now
                published.flag.store(true, ordering: .releasing)
                await onRunning()
            })
    }

    public func run() async throws {
        defer {
            unlink(boundPath) // only there if the socket never moved
            rmdir(bindDirectory)
            if published.flag.load(ordering: .acquiring) { unlink(socketPath) }
        }
        try await listener.run()
    }
}
