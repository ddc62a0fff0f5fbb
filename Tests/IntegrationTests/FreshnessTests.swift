import Foundation
import Testing

/// Changes in the source show through the mount within 2 s (the default metadata timeout is 1 s),
/// and a changed file is never served with its old bytes after that.
@Suite("Freshness", .serialized)
struct FreshnessTests {
    let scratch: ScratchDirectory
    let source: String
    let mount: CachefsMount

    init() throws {
        scratch = try ScratchDirectory()
        source = try scratch.make("src")
        try shell(
            """
            head -c 3000000 /dev/urandom > rewritten && head -c 2000000 /dev/urandom > replaced
            echo doomed > deleted && echo same-size-1 > same-size && mkdir dir
            """, in: source)
        mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"))
    }

    private func mirrored(_ name: String) -> String { mount.mountpoint + "/" + name }

    private func contentsMatch(_ name: String) -> Bool {
        (try? run("/usr/bin/cmp", [source + "/" + name, mirrored(name)]).status) == 0
    }

    @Test("A file added to the source appears")
    func addedFileAppears() throws {
        defer { mount.stop() }
        _ = try shell("ls dir", in: mount.mountpoint) // the kernel now holds the directory's listing
        try shell("echo fresh > dir/added && echo top > added", in: source)
        #expect(eventually(within: 2) { contentsMatch("dir/added") && contentsMatch("added") })
        #expect(try shell("ls dir", in: mount.mountpoint) == "added\n")
    }

    @Test("A file rewritten in place is served with its new bytes, page cache included")
    func rewrittenInPlace() throws {
        defer { mount.stop() }
        try shell("cat rewritten > /dev/null && cat rewritten > /dev/null", in: mount.mountpoint) // cached in both layers
        try shell("head -c 3500000 /dev/urandom > rewritten", in: source)
        #expect(eventually(within: 2) { contentsMatch("rewritten") })
        // Same size and mtime restored: only ctime tells the versions apart.
        try shell("cat same-size > /dev/null", in: mount.mountpoint)
        try shell("touch -r same-size stamp && echo same-size-2 > same-size && touch -r stamp same-size", in: source)
        #expect(eventually(within: 2) { contentsMatch("same-size") })
    }

    @Test("A file renamed over is served with the new file's bytes")
    func renamedOver() throws {
        defer { mount.stop() }
        try shell("cat replaced > /dev/null", in: mount.mountpoint)
        try shell("head -c 2000000 /dev/urandom > .replaced.tmp && mv .replaced.tmp replaced", in: source)
        #expect(eventually(within: 2) { contentsMatch("replaced") })
    }

    @Test("A file deleted from the source disappears")
    func deletedFileDisappears() throws {
        defer { mount.stop() }
        #expect(contentsMatch("deleted"))
        try shell("rm deleted", in: source)
        #expect(eventually(within: 2) { !FileManager.default.fileExists(atPath: mirrored("deleted")) })
        let missing = try run("/bin/cat", [mirrored("deleted")])
        #expect(missing.status != 0 && missing.error.contains("No such file or directory"))
    }
}
