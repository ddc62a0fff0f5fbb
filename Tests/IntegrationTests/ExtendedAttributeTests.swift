import Foundation
import Testing

/// Extended attributes at the source's pace: passed through exactly where the source has
/// them; where it has none (object-store FUSE clients), the kernel is told once (ENOSYS)
/// and stops asking, instead of a round trip per file for every `ls -l`.
@Suite("Extended attributes", .serialized)
struct ExtendedAttributeIntegrationTests {
    /// Asks every file for an attribute and for the list, printing what each call gave.
    static let askEveryFile = """
        import os, sys
        for name in sorted(os.listdir(sys.argv[1])):
            path = os.path.join(sys.argv[1], name)
            for call in (lambda: os.getxattr(path, 'user.model'), lambda: os.listxattr(path)):
                try:
                    print(name, repr(call()))
                except OSError as error:
                    print(name, 'errno', error.errno)
        """

    @Test(
        "A source without extended attributes: the kernel asks once per call kind for the whole mount, and every file reads as unsupported")
    func unsupportedSourceIsAnsweredOnce() throws {
        let scratch = try ScratchDirectory()
        let data = try scratch.make("data")
        try shell("for i in $(seq 1 20); do echo $i > file-$i; done", in: data)
        let source = try TestSourceMount(root: data, mountpoint: try scratch.make("slow"), arguments: []) // no xattr support
        defer { source.stop() }
        let mount = try CachefsMount(source: source.mountpoint, mountpoint: try scratch.make("mnt"))
        defer { mount.stop() }
        let output = try run("python3", ["-c", Self.askEveryFile, mount.mountpoint]).output
        let lines = output.split(separator: "\n")
        #expect(lines.count == 40 && lines.allSatisfy { $0.hasSuffix("errno \(EOPNOTSUPP)") }, "\(output)")
        let requests = try mount.stats()[.extendedAttributeRequests]
        #expect(requests <= 2, "\(requests) attribute requests reached the daemon for 40 calls")
        #expect(try run("/bin/ls", ["-l", mount.mountpoint]).status == 0)
    }

    @Test("A source with extended attributes: values and lists pass through byte for byte, on every file")
    func supportedSourcePassesThrough() throws {
        let tree = try MountedTree(
            """
            for i in 1 2 3; do echo $i > file-$i; done
            python3 -c "import os; [os.setxattr('file-%d' % i, 'user.model', bytes(range(i * 40))) for i in (1, 2, 3)]"
            """)
        defer { tree.stop() }
        let direct = try run("python3", ["-c", Self.askEveryFile, tree.source]).output
        let mirrored = try run("python3", ["-c", Self.askEveryFile, tree.mount.mountpoint]).output
        #expect(direct.contains("b'\\x00\\x01"), "the source did not take the attributes: \(direct)")
        #expect(mirrored == direct)
        #expect(try tree.mount.stats()[.extendedAttributeRequests] >= 6, "every call should reach the source")
    }
}
