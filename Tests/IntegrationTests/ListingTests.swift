import ControlPlane
import Foundation
import Reporting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `cachefs ls`: what a mount's memory holds of each file, asked of the daemon without changing it.
@Suite("Cache listing", .serialized)
struct ListingTests {
    private func cachefs(_ arguments: [String], _ mount: CachefsMount) throws -> CommandResult {
        try run(cachefsBinary, arguments + ["--control-socket", mount.controlSocket], timeout: 60)
    }

    private func listing(_ paths: [String], _ mount: CachefsMount) throws -> (listing: Listing, json: String) {
        let result = try cachefs(["ls", "--json"] + paths, mount)
        guard result.status == 0 else { throw TestFailure("cachefs ls --json failed: \(result.error)") }
        return (try JSONDecoder().decode(Listing.self, from: Data(result.output.utf8)), result.output)
    }

    /// Blocks of the files stay where they are (no load, no LRU move), so only what readers do changes these.
    private func cacheFigures(_ stats: StatsReport) -> [UInt64] {
        [
            stats[.cachedBytes], stats[.cachedBlocks], stats[.hits], stats[.misses], stats[.coalescedMisses],
            stats[.bytesFromSource], stats[.readRequests], stats[.evictions],
        ]
    }

    @Test(
        "ls shows a wholly read file at 100%, a half-read one at about 50%, an unread one at 0%, pinned and held files marked, directory totals, the same in --json; the cache is unchanged"
    )
    func residencyPerFile() throws {
        let tree = try MountedTree(
            """
            mkdir sub
            head -c 6000000 /dev/urandom > whole.bin
            head -c 8388608 /dev/urandom > half.bin
            head -c 5000000 /dev/urandom > cold.bin
            head -c 3000000 /dev/urandom > pinned.bin
            head -c 4000000 /dev/urandom > sub/held.bin
            """, capacity: "64M", extra: ["--prefetch-depth", "0"])
        defer { tree.stop() }
        let mount = tree.mount, root = mount.mountpoint
        try shell("cat \(root)/whole.bin > /dev/null && dd if=\(root)/half.bin of=/dev/null bs=1M count=4 status=none")
        #expect(try cachefs(["warm", "--pin", root + "/pinned.bin"], mount).status == 0)
        #expect(try cachefs(["warm", root + "/sub/held.bin"], mount).status == 0)
        // A reader keeps the wholly cached file open: the kernel reads it from memory, and the daemon holds it.
        let reader = ChildProcess()
        reader.executableURL = URL(fileURLWithPath: "/bin/bash")
        reader.arguments = ["-c", "exec 3< \"$1\"; exec sleep 60", "reader", root + "/sub/held.bin"]
        try reader.run()
        defer { kill(reader.processIdentifier, SIGKILL); reader.waitUntilExit() } // SIGTERM may be blocked in the test's children
        #expect(try eventually(within: 10) { try mount.stats()[.passthroughFiles] == 1 }, "the open reader is not held in passthrough")

        let before = try mount.stats()
        let text = try cachefs(["ls", root], mount)
        let (listed, json) = try listing([root], mount)
        let after = try mount.stats()
        #expect(cacheFigures(after) == cacheFigures(before), "listing changed the cache: \(cacheFigures(before)) -> \(cacheFigures(after))")

        let files = Dictionary(uniqueKeysWithValues: listed.files.map { ($0.path.replacingOccurrences(of: root + "/", with: ""), $0) })
        #expect(files.keys.sorted() == ["cold.bin", "half.bin", "pinned.bin", "sub/held.bin", "whole.bin"])
        let whole = try #require(files["whole.bin"]), half = try #require(files["half.bin"]), cold = try #require(files["cold.bin"])
        let pinned = try #require(files["pinned.bin"]), held = try #require(files["sub/held.bin"])
        #expect(whole.size == 6_000_000 && whole.cachedBytes == whole.size && !whole.pinned && !whole.held)
        let halfShare = Double(half.cachedBytes) / Double(half.size)
        #expect(halfShare >= 0.45 && halfShare <= 0.65, "half.bin: \(half.cachedBytes) of \(half.size) bytes")
        #expect(cold.cachedBytes == 0 && cold.lastRead == nil)
        #expect(pinned.pinned && pinned.cachedBytes == pinned.size && !pinned.held)
        #expect(held.held && held.cachedBytes == held.size && !held.pinned)
        let now = Int64(time(nil))
        for file in [whole, half, pinned, held] {
            #expect(file.lastRead.map { now - 120...now + 1 ~= $0 } == true, "\(file.path) last read \(String(describing: file.lastRead))")
        }
        let totals = Dictionary(uniqueKeysWithValues: listed.directories.map { ($0.path, $0) })
        let top = try #require(totals[root]), sub = try #require(totals[root + "/sub"])
        #expect(
            top.files == 5 && top.size == listed.files.map(\.size).reduce(0, +)
                && top.cachedBytes == listed.files.map(\.cachedBytes).reduce(0, +))
        #expect(top.pinnedFiles == 1 && top.heldFiles == 1)
        #expect(sub.files == 1 && sub.cachedBytes == held.cachedBytes && sub.heldFiles == 1 && sub.pinnedFiles == 0)

        // --json round-trips: what it printed decodes and encodes back to the same text.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: try encoder.encode(listed), as: UTF8.self) + "\n" == json)

        // The table says the same: each file's line carries its size share and its flags.
        #expect(text.status == 0, "\(text.error)")
        let lines = text.output.split(separator: "\n").map(String.init)
        func line(_ path: String) -> [String]? {
            lines.first { $0.hasSuffix(" " + path) }.map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        }
        #expect(line(root + "/whole.bin")?.contains("100%") == true, "\(lines)")
        #expect(line(root + "/half.bin")?.contains("\(half.cachedBytes * 100 / half.size)%") == true, "\(lines)")
        #expect(line(root + "/cold.bin")?.contains("0%") == true, "\(lines)")
        #expect(line(root + "/pinned.bin")?.contains("pinned") == true, "\(lines)")
        #expect(line(root + "/sub/held.bin")?.contains("held") == true, "\(lines)")
        #expect(lines.contains { $0.hasSuffix(" \(root)/ (5 files)") && $0.contains("1 pinned, 1 held") }, "\(lines)")
        #expect(lines.contains { $0.hasSuffix(" \(root)/sub/ (1 file)") }, "\(lines)")

        // A path outside any cachefs mount, and one that is not there: one line each, non-zero exit.
        for path in [tree.source, root + "/missing.bin"] {
            let refused = try cachefs(["ls", path], mount)
            #expect(refused.status != 0 && refused.output.isEmpty, "\(path): \(refused.output)")
            #expect(refused.error.split(separator: "\n").count == 1 && refused.error.hasPrefix("cachefs: "), "\(path): \(refused.error)")
        }
    }

    @Test("Listing moves no block in the LRU order: the file read first is still the one evicted next")
    func listingKeepsTheEvictionOrder() throws {
        let tree = try MountedTree(
            "for name in first second third; do head -c 6291456 /dev/urandom > $name.bin; done",
            capacity: "16M", extra: ["--prefetch-depth", "0"])
        defer { tree.stop() }
        let mount = tree.mount, root = mount.mountpoint
        try shell("cat \(root)/first.bin > /dev/null")
        sleep(2) // a whole second apart: the time of use is kept in seconds
        try shell("cat \(root)/second.bin > /dev/null")
        let readFirst = try #require(try listing([root + "/first.bin"], mount).listing.files.first?.lastRead)
        sleep(2)
        for _ in 0..<3 { _ = try listing([root + "/first.bin"], mount) }
        #expect(try listing([root + "/first.bin"], mount).listing.files.first?.lastRead == readFirst, "listing stamped first.bin as used")

        // 18 MiB through a 16 MiB cache: the third file's room comes from the least recently used blocks.
        try shell("cat \(root)/third.bin > /dev/null")
        let files = Dictionary(
            uniqueKeysWithValues: try listing([root], mount).listing.files.map { (($0.path as NSString).lastPathComponent, $0) })
        let first = try #require(files["first.bin"]), second = try #require(files["second.bin"]), third = try #require(files["third.bin"])
        #expect(third.cachedBytes == third.size)
        #expect(second.cachedBytes == second.size, "second.bin lost blocks: listing first.bin made it look recently used")
        #expect(first.cachedBytes < first.size, "first.bin, read first, kept all its blocks")
    }
}
