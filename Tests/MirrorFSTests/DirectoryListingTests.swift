import Foundation
import MirrorFS
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One listed entry, copied out of the `emit` call (its name is valid only during the call).
private struct Listed: Equatable {
    var name: String
    var node: UInt64
    var inode: UInt64
    var type: mode_t
    var size: Int64
    var nextOffset: Int
}

private func copy(_ entry: DirectoryEntry) -> Listed {
    Listed(
        name: String(cString: entry.name), node: entry.node, inode: UInt64(entry.attributes.st_ino),
        type: entry.attributes.st_mode & S_IFMT, size: Int64(entry.attributes.st_size), nextOffset: entry.nextOffset
    )
}

private let dots: Set<String> = [".", ".."]

@Suite("Mirror: directory listings")
struct DirectoryListingTests {
    /// 40 files, a directory, a symlink and a hard link: 43 names besides . and ..
    private func makeTree() throws -> (SourceFixture, names: Set<String>) {
        let fixture = try SourceFixture()
        var names: Set<String> = []
        for number in 0..<40 {
            try fixture.write("file-\(number)", Array(repeating: 1, count: number))
            names.insert("file-\(number)")
        }
        try fixture.makeDirectory("sub")
        try fixture.write("sub/inside", [1])
        try fixture.symlink("link", to: "file-3")
        try fixture.hardLink("hard", to: "file-5")
        names.formUnion(["sub", "link", "hard"])
        return (fixture, names)
    }

    private func listAll(_ fixture: SourceFixture, withAttributes: Bool) throws -> [Listed] {
        let directory = try fixture.filesystem.openDirectory(node: MirrorFilesystem.rootNode)
        var listed: [Listed] = []
        try fixture.filesystem.readDirectory(directory, from: 0, withAttributes: withAttributes, parent: MirrorFilesystem.rootNode) {
            listed.append(copy($0))
            return true
        }
        return listed
    }

    @Test("A full listing has every entry with the source's inode and type", arguments: [false, true])
    func fullListing(withAttributes: Bool) throws {
        let (fixture, names) = try makeTree()
        let baseline = fixture.filesystem.knownNodeCount
        let listed = try listAll(fixture, withAttributes: withAttributes)

        #expect(Set(listed.map(\.name)) == names.union(dots))
        #expect(listed.count == names.count + 2, "an entry was listed twice")
        for entry in listed where !dots.contains(entry.name) {
            let source = try fixture.status(entry.name)
            #expect(entry.inode == UInt64(source.st_ino), "\(entry.name)")
            #expect(entry.type == fileType(source), "\(entry.name)")
            if withAttributes {
                #expect(entry.node != 0, "\(entry.name) has no node")
                #expect(entry.size == Int64(source.st_size), "\(entry.name) lacks full attributes")
            } else {
                #expect(entry.node == 0, "a plain listing looked \(entry.name) up")
            }
        }
        for entry in listed where dots.contains(entry.name) {
            #expect(entry.node == 0, "\(entry.name) was looked up")
            #expect(entry.type == S_IFDIR)
        }

        if withAttributes {
            let byName = Dictionary(uniqueKeysWithValues: listed.map { ($0.name, $0) })
            #expect(byName["hard"]?.node == byName["file-5"]?.node, "hard links got different nodes")
            #expect(byName["link"]?.type == S_IFLNK)
            #expect(byName["sub"]?.type == S_IFDIR)
            // Each listed entry counted one lookup, as lookup would, and the same node as lookup gives.
            #expect(fixture.filesystem.knownNodeCount == baseline + names.count - 1) // hard and file-5 share one
            #expect(try fixture.lookup("file-7") == byName["file-7"]?.node)
            fixture.filesystem.forget(node: byName["file-7"]!.node, lookups: 1) // the lookup just made
            for entry in listed where !dots.contains(entry.name) { fixture.filesystem.forget(node: entry.node, lookups: 1) }
            #expect(fixture.filesystem.knownNodeCount == baseline, "forgetting each listed entry once did not release it")
        } else {
            #expect(fixture.filesystem.knownNodeCount == baseline)
        }

        // The same handle lists again from the start.
        let directory = try fixture.filesystem.openDirectory(node: MirrorFilesystem.rootNode)
        var first: [String] = []
        try fixture.filesystem.readDirectory(directory, from: 0, withAttributes: false, parent: MirrorFilesystem.rootNode) {
            first.append(String(cString: $0.name)); return true
        }
        var second: [String] = []
        try fixture.filesystem.readDirectory(directory, from: 0, withAttributes: false, parent: MirrorFilesystem.rootNode) {
            second.append(String(cString: $0.name)); return true
        }
        #expect(second == first)
    }

    @Test(
        "A listing cut short resumes after the last accepted entry, without duplicates or leaked lookups",
        arguments: [false, true], [1, 7])
    func resumedListing(withAttributes: Bool, batch: Int) throws {
        let (fixture, names) = try makeTree()
        let whole = try listAll(fixture, withAttributes: false).map(\.name)
        let directory = try fixture.filesystem.openDirectory(node: MirrorFilesystem.rootNode)
        let baseline = fixture.filesystem.knownNodeCount

        var seen: [Listed] = []
        var offset = 0
        var calls = 0
        var leaks: [Int] = [] // calls after which the node count was not what the accepted entries explain
        while calls < 200 {
            calls += 1
            var accepted = 0
            try fixture.filesystem.readDirectory(directory, from: offset, withAttributes: withAttributes, parent: MirrorFilesystem.rootNode)
            { entry in
                guard accepted < batch else { return false } // a small kernel buffer
                accepted += 1
                seen.append(copy(entry))
                offset = entry.nextOffset
                return true
            }
            let nodes = Set(seen.filter { !dots.contains($0.name) }.map(\.node))
            let expectedCount = withAttributes ? baseline + nodes.count : baseline
            if fixture.filesystem.knownNodeCount != expectedCount { leaks.append(calls) }
            if accepted == 0 { break }
        }
        #expect(leaks.isEmpty, "a refused entry's lookup was not undone (after calls \(leaks.prefix(5)))")
        #expect(seen.map(\.name) == whole, "the resumed listing differs from a listing in one go")
        #expect(Set(seen.map(\.name)) == names.union(dots))
        #expect(Set(seen.map(\.name)).count == seen.count, "an entry was listed twice")
        #expect(calls >= (names.count + 2) / batch, "the listing was never cut short")
    }

    @Test("An entry refused at once is not counted, and is listed again by the next call")
    func refusedFirstEntry() throws {
        let (fixture, _) = try makeTree()
        let directory = try fixture.filesystem.openDirectory(node: MirrorFilesystem.rootNode)
        let baseline = fixture.filesystem.knownNodeCount

        // Skip . and .. so that the refused entry is one that readdirplus looks up.
        var offset = 0
        var skipped = 0
        try fixture.filesystem.readDirectory(directory, from: 0, withAttributes: false, parent: MirrorFilesystem.rootNode) { entry in
            guard dots.contains(String(cString: entry.name)) || skipped == 0 else { return false }
            if !dots.contains(String(cString: entry.name)) { skipped += 1 }
            offset = entry.nextOffset
            return true
        }
        var refused: [String] = []
        var refusedNode: UInt64 = 0
        for _ in 0..<3 {
            try fixture.filesystem.readDirectory(directory, from: offset, withAttributes: true, parent: MirrorFilesystem.rootNode) {
                entry in
                refused.append(String(cString: entry.name))
                refusedNode = entry.node
                return false
            }
            #expect(fixture.filesystem.knownNodeCount == baseline)
        }
        #expect(refusedNode != 0, "the refused entry was looked up")
        #expect(refused.count == 3 && Set(refused).count == 1, "each call offered a different first entry: \(refused)")
        #expect(throws: Errno.staleNFSFileHandle) { _ = try fixture.filesystem.attributes(of: refusedNode) }
    }

    @Test("A listing with attributes opens no source descriptors, and its files still answer stat, open and read")
    func listingOpensNothing() throws {
        let (fixture, _) = try makeTree()
        let descriptors = fixture.filesystem.cachedHandleCount
        _ = try fixture.lookup("file-1") // a kernel lookup keeps the file's descriptor
        #expect(fixture.filesystem.cachedHandleCount == descriptors + 1)
        let listed = try listAll(fixture, withAttributes: true)
        #expect(fixture.filesystem.cachedHandleCount == descriptors, "nothing opened, and file-1's older descriptor let go")
        let reopens = try #require(fixture.filesystem.figures[.sourceHandleReopens])
        for entry in listed where entry.name.hasPrefix("file-") {
            let expected = try fixture.status(entry.name)
            let attributes = try fixture.filesystem.attributes(of: entry.node)
            #expect(attributes.st_ino == expected.st_ino && attributes.st_size == expected.st_size)
            let file = try fixture.filesystem.open(node: entry.node, flags: O_RDONLY)
            #expect(try fixture.read(file, at: 0, count: 64) == Array(repeating: 1, count: Int(expected.st_size)))
        }
        #expect(fixture.filesystem.figures[.sourceHandleReopens]! >= reopens + 40, "each file was opened by name when first used")
    }

    @Test("Listing a subdirectory looks its entries up in that directory")
    func subdirectory() throws {
        let (fixture, _) = try makeTree()
        let sub = try fixture.lookup("sub")
        let directory = try fixture.filesystem.openDirectory(node: sub)
        var listed: [Listed] = []
        try fixture.filesystem.readDirectory(directory, from: 0, withAttributes: true, parent: sub) {
            listed.append(copy($0)); return true
        }
        #expect(Set(listed.map(\.name)) == Set(["inside"]).union(dots))
        let inside = try #require(listed.first { $0.name == "inside" })
        #expect(inside.size == 1)
        #expect(try fixture.lookup("inside", in: sub) == inside.node)
        #expect(throws: Errno.notDirectory) { _ = try fixture.filesystem.openDirectory(node: try fixture.lookup("file-1")) }
    }
}
