import Foundation
import MirrorFS
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Known nodes hold no descriptor of their own: the kernel may remember more
/// files than the daemon may open, so nodes are found again by name.
@Suite struct NodeHandleTests {
    /// Descriptors of this process that lead into `root`: other tests run in parallel in the same
    /// process and open descriptors of their own, so a count of all of them would be racy.
    private func openDescriptorCount(under root: String) throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count { entry in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + entry)) ?? ""
            return target == root || target.hasPrefix(root + "/")
        }
    }

    @Test("Far more nodes than the descriptor budget all answer stat, open and read, with descriptors bounded")
    func nodesBeyondTheDescriptorBudget() throws {
        let limit = 8
        let source = try SourceFixture(sourceHandleLimit: limit)
        for directory in 0..<10 {
            try source.makeDirectory("d\(directory)")
            for file in 0..<20 { try source.write("d\(directory)/f\(file)", randomBytes(100 + file, seed: UInt64(directory * 100 + file))) }
        }
        let before = try openDescriptorCount(under: source.root)
        var nodes: [(path: String, node: UInt64)] = []
        for directory in 0..<10 {
            let parent = try source.lookup("d\(directory)")
            for file in 0..<20 { nodes.append(("d\(directory)/f\(file)", try source.lookup("f\(file)", in: parent))) }
        }
        #expect(source.filesystem.knownNodeCount == 211)
        #expect(source.filesystem.cachedHandleCount <= limit)
        #expect(try openDescriptorCount(under: source.root) <= before + limit)

        for (path, node) in nodes.shuffled() {
            let expected = try source.status(path)
            let attributes = try source.filesystem.attributes(of: node)
            #expect(attributes.st_ino == expected.st_ino && attributes.st_size == expected.st_size)
            #expect(String(decoding: try source.filesystem.relativePath(of: node), as: UTF8.self) == path)
            let file = try source.filesystem.open(node: node, flags: O_RDONLY)
            let bytes = try source.read(file, at: 0, count: 4096)
            #expect(bytes == (try [UInt8](Data(contentsOf: URL(fileURLWithPath: source.path(path))))))
        }
        #expect(source.filesystem.cachedHandleCount <= limit)
        #expect(source.filesystem.figures[.sourceHandleReopens]! > 0)
        #expect(try openDescriptorCount(under: source.root) <= before + limit)
    }

    @Test("A node whose name now leads to another file is ESTALE once its descriptor is gone; a new lookup finds the new file")
    func renamedOverNodeIsStale() throws {
        let source = try SourceFixture(sourceHandleLimit: 1)
        try source.write("model", [1, 2, 3])
        try source.write("other", [4])
        let node = try source.lookup("model")
        _ = try source.lookup("other") // pushes model's descriptor out of the cache
        try source.write("model.new", [5, 6])
        #expect(rename(source.path("model.new"), source.path("model")) == 0)
        #expect(throws: Errno.staleNFSFileHandle) { _ = try source.filesystem.attributes(of: node) }
        let fresh = try source.lookupWithAttributes("model")
        #expect(fresh.node != node && fresh.attributes.st_size == 2)
    }

    @Test("A file found under a new name (renamed, or a second hard link) is found there from then on")
    func nodesFollowTheirLatestName() throws {
        let source = try SourceFixture(sourceHandleLimit: 1)
        try source.makeDirectory("a")
        try source.makeDirectory("b")
        try source.write("a/model", randomBytes(1000))
        let node = try source.lookup("model", in: try source.lookup("a"))
        #expect(rename(source.path("a/model"), source.path("b/model")) == 0)
        let moved = try source.lookup("model", in: try source.lookup("b"))
        #expect(moved == node)
        #expect(String(decoding: try source.filesystem.relativePath(of: node), as: UTF8.self) == "b/model")
        _ = try source.lookup("a") // evicts the file's descriptor
        #expect(try source.filesystem.attributes(of: node).st_size == 1000)
        #expect(try source.filesystem.relativePath(of: MirrorFilesystem.rootNode).isEmpty)
    }

    @Test("Names with arbitrary bytes resolve again after their descriptor is dropped")
    func arbitraryByteNames() throws {
        let source = try SourceFixture(sourceHandleLimit: 1)
        let name: [UInt8] = [0xFF, 0xFE, 0x01, 0x20, 0x0A, 0x80] + Array(repeating: UInt8(ascii: "x"), count: 200)
        let path = Array((source.root + "/").utf8CString.dropLast()) + name.map { CChar(bitPattern: $0) } + [0]
        let fd = path.withUnsafeBufferPointer {
            open($0.baseAddress!, O_CREAT | O_WRONLY, 0o644)
        }
        #expect(fd >= 0)
        #expect(write(fd, "abc", 3) == 3)
        close(fd)
        let node = try (name.map { CChar(bitPattern: $0) } + [0]).withUnsafeBufferPointer {
            try source.filesystem.lookup(parent: MirrorFilesystem.rootNode, name: $0.baseAddress!).node
        }
        try source.write("other", [1])
        _ = try source.lookup("other")
        #expect(try source.filesystem.attributes(of: node).st_size == 3)
        #expect(try source.filesystem.relativePath(of: node) == name)
    }
}
