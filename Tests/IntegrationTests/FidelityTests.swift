import Foundation
import Testing

/// What a reader sees through the mount is what the source holds: every entry's
/// metadata, every file's bytes, every extended attribute.
@Suite("Mirror fidelity", .serialized)
struct FidelityTests {
    /// Type, mode, size, mtime with nanoseconds, owner, group, link count, path and symlink target.
    static let listing = #"find . -printf '%y %m %s %T@ %U %G %n %p -> %l\n' | LC_ALL=C sort"#
    static let hashes = #"find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum"#
    /// Names as raw bytes (any byte but NUL and '/' may appear), hashed so no decoding can hide a difference.
    static let rawNames =
        #"find . -print0 | LC_ALL=C sort -z | sha256sum; if [ -d bytes ]; then find bytes -type f -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum; fi"#
    static let attributes = #"getfattr -R -h -d -m - . 2>/dev/null | sed -n '/^# file/{h;d};/./{G;s/\n/ @ /;p}' | LC_ALL=C sort"#

    @Test("A real tree this project did not generate (part of the Swift toolchain)")
    func realTree() throws {
        let scratch = try ScratchDirectory()
        let source = "/opt/swift/usr/lib/swift_static"
        let mount = try CachefsMount(source: source, mountpoint: try scratch.make("mnt"), capacity: "128M")
        defer { mount.stop() }
        try expectIdentical(source: source, mirror: mount.mountpoint)
        #expect(try mount.stats()[.bytesFromSource] > 100 << 20, "the hashes were read through the cache")
    }

    @Test("A generated tree of edge cases: sparse 5 GiB file, odd names, links, fifo, xattrs, 2,000 files")
    func edgeCaseTree() throws {
        let tree = try MountedTree(Self.edgeCaseScript, capacity: "128M")
        defer { tree.stop() }
        let (source, mount) = (tree.source, tree.mount)
        try expectIdentical(source: source, mirror: mount.mountpoint)
        let pastFourGiB = try shell("dd if=sparse bs=1 skip=$((4 * 1024 * 1024 * 1024 + 12345)) count=6 status=none", in: mount.mountpoint)
        #expect(pastFourGiB == "past4g")
        let tail = try shell("tail -c 4 sparse", in: mount.mountpoint)
        #expect(tail == "tail")
        #expect(try shell("cat loop-a 2>&1 || true", in: mount.mountpoint).contains("Too many levels of symbolic links"))
        #expect(try shell("cat dangling 2>&1 || true", in: mount.mountpoint).contains("No such file or directory"))
        #expect(try shell("stat -c %i hard1 hard2 | uniq | wc -l", in: mount.mountpoint) == "1\n", "hard links share an inode")
    }

    @Test("A regular file's preferred I/O size is the block size, and cat of a cold file asks for a block per read")
    func preferredReadSizeIsTheBlock() throws {
        let tree = try MountedTree("mkdir d && head -c 8388608 /dev/urandom > d/model.bin", extra: ["--block-size", "512K"])
        defer { tree.stop() }
        let (source, mount) = (tree.source, tree.mount)
        #expect(try shell("stat -c %o d/model.bin", in: mount.mountpoint) == "524288\n")
        #expect(try shell("stat -c %o d", in: mount.mountpoint) == (try shell("stat -c %o d", in: source)), "a directory's is the source's")
        #expect(try shell("stat -c %o d/model.bin", in: source) != "524288\n", "the source's own differs (else this test proves nothing)")
        let before = try mount.stats()
        #expect(try shell("cat d/model.bin | sha256sum", in: mount.mountpoint) == (try shell("sha256sum < d/model.bin", in: source)))
        let after = try mount.stats()
        // Cold, so read with direct I/O: each read(2) is one request. 512 KiB reads: 16, and the one at the end
        // (with the source's 4 KiB, cat reads 128 KiB at a time: 64).
        #expect(
            after[.readRequests] - before[.readRequests] <= 18, "cat made \(after[.readRequests] - before[.readRequests]) read requests")
    }

    @Test("mmap of a mirrored file sees the source's bytes")
    func memoryMappedReads() throws {
        let tree = try MountedTree("head -c 12345678 /dev/urandom > model.bin")
        defer { tree.stop() }
        let (source, mount) = (tree.source, tree.mount)
        let script = """
            import hashlib, mmap, sys
            digests = []
            for path in sys.argv[1:]:
                with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                    digests.append(hashlib.sha256(m[:]).hexdigest() + hashlib.sha256(m[7654321:7654321 + 4096]).hexdigest())
            print(len(set(digests)))
            """
        let result = try run("python3", ["-c", script, source + "/model.bin", mount.mountpoint + "/model.bin"])
        #expect(result.status == 0, "\(result.error)")
        #expect(result.output == "1\n", "the mapped bytes differ between source and mount")
    }

    static let edgeCaseScript = #"""
        : > empty
        truncate -s 5G sparse
        printf head | dd of=sparse conv=notrunc status=none
        printf past4g | dd of=sparse bs=1 seek=$((4 * 1024 * 1024 * 1024 + 12345)) conv=notrunc status=none
        printf tail | dd of=sparse bs=1 seek=$((5 * 1024 * 1024 * 1024 - 4)) conv=notrunc status=none
        mkdir -p 'ünïcødé 名前' && echo unicode > 'ünïcødé 名前/файл ✓ émoji 🚀.txt'
        echo long > "$(printf 'n%.0s' $(seq 1 250))"
        deep=$(seq -s / 1 40) && mkdir -p "d/$deep" && echo deep > "d/$deep/leaf"
        ln -s empty relative-link
        ln -s ../src/empty parent-relative-link
        ln -s does-not-exist dangling
        ln -s loop-b loop-a && ln -s loop-a loop-b
        ln -s /etc/hostname absolute-link
        echo shared > hard1 && ln hard1 hard2
        mkfifo fifo
        echo tagged > with-xattr && setfattr -n user.model -v sd15 with-xattr && setfattr -n user.empty with-xattr
        mkdir dir-with-xattr && setfattr -n user.dir -v yes dir-with-xattr
        mkdir many && for i in $(seq 1 2000); do echo "$i" > "many/f$i"; done
        head -c 3000001 /dev/urandom > odd-size.bin
        chmod 600 hard1 && chmod 750 d && chmod 4755 odd-size.bin && chmod 1777 many
        chown 1234:5678 empty && chown -h 42:43 relative-link
        touch -d '2001-02-03 04:05:06.123456789' with-xattr
        python3 -c '
        import os, random
        random.seed(7)
        os.mkdir(b"bytes")
        alphabet = [b for b in range(1, 256) if b != 0x2F]
        for _ in range(300):
            name = bytes(random.choice(alphabet) for _ in range(random.randrange(1, 256)))
            if name not in (b".", b".."):
                with open(b"bytes/" + name, "wb") as f: f.write(name * 3)
        '
        """#

    private func expectIdentical(source: String, mirror: String) throws {
        for (label, script) in [
            ("listing", Self.listing), ("sha256", Self.hashes), ("raw names", Self.rawNames), ("xattrs", Self.attributes),
        ] {
            let expected = try shell(script, in: source, timeout: 900)
            let actual = try shell(script, in: mirror, timeout: 900)
            expectSameLines(actual, expected, label)
            if label != "xattrs" { #expect(!expected.isEmpty, "\(label): the source side listed nothing") }
        }
    }
}

/// Compares line by line and reports the first few differences rather than two huge strings.
func expectSameLines(_ actual: String, _ expected: String, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let actualLines = actual.split(separator: "\n", omittingEmptySubsequences: false)
    let expectedLines = expected.split(separator: "\n", omittingEmptySubsequences: false)
    let missing = Set(expectedLines).subtracting(actualLines).sorted().prefix(5)
    let extra = Set(actualLines).subtracting(expectedLines).sorted().prefix(5)
    #expect(
        actualLines == expectedLines,
        "\(label) differs: \(actualLines.count) vs \(expectedLines.count) lines; only in source: \(Array(missing)); only in mount: \(Array(extra))",
        sourceLocation: sourceLocation)
}
