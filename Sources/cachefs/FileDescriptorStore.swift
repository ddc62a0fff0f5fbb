import BlockCache
import Continuity

#if canImport(Glibc)
import Glibc
#endif

/// systemd's file descriptor store (sd_notify FDSTORE=1; FileDescriptorStoreMax= in the unit): what
/// keeps the mount and the cache while systemd restarts a daemon that died (Restart=on-failure).
///
/// Kept there, under their names: the mount's /dev/fuse descriptor (`cachefs-fuse`: the kernel's
/// connection lives while any holder does, so the mount never leaves the mount table and readers
/// wait in the kernel's queue), the state journal (`cachefs-journal`), each mount keeper's socket
/// (`cachefs-keeper-N`: the keeper unmounts only once no daemon and no store holds it), and each
/// version's memory file with its ledger (one name for the pair, `cachefs-mN`, removed when the
/// daemon lets the file go). The daemon systemd starts next finds them in LISTEN_FDS and
/// LISTEN_FDNAMES (see Succession). systemd empties the store when the unit stops for good.
final class FileDescriptorStore: MemoryFileRegistry, @unchecked Sendable {
    // @unchecked: both are immutable; the notifier sends datagrams from any thread.
    private let notifier: SystemdNotifier
    private let journal: StateJournal

    static let fuseName = "cachefs-fuse"
    static let journalName = "cachefs-journal"
    static let keeperPrefix = "cachefs-keeper-"
    static let memoryPrefix = "cachefs-m"

    init(notifier: SystemdNotifier, journal: StateJournal) {
        self.notifier = notifier
        self.journal = journal
    }

    func store(_ descriptors: [Int32], name: String) {
        notifier.send("FDSTORE=1\nFDNAME=\(name)", descriptors: descriptors)
    }

    func remove(name: String) {
        notifier.send("FDSTOREREMOVE=1\nFDNAME=\(name)")
    }

    // MARK: MemoryFileRegistry

    func nameForNewFile() -> String { journal.nextName() }

    func didCreate(name: String, memory: Int32, ledger: Int32) { store([memory, ledger], name: name) }

    func didRelease(name: String) { remove(name: name) }

    // MARK: What systemd passed back

    /// The descriptors systemd passed this process (LISTEN_FDS, for LISTEN_PID), with their names, made
    /// close-on-exec; the variables are removed so that nothing this daemon starts takes them for its own.
    static func takeInherited() -> [(name: String, descriptor: Int32)] {
        defer {
            for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] { unsetenv(variable) }
        }
        guard let pid = getenv("LISTEN_PID").flatMap({ Int32(String(cString: $0)) }), pid == getpid(),
            let count = getenv("LISTEN_FDS").flatMap({ Int(String(cString: $0)) }), count > 0
        else { return [] }
        let names =
            getenv("LISTEN_FDNAMES").map { String(cString: $0).split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
            ?? []
        return (0..<count).map { index in
            let descriptor = Int32(3 + index)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            return (index < names.count ? names[index] : "unknown", descriptor)
        }
    }

    /// Whether systemd passed this process a mount's channel (before `takeInherited`).
    static var holdsAMount: Bool {
        guard let pid = getenv("LISTEN_PID").flatMap({ Int32(String(cString: $0)) }), pid == getpid(),
            let names = getenv("LISTEN_FDNAMES").map({ String(cString: $0) })
        else { return false }
        return names.split(separator: ":").contains { $0 == fuseName }
    }

    /// Whether a memory file is a ledger (`VersionLedger`) or block memory, from the name it was made with.
    static func isLedger(_ descriptor: Int32) -> Bool {
        var target = [UInt8](repeating: 0, count: 256)
        let count = readlink("/proc/self/fd/\(descriptor)", &target, target.count - 1)
        return count > 0 && String(decoding: target[..<count], as: UTF8.self).contains(VersionLedger.memoryFileName)
    }
}
