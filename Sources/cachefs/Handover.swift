import BlockCache
import Continuity
import ControlPlane
import Foundation
import FuseBridge
import Logging
import MirrorFS
import Threading

#if canImport(Glibc)
import Glibc
#endif

/// The hand-over: a daemon started on a mountpoint another daemon serves takes the mount over
/// through a Unix socket beside the control socket, and the other exits.
///
///     new → old   hello      the new daemon's settings and the formats it reads
///     old → new   refused    one line (a setting that needs a new mount, a format it cannot read,
///                            requests that did not finish in time); the old daemon serves on
///     old         stops reading the kernel's queue (requests wait there), lets what it read be
///                 answered, stops loads into the cache and gives up the memory files
///     old → new   descriptors  /dev/fuse, the mount keeper's socket, the state journal, each
///                            version's memory file and ledger (in batches)
///     old → new   nodes      the node table (NodeSnapshot)
///     old → new   state      the old daemon's settings and pid
///     new → old   taken | failed   whether the new daemon could read all of it
///     old → new   released   the old daemon will never serve again; it exits (or, watched by a
///                            supervisor, waits for SIGTERM holding nothing), which closes the socket
///
/// Until `released` nothing is changed: a failure anywhere leaves the old daemon serving, with
/// its cache, and the new one exits with the reason.
enum Handover {
    enum Message: UInt8 {
        case hello = 1, refused, descriptors, nodes, state, taken, failed, released
    }

    struct Hello: Codable {
        var settings: MountSettings
        var pid: Int32
        var journalFormat: UInt32
        var nodeFormat: UInt32
    }

    struct Refusal: Codable {
        var reason: String
    }

    /// Each descriptor of a `descriptors` message, by its `Role`.
    struct Roles: Codable {
        var roles: [String]
    }

    /// What a descriptor of a `descriptors` message is, as the sender names it and the receiver reads it.
    enum Role {
        static let fuse = "fuse", journal = "journal", keeper = "keeper"
        /// A version's memory file's ledger: it follows its memory file, in the same message.
        static let ledger = "ledger"
        private static let memoryPrefix = "memory ", unnamed = "-"

        /// A version's memory file, with the name it is kept under outside the process (if any).
        static func memory(named name: String?) -> String { memoryPrefix + (name ?? unnamed) }

        /// The memory file a role names (`.some(nil)`: one without a name); nil for any other role.
        static func memoryFile(_ role: String) -> String?? {
            guard role.hasPrefix(memoryPrefix) else { return nil }
            let name = String(role.dropFirst(memoryPrefix.count))
            return .some(name == unnamed ? nil : name)
        }
    }

    /// How long either daemon waits for the other's next message before giving the hand-over up
    /// (the old daemon then serves on).
    static let answerTimeoutSeconds = 60

    struct State: Codable {
        var settings: MountSettings
        var pid: Int32
    }

    /// The socket beside the control socket.
    static func socketPath(controlSocket: String) -> String { controlSocket + ".handover" }

    static func encode<Value: Encodable>(_ value: Value) -> [UInt8] { Array((try? JSONEncoder().encode(value)) ?? Data()) }

    static func decode<Value: Decodable>(_ type: Value.Type, _ bytes: [UInt8]) -> Value? {
        try? JSONDecoder().decode(type, from: Data(bytes))
    }

    /// Why the mount cannot go to a daemon with `new` settings (one line), or nil.
    static func refusal(of new: MountSettings, by old: MountSettings, record: MountRecord?) -> String? {
        if new.source != old.source {
            return "\(old.mountpoint) mirrors \(old.source); a hand-over keeps the source (unmount to mirror \(new.source))"
        }
        if new.blockSize != old.blockSize {
            return
                "--block-size \(ByteCount.format(new.blockSize)) needs a new mount (\(old.mountpoint) has \(ByteCount.format(old.blockSize)) blocks); the running daemon serves on"
        }
        if new.allowOther != old.allowOther {
            return "--allow-other \(new.allowOther ? "on" : "off") needs a new mount (it is a mount option); the running daemon serves on"
        }
        if new.passthrough, let record, !record.negotiation.passthroughNegotiated, old.passthrough == false {
            return "--passthrough on needs a new mount (the mount was set up without it); the running daemon serves on"
        }
        return nil
    }
}

/// The old daemon's side: listens beside the control socket and hands the mount over on request.
///
/// Threads: one thread accepts and serves one hand-over at a time; `stop` ends it and waits for it.
final class HandoverServer: @unchecked Sendable {
    // @unchecked: `listener` is set before the thread starts and closed once by `stop`.
    private let path: String
    private let listener: Int32
    private let context: Context
    /// The accepting thread, joined by `stop`.
    private let thread = OwnedThreads()
    private let logger: Logger

    /// What a hand-over takes from the daemon.
    struct Context {
        let settings: MountSettings
        let server: FuseServer
        let cache: BlockCache
        let filesystem: MirrorFilesystem
        let succession: Succession
        let control: DaemonControl
        /// Become a process that waits for SIGTERM after handing over (someone watches this one), rather than exit.
        let waitAfterwards: Bool
    }

    init(context: Context, logger: Logger) throws {
        path = Handover.socketPath(controlSocket: context.settings.controlSocket)
        do {
            listener = try DescriptorChannel.listen(at: path)
        } catch {
            throw UsageError("hand-over socket \(path): \(error)")
        }
        self.context = context
        self.logger = logger
        thread.start(name: "handover") { [self] in acceptLoop() }
    }

    /// Stops accepting and waits for the thread (a hand-over in progress finishes first).
    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        _ = thread.join()
        close(listener)
        unlink(path)
    }

    private func acceptLoop() {
        while true {
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            let channel = DescriptorChannel(descriptor: connection)
            channel.setReceiveTimeout(seconds: Handover.answerTimeoutSeconds) // a successor that stops answering gives the mount back
            serve(channel)
        }
    }

    private func serve(_ channel: DescriptorChannel) {
        guard let message = try? channel.receive(), message.kind == Handover.Message.hello.rawValue,
            let hello = Handover.decode(Handover.Hello.self, message.payload)
        else { return }
        message.descriptors.forEach { close($0) }
        let settings = context.settings
        func refuse(_ reason: String) {
            logger.notice("hand-over refused", metadata: ["to pid": "\(hello.pid)", "reason": "\(reason)"])
            try? channel.send(kind: Handover.Message.refused.rawValue, Handover.encode(Handover.Refusal(reason: reason)))
        }
        if let reason = Handover.refusal(of: hello.settings, by: settings, record: context.succession.journal.mount) {
            return refuse(reason)
        }
        guard hello.journalFormat == StateJournal.format, hello.nodeFormat == NodeSnapshot.format else {
            return refuse(
                "the running daemon keeps its state in format \(StateJournal.format)/\(NodeSnapshot.format), which this cachefs cannot read; unmount and mount again to upgrade"
            )
        }
        let started = ContinuousClock.now
        logger.notice(
            "handing the mount over", metadata: ["to pid": "\(hello.pid)", "requests in flight": "\(context.server.requestsInFlight)"])
        context.control.handingOver.store(true, ordering: .releasing)
        defer { context.control.handingOver.store(false, ordering: .releasing) }
        let surrendered: SurrenderedMemory
        switch Succession.standDown(server: context.server, cache: context.cache, grace: settings.shutdownGrace) {
        case .success(let memory): surrendered = memory
        case .failure(let refusal): return refuse(refusal.reason)
        }
        func resume(_ why: String) {
            context.cache.resumeCustody()
            context.server.resumeReading()
            logger.warning("the hand-over failed; serving on", metadata: ["reason": "\(why)"])
        }
        do {
            try send(surrendered, through: channel)
        } catch {
            return resume("sending the state: \(error)")
        }
        guard let answer = try? channel.receive() else { return resume("the new daemon stopped answering") }
        answer.descriptors.forEach { close($0) }
        guard answer.kind == Handover.Message.taken.rawValue else {
            return resume(Handover.decode(Handover.Refusal.self, answer.payload)?.reason ?? "the new daemon did not take it")
        }
        // From here on this daemon never serves again, whatever happens. Its control socket's path goes
        // first: its listener lives until the process ends, which the successor cannot wait for exactly,
        // and a listener still at the path would make the successor's claim of it fail.
        unlink(settings.controlSocket)
        try? channel.send(kind: Handover.Message.released.rawValue, [])
        logger.notice(
            "handed the mount over",
            metadata: [
                "to pid": "\(hello.pid)", "paused for": "\(ContinuousClock.now - started)",
                "then": "\(context.waitAfterwards ? "waiting for SIGTERM" : "exiting")",
            ])
        withExtendedLifetime(surrendered) { Self.leave(waiting: context.waitAfterwards, mountpoint: settings.mountpoint) }
    }

    private func send(_ surrendered: SurrenderedMemory, through channel: DescriptorChannel) throws {
        var entries: [(role: String, descriptor: Int32)] = [
            (Handover.Role.fuse, context.server.descriptor), (Handover.Role.journal, context.succession.journal.descriptor),
        ]
        if let keeper = context.succession.keeperSocket { entries.append((Handover.Role.keeper, keeper)) }
        for file in surrendered.files {
            entries.append((Handover.Role.memory(named: file.name), file.memory))
            entries.append((Handover.Role.ledger, file.ledger))
        }
        var start = 0
        while start < entries.count {
            var end = min(entries.count, start + DescriptorChannel.maximumDescriptors)
            if end < entries.count, entries[end].role == Handover.Role.ledger { end -= 1 } // a memory file and its ledger travel together
            let batch = entries[start..<end]
            try channel.send(
                kind: Handover.Message.descriptors.rawValue, Handover.encode(Handover.Roles(roles: batch.map(\.role))),
                descriptors: batch.map(\.descriptor))
            start = end
        }
        let (nodes, nextID) = context.filesystem.exportNodes()
        try channel.send(kind: Handover.Message.nodes.rawValue, NodeSnapshot.encode(nodes, nextID: nextID))
        try channel.send(kind: Handover.Message.state.rawValue, Handover.encode(Handover.State(settings: context.settings, pid: getpid())))
    }

    /// Leaves without touching anything: no unmount, no cleanup that could reach the mount or the
    /// memory files (they are the new daemon's). Watched, it turns into a process that only waits for SIGTERM.
    private static func leave(waiting: Bool, mountpoint: String) -> Never {
        if waiting {
            InheritedDescriptors.closeOwnOnExec()
            let arguments = ["cachefs", HandedOverCommand.configuration.commandName!, "--mountpoint", mountpoint]
            let argv = arguments.map { strdup($0) } + [nil]
            var none = sigset_t()
            sigemptyset(&none)
            pthread_sigmask(SIG_SETMASK, &none, nil)
            execv("/proc/self/exe", argv)
        }
        _exit(0)
    }
}
