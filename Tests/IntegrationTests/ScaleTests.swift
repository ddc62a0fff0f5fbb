import Foundation
import Testing

@Suite("Large trees", .serialized)
struct ScaleTests {
    @Test("A tree of more files than the daemon may hold descriptors is walked, stat'ed and read in full")
    func moreFilesThanDescriptors() throws {
        // 2,400 files against a limit of 256 descriptors: every kernel-known file cannot keep one open.
        let tree = try MountedTree(
            "for d in $(seq 24); do mkdir d$d; for f in $(seq 100); do echo \"$d/$f\" > d$d/f$f; done; done",
            launcher: ["/usr/bin/prlimit", "--nofile=256:256"]
        )
        defer { tree.stop() }
        let list = "find . -type f -print0 | sort -z | xargs -0 stat -c '%n %s %i %Y %a'"
        let mirrored = try shell(list, in: tree.mount.mountpoint)
        #expect(mirrored == (try shell(list, in: tree.source)))
        #expect(mirrored.split(separator: "\n").count == 2400)
        let content = "find . -type f -print0 | sort -z | xargs -0 cat | sha256sum"
        #expect(try shell(content, in: tree.mount.mountpoint) == (try shell(content, in: tree.source)))
        let stats = try tree.mount.stats()
        #expect(stats[.knownNodes] > 256, "the kernel should remember more files than the descriptor limit")
        #expect(stats[.sourceErrors] == 0)
    }
}
