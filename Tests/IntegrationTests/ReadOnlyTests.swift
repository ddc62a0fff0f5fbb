import Foundation
import Testing

@Suite("Read-only", .serialized)
struct ReadOnlyTests {
    static let attempts = #"""
        import errno, os, sys
        m = sys.argv[1]
        attempts = {
            'create': lambda: os.open(m + '/new', os.O_CREAT | os.O_WRONLY, 0o644),
            'open-write': lambda: os.open(m + '/file', os.O_WRONLY),
            'open-rdwr': lambda: os.open(m + '/file', os.O_RDWR),
            'open-trunc': lambda: os.open(m + '/file', os.O_RDONLY | os.O_TRUNC),
            'truncate': lambda: os.truncate(m + '/file', 0),
            'unlink': lambda: os.unlink(m + '/file'),
            'rename': lambda: os.rename(m + '/file', m + '/renamed'),
            'mkdir': lambda: os.mkdir(m + '/newdir'),
            'rmdir': lambda: os.rmdir(m + '/dir'),
            'symlink': lambda: os.symlink('file', m + '/newlink'),
            'link': lambda: os.link(m + '/file', m + '/newhard'),
            'mknod': lambda: os.mkfifo(m + '/newfifo'),
            'chmod': lambda: os.chmod(m + '/file', 0o777),
            'chown': lambda: os.chown(m + '/file', 1, 1),
            'utimens': lambda: os.utime(m + '/file', (0, 0)),
            'setxattr': lambda: os.setxattr(m + '/file', 'user.new', b'1'),
            'removexattr': lambda: os.removexattr(m + '/file', 'user.kept'),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                print(name, 'SUCCEEDED')
            except OSError as error:
                print(name, errno.errorcode.get(error.errno, error.errno))
        """#

    @Test("Every modifying call fails with EROFS and the source is untouched")
    func modifyingCallsFail() throws {
        let tree = try MountedTree("echo original > file && setfattr -n user.kept -v 1 file && mkdir dir")
        defer { tree.stop() }
        let (source, mount) = (tree.source, tree.mount)
        let snapshot = FidelityTests.listing + " && " + FidelityTests.hashes + " && " + FidelityTests.attributes
        let before = try shell(snapshot, in: source)

        let result = try run("python3", ["-c", Self.attempts, mount.mountpoint])
        #expect(result.status == 0, "\(result.error)")
        let outcomes = result.output.split(separator: "\n").map { $0.split(separator: " ") }
        #expect(outcomes.count == 17)
        for outcome in outcomes {
            #expect(outcome.last == "EROFS", "\(outcome.first ?? "?") gave \(outcome.last ?? "?")")
        }
        #expect(try shell("grep ' \(mount.mountpoint) ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1") == "ro\n")
        let after = try shell(snapshot, in: source)
        #expect(after == before, "the source changed")
    }
}
