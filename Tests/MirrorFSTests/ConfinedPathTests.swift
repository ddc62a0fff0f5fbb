import SourceTree
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Paths from outside the kernel (warm-up requests, peers) must not escape the source root.
@Suite struct ConfinedPathTests {
    @Test func resolvesFilesAndDirectoriesBeneathTheRoot() throws {
        let source = try SourceFixture()
        try source.makeDirectory("models")
        try source.write("models/base.safetensors", [1, 2, 3])
        let root = try PathHandle.openRoot(source.root)
        let (_, attributes) = try root.descendant(atRelativePath: "models/base.safetensors")
        #expect(attributes.st_size == 3)
        let (_, directory) = try root.descendant(atRelativePath: "models")
        #expect(attributes.st_dev == directory.st_dev)
        #expect((directory.st_mode & S_IFMT) == S_IFDIR)
        #expect(try root.descendant(atRelativePath: "").attributes.st_ino == source.status("").st_ino)
    }

    @Test(arguments: ["../etc/passwd", "/etc/passwd", "models/../../etc", "link-out/passwd", "link-in", "missing"])
    func refusesPathsThatLeaveTheRootOrFollowLinks(path: String) throws {
        let source = try SourceFixture()
        try source.makeDirectory("models")
        try source.write("models/base.safetensors", [1])
        try source.symlink("link-out", to: "/etc")
        try source.symlink("link-in", to: "models/base.safetensors")
        let root = try PathHandle.openRoot(source.root)
        #expect(throws: Errno.self) { _ = try root.descendant(atRelativePath: path) }
    }
}
