import BlockCache
import Continuity
import ControlPlane
import Foundation
import FuseBridge
import Logging
import MirrorFS
import SystemPackage
import Threading

#if canImport(Glibc)
import Glibc
#endif

/// How this daemon comes to serve its mount, and what it keeps for the one after it.
///
/// It mounts the mountpoint itself, or takes the mount over from a daemon serving it (the
/// hand-over, see Handover), or finds it in systemd's store after a restart (see
/// FileDescriptorStore). Either way it keeps, for its successor, the state journal (open handles,
/// node IDs, pins, the mount record) and a mount keeper (see MountKeeper).
final class Succession: @unchecked Sendable {
    // @unchecked: `keeperSocket` is set once, by `mounted`, before any hand-over can read it.
    let journal: StateJournal
    let inheritance: Inheritance?
    /// Keeps memory files where they outlive the daemon (systemd's store); nil outside systemd.
    let registry: (any MemoryFileRegistry)?
    /// This daemon's end of the mount keeper's socket, once it has a keeper.
    private(set) var keeperSocket: Int32?
    private let began = ContinuousClock.now

    /// What a predecessor left: the mount's channel, its keepers, its memory files, its node table.
    struct Inheritance {
        var start: ContinuityState.Start
        var predecessorPid: Int32?
        /// The kernel's channel of the mount; nil when the mount could not be kept (this daemon mounts
        /// anew, with the cache it inherited).
        var fuse: Int32?
        /// The sockets of the keepers that watch the mount, with the names they are stored under (if any).
        var keepers: [(name: String?, descriptor: Int32)]
        var memory: [MemoryFilePair]
        /// The node table of a hand-over; nil after a crash (only what the journal kept).
        var nodes: (nodes: [NodeRecord], nextID: UInt64)?
        var record: MountRecord?
        /// Pinned versions, for a cache that is kept while the mount is not.
        var pins: [FileVersion] = []
    }

    /// The systemd store this daemon keeps the mount in, if it runs under systemd.
    private let store: FileDescriptorStore?

    private init(journal: StateJournal, inheritance: Inheritance?, store: FileDescriptorStore?) {
        self.journal = journal
        self.inheritance = inheritance
        self.store = store
        registry = store
    }

    /// Finds out how the mount is to be had: from what systemd kept (a restart), from a daemon serving
    /// the mountpoint (a hand-over), or by mounting it.
    /// - Parameter kept: the descriptors systemd passed back (`FileDescriptorStore.takeInherited`).
    static func begin(
        settings: MountSettings, systemd: SystemdNotifier?, kept: [(name: String, descriptor: Int32)],
        logger: Logger
    ) throws -> Succession {
        if let (journal, inheritance) = restore(kept, settings: settings, logger: logger) {
            return Succession(
                journal: journal, inheritance: inheritance, store: systemd.map { FileDescriptorStore(notifier: $0, journal: journal) })
        }
        if let entry = MountTable.current().last(where: { $0.mountpoint == settings.mountpoint }), entry.type == "fuse.cachefs" {
            let (journal, inheritance) = try takeOver(settings, logger: logger)
            return Succession(
                journal: journal, inheritance: inheritance, store: systemd.map { FileDescriptorStore(notifier: $0, journal: journal) })
        }
        do {
            let journal = try StateJournal.create()
            return Succession(
                journal: journal, inheritance: nil, store: systemd.map { FileDescriptorStore(notifier: $0, journal: journal) })
        } catch {
            throw UsageError("cannot create the state journal: \(error)")
        }
    }

    /// Mounts, or takes the inherited mount over: the cache adopts the memory files, the mirror the
    /// nodes and handles, the FUSE session the kernel's channel. Call before the session runs.
    func attach(
        server: FuseServer, cache: BlockCache, filesystem: MirrorFilesystem, control: DaemonControl,
        settings: MountSettings, logger: Logger
    ) throws {
        guard let inheritance else {
            try server.mount(at: settings.mountpoint)
            var state = ContinuityState(start: .mounted)
            state.keptBySystemd = keptBySystemd
            control.continuity.withLock { $0 = state }
            return
        }
        if inheritance.fuse == nil { try server.mount(at: settings.mountpoint) }
        let adoption = cache.adopt(inheritance.memory)
        let pins = inheritance.fuse == nil ? inheritance.pins : journal.pins()
        if !pins.isEmpty {
            do {
                try cache.pin(pins)
            } catch {
                logger.warning(
                    "the inherited pins do not fit the capacity; files are not pinned",
                    metadata: ["pins": "\(pins.count)", "reason": "\(error)"])
            }
        }
        var handles: (records: [OpenHandleRecord], generations: [Int: UInt32], torn: Int) = ([], [:], 0)
        var report = InheritanceReport()
        if let fuse = inheritance.fuse, let record = inheritance.record {
            handles = journal.openHandles()
            report = filesystem.inherit(
                nodes: inheritance.nodes?.nodes, nextNodeID: max(inheritance.nodes?.nextID ?? 0, journal.nodeIDsReserved + 1),
                handles: handles.records, generations: handles.generations)
            try server.adopt(descriptor: fuse, negotiation: record.negotiation, mountpoint: settings.mountpoint)
        }
        var state = ContinuityState(start: inheritance.start)
        state.predecessorPid = inheritance.predecessorPid
        state.inheritedFiles = adoption.files
        state.inheritedBytes = adoption.bytes
        state.inheritedHeldFiles = adoption.heldFiles
        state.droppedFiles = adoption.dropped
        state.blocksOverCapacity = adoption.blocksOverCapacity
        state.inheritedHandles = report.handles
        state.handlesUnavailable = report.filesUnavailable
        state.tornHandleRecords = handles.torn
        state.takeoverSeconds = (ContinuousClock.now - began) / .seconds(1)
        state.keptBySystemd = keptBySystemd
        control.continuity.withLock { $0 = state }
        for reason in adoption.dropped { logger.warning("an inherited memory file was not used", metadata: ["reason": "\(reason)"]) }
        logger.notice(
            "took over the mount",
            metadata: [
                "from": "\(inheritance.start.rawValue)\(inheritance.predecessorPid.map { " of pid \($0)" } ?? "")",
                "cached": "\(ByteCount.format(adoption.bytes)) in \(adoption.files) files (\(adoption.heldFiles) held)",
                "dropped": "\(adoption.dropped.count) files, \(adoption.blocksOverCapacity) blocks over capacity",
                "nodes": "\(report.nodes)", "handles": "\(report.handles) (\(report.filesUnavailable) unavailable, \(handles.torn) torn)",
                "seconds": "\(String(format: "%.3f", state.takeoverSeconds ?? 0))",
            ])
    }

    /// Once the mount answers: a new mount's record goes into the journal, and the mount gets a
    /// keeper of this daemon's (a predecessor's keeper is retired: it exits without unmounting).
    func mounted(server: FuseServer, settings: MountSettings, logger: Logger) {
        let device = MountTable.current().last(where: { $0.mountpoint == settings.mountpoint })?.device ?? ""
        let mountedHere = inheritance?.fuse == nil
        if mountedHere {
            let numbers = device.split(separator: ":").compactMap { UInt32($0) }
            if let negotiation = server.negotiation, numbers.count == 2 {
                let record = MountRecord(
                    mountpoint: settings.mountpoint, source: settings.source, allowOther: settings.allowOther,
                    blockSize: settings.blockSize, deviceMajor: numbers[0], deviceMinor: numbers[1],
                    initRequest: negotiation.initRequest, kernelFlags2: negotiation.kernelFlags2)
                if !journal.writeMountRecord(record.encoded()) { logger.warning("could not record the mount for a successor") }
            } else {
                logger.warning("the mount's INIT or device is unknown; it cannot be handed over", metadata: ["device": "\(device)"])
            }
        }
        // Under systemd the mount's channel and the journal go into the store, so that a restart finds them.
        if let store, mountedHere || inheritance?.start == .handOver {
            store.store([server.descriptor], name: FileDescriptorStore.fuseName)
            store.store([journal.descriptor], name: FileDescriptorStore.journalName)
        }
        do {
            keeperSocket = try MountKeeper.start(mountpoint: settings.mountpoint, device: journal.mount?.device ?? device)
        } catch {
            logger.warning(
                "no mount keeper: if this daemon dies, its mount stays until the next mount removes it", metadata: ["error": "\(error)"])
        }
        guard let keeperSocket else { return }
        store?.store([keeperSocket], name: FileDescriptorStore.keeperPrefix + "\(getpid())")
        for (name, old) in inheritance?.keepers ?? [] {
            MountKeeper.retire(old)
            if let name { store?.remove(name: name) }
        }
    }

    /// Whether systemd keeps this daemon's mount and cache for a restart.
    var keptBySystemd: Bool { store != nil }

    /// `cachefs restart` under systemd: stops reading the kernel's queue once what was read is answered,
    /// stops loads, and exits (status 75) shortly after answering, for systemd to start the daemon again
    /// (Restart=on-failure) with what it keeps: the mount's channel, the journal, the memory files.
    func prepareRestart(server: FuseServer, cache: BlockCache, grace: Double, logger: Logger) throws(ControlRequestError) -> RestartAnswer {
        let surrendered: SurrenderedMemory
        switch Self.standDown(server: server, cache: cache, grace: grace) {
        case .success(let memory): surrendered = memory
        case .failure(let refusal): throw ControlRequestError(status: 503, message: refusal.reason)
        }
        logger.notice("exiting for systemd to restart this daemon; it keeps the mount and the cache")
        // Never joined: it ends the process.
        _ = OwnedThread(name: "restart-exit") {
            withExtendedLifetime(surrendered) { _ = usleep(200_000) } // the answer goes out first
            _exit(Self.restartExitStatus)
        }
        return RestartAnswer(pid: getpid())
    }

    /// Why a daemon did not stand down (one line), having resumed serving.
    struct StandDownRefused: Error {
        let reason: String
    }

    /// Stops this daemon's work for the one after it, within `grace` seconds (at least 1): it stops
    /// reading the kernel's queue and lets what it read be answered, then stops loads and gives up the
    /// memory files (`BlockCache.surrender`). If either does not finish in time, it reads on.
    static func standDown(server: FuseServer, cache: BlockCache, grace: Double) -> Result<SurrenderedMemory, StandDownRefused> {
        let seconds = max(grace, 1)
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        guard server.pauseReading(until: deadline) else {
            server.resumeReading()
            return .failure(
                StandDownRefused(
                    reason: "requests still in progress after \(seconds) s (a stalled source?); the running daemon serves on, try again"))
        }
        guard let surrendered = cache.surrender(waitingUntil: deadline) else {
            server.resumeReading()
            return .failure(
                StandDownRefused(
                    reason: "loads into the cache still in progress after \(seconds) s; the running daemon serves on, try again"))
        }
        return .success(surrendered)
    }

    /// The exit status of a daemon that exits for systemd to restart it (EX_TEMPFAIL).
    static let restartExitStatus: Int32 = 75

    // MARK: A restart under systemd

    /// What systemd kept of the previous daemon, if anything: the journal, the mount's channel (if the
    /// mount is still there and this daemon may serve it), the keepers, the memory files and ledgers.
    private static func restore(
        _ kept: [(name: String, descriptor: Int32)], settings: MountSettings,
        logger: Logger
    ) -> (StateJournal, Inheritance)? {
        guard !kept.isEmpty else { return nil }
        guard let journalFD = kept.last(where: { $0.name == FileDescriptorStore.journalName })?.descriptor,
            let old = try? StateJournal.adopt(dup(journalFD))
        else {
            logger.warning(
                "systemd passed descriptors but no state journal that checks out; mounting anew", metadata: ["descriptors": "\(kept.count)"]
            )
            kept.forEach { close($0.descriptor) }
            return nil
        }
        close(journalFD)
        var memory: [MemoryFilePair] = []
        for name in Set(kept.map(\.name)) where name.hasPrefix(FileDescriptorStore.memoryPrefix) {
            let pair = kept.filter { $0.name == name }.map(\.descriptor)
            guard pair.count == 2, FileDescriptorStore.isLedger(pair[0]) != FileDescriptorStore.isLedger(pair[1]) else {
                pair.forEach { close($0) }
                continue
            }
            let ledger = FileDescriptorStore.isLedger(pair[0]) ? pair[0] : pair[1]
            memory.append(MemoryFilePair(memory: ledger == pair[0] ? pair[1] : pair[0], ledger: ledger, name: name))
        }
        let keepers = kept.filter { $0.name.hasPrefix(FileDescriptorStore.keeperPrefix) }.map {
            (name: Optional($0.name), descriptor: $0.descriptor)
        }
        let fuse = kept.last(where: { $0.name == FileDescriptorStore.fuseName })?.descriptor
        kept.filter { $0.name == FileDescriptorStore.fuseName && $0.descriptor != fuse }.forEach { close($0.descriptor) }
        let record = old.mount
        let current = MountTable.current().last(where: { $0.mountpoint == settings.mountpoint })
        var lost: String?
        if fuse == nil || record == nil {
            lost = "the store holds no mount"
        } else if let record, record.mountpoint != settings.mountpoint || record.source != settings.source {
            lost = "the mount was of \(record.source) at \(record.mountpoint)"
        } else if let record, record.allowOther != settings.allowOther {
            lost = "--allow-other changed, which needs a new mount"
        } else if let record, current?.device != record.device || current?.type != "fuse.cachefs" {
            lost = "the mount is no longer at \(settings.mountpoint)"
        }
        guard let lost else {
            return (
                old,
                Inheritance(start: .restart, predecessorPid: nil, fuse: fuse, keepers: keepers, memory: memory, nodes: nil, record: record)
            )
        }
        // The mount cannot be kept; the cache can. A mount of the old channel still there is detached
        // (its keepers, no longer stored, let go of it), and a new journal starts with the old pins.
        logger.notice("restarted by systemd: mounting anew, keeping the cache", metadata: ["reason": "\(lost)"])
        if let fuse { close(fuse) }
        if let record, current?.device == record.device { FuseServer.detach(settings.mountpoint) }
        guard let journal = try? StateJournal.create() else { return nil }
        return (
            journal,
            Inheritance(
                start: .restart, predecessorPid: nil, fuse: nil, keepers: keepers, memory: memory, nodes: nil,
                record: nil, pins: old.pins())
        )
    }

    // MARK: The new daemon's side of a hand-over

    private static func takeOver(_ settings: MountSettings, logger: Logger) throws -> (StateJournal, Inheritance) {
        let path = Handover.socketPath(controlSocket: settings.controlSocket)
        let channel: DescriptorChannel
        do {
            channel = try DescriptorChannel.connect(to: path)
        } catch {
            throw UsageError(
                "\(settings.mountpoint) is already a mount point, and no cachefs daemon takes a hand-over at \(path) (\(error)); unmount it first, or pass the --control-socket its daemon was started with"
            )
        }
        channel.setReceiveTimeout(seconds: Handover.answerTimeoutSeconds)
        var received: [(role: String, descriptor: Int32)] = []
        func closeAll() { received.forEach { close($0.descriptor) } }
        func hungUp(_ error: Error) -> UsageError { UsageError("the running daemon stopped the hand-over (\(error)); it serves on") }
        do {
            try channel.send(
                kind: Handover.Message.hello.rawValue,
                Handover.encode(
                    Handover.Hello(
                        settings: settings, pid: getpid(), journalFormat: StateJournal.format, nodeFormat: NodeSnapshot.format)))
        } catch {
            throw hungUp(error)
        }
        var nodeBytes: [UInt8]?
        var state: Handover.State?
        while state == nil {
            let message: (kind: UInt8, payload: [UInt8], descriptors: [Int32])
            do {
                message = try channel.receive()
            } catch {
                closeAll()
                throw hungUp(error)
            }
            switch Handover.Message(rawValue: message.kind) {
            case .refused:
                message.descriptors.forEach { close($0) }
                closeAll()
                throw UsageError(
                    Handover.decode(Handover.Refusal.self, message.payload)?.reason ?? "the running daemon refused the hand-over")
            case .descriptors:
                let roles = Handover.decode(Handover.Roles.self, message.payload)?.roles ?? []
                received += zip(roles, message.descriptors).map { ($0, $1) }
                message.descriptors.dropFirst(roles.count).forEach { close($0) }
            case .nodes:
                nodeBytes = message.payload
            case .state:
                state = Handover.decode(Handover.State.self, message.payload)
                if state == nil { state = Handover.State(settings: settings, pid: 0) }
            default:
                message.descriptors.forEach { close($0) }
            }
        }
        // Everything is read and checked before the old daemon lets go; nothing is changed yet.
        let inheritance: Inheritance, journal: StateJournal
        do {
            guard let fuse = received.first(where: { $0.role == Handover.Role.fuse })?.descriptor,
                let journalFD = received.first(where: { $0.role == Handover.Role.journal })?.descriptor
            else {
                throw UsageError("the state is missing the mount's channel or journal")
            }
            journal = try StateJournal.adopt(dup(journalFD))
            guard let record = journal.mount, record.mountpoint == settings.mountpoint else {
                throw UsageError("the journal holds no record of the mount at \(settings.mountpoint)")
            }
            let nodes = try NodeSnapshot.decode(nodeBytes ?? [])
            var memory: [MemoryFilePair] = []
            for (index, entry) in received.enumerated() {
                guard let name = Handover.Role.memoryFile(entry.role), index + 1 < received.count,
                    received[index + 1].role == Handover.Role.ledger
                else { continue }
                memory.append(MemoryFilePair(memory: entry.descriptor, ledger: received[index + 1].descriptor, name: name))
            }
            let kept = Set(
                memory.flatMap { [$0.memory, $0.ledger] } + [fuse] + received.filter { $0.role == Handover.Role.keeper }.map(\.descriptor))
            received.filter { !kept.contains($0.descriptor) }.forEach { close($0.descriptor) }
            received = received.filter { kept.contains($0.descriptor) }
            inheritance = Inheritance(
                start: .handOver, predecessorPid: state?.pid, fuse: fuse,
                keepers: received.filter { $0.role == Handover.Role.keeper }.map { (nil, $0.descriptor) }, memory: memory,
                nodes: (nodes.nodes, nodes.nextID), record: record)
        } catch {
            try? channel.send(kind: Handover.Message.failed.rawValue, Handover.encode(Handover.Refusal(reason: "\(error)")))
            closeAll()
            throw UsageError("cannot take the mount over: \(error); the running daemon serves on")
        }
        do {
            try channel.send(kind: Handover.Message.taken.rawValue, [])
            let answer = try channel.receive()
            guard answer.kind == Handover.Message.released.rawValue else { throw Errno(rawValue: EPROTO) }
        } catch {
            closeAll()
            throw hungUp(error)
        }
        // It exits (or turns into a waiter) at once; its listeners close with it.
        if !channel.waitForClose(seconds: 10) { logger.warning("the previous daemon did not exit within 10 s of the hand-over") }
        return (journal, inheritance)
    }
}

extension MountRecord {
    /// The INIT exchange the mount was set up with, as the FUSE layer replays and reads it.
    var negotiation: FuseNegotiation { FuseNegotiation(initRequest: initRequest, kernelFlags2: kernelFlags2) }
}
