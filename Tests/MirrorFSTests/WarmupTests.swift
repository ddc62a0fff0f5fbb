import BlockCache
import MirrorFS
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Warm-up in the mirror")
struct MirrorWarmupTests {
    private func tree() throws -> SourceFixture {
        let source = try SourceFixture(blockSize: 64 << 10, cacheBlocks: 64)
        try source.makeDirectory("models")
        try source.makeDirectory("models/lora")
        try source.write("models/base.safetensors", Array(repeating: 1, count: 200_000))
        try source.write("models/lora/a.safetensors", Array(repeating: 2, count: 70_000))
        try source.write("models/lora/notes.txt", [3])
        try source.write("top.bin", [4, 4])
        try source.symlink("models/alias", to: "base.safetensors")
        return source
    }

    @Test("A directory lists its regular files beneath it, sorted, without symlinks")
    func candidatesOfADirectory() throws {
        let source = try tree()
        let files = try source.filesystem.warmCandidates(atRelativePath: "models/")
        #expect(files.map(\.path) == ["models/base.safetensors", "models/lora/a.safetensors", "models/lora/notes.txt"])
        #expect(files.map(\.size) == [200_000, 70_000, 1])
        #expect(try source.filesystem.warmCandidates(atRelativePath: "").count == 4)
        #expect(try source.filesystem.warmCandidates(atRelativePath: "./top.bin").map(\.path) == ["top.bin"])
    }

    @Test("Globs match relative paths, * across directories; missing prefixes match nothing")
    func globs() throws {
        let source = try tree()
        #expect(
            try source.filesystem.files(matching: ["models/*.safetensors"]).map(\.path)
                == ["models/base.safetensors", "models/lora/a.safetensors"])
        #expect(try source.filesystem.files(matching: ["*.bin", "models/lora/*.txt"]).map(\.path) == ["models/lora/notes.txt", "top.bin"])
        #expect(try source.filesystem.files(matching: ["absent/*"]).isEmpty)
    }

    @Test("Paths that leave the source or go through a symlink are refused", arguments: ["../x", "/etc", "models/alias", "models/../../x"])
    func confinement(path: String) throws {
        let source = try tree()
        #expect(throws: Errno.self) { _ = try source.filesystem.warmCandidates(atRelativePath: path) }
        #expect(throws: Errno.self) { _ = try source.filesystem.warm(relativePath: path, offset: 0, length: 1 << 20) }
    }

    @Test("Warming a range caches its blocks; a later read is served from memory")
    func warmThenRead() throws {
        let source = try tree()
        let fs = source.filesystem
        let (version, bytes) = try fs.warm(relativePath: "models/base.safetensors", offset: 0, length: 131_072)
        #expect(bytes == 131_072 && version.size == 200_000)
        #expect(fs.cache.statistics.residentBytes == 131_072)
        let (rest, restBytes) = try fs.warm(relativePath: "models/base.safetensors", offset: 131_072, length: 1 << 20)
        #expect(restBytes == 200_000 - 131_072 && rest == version)
        #expect(fs.cache.statistics.residentBytes == 200_000)
        #expect(try fs.warm(relativePath: "models/base.safetensors", offset: 300_000, length: 10).bytes == 0)
        #expect(throws: Errno.self) { _ = try fs.warm(relativePath: "models", offset: 0, length: 1) }

        let misses = fs.cache.statistics.misses
        let (node, _) = try "models".withCString { try fs.lookup(parent: MirrorFilesystem.rootNode, name: $0) }
        let (file, _) = try "base.safetensors".withCString { try fs.lookup(parent: node, name: $0) }
        let opened = try fs.open(node: file, flags: O_RDONLY)
        var tier = ReadTier.memory
        let slices = try fs.read(opened, at: 0, count: 200_000, tier: &tier)
        #expect(slices.reduce(0) { $0 + $1.range.count } == 200_000)
        #expect(tier == .memory && fs.cache.statistics.misses == misses)
    }

    @Test("A read that loads from the source is in the source tier")
    func readTier() throws {
        let source = try tree()
        let fs = source.filesystem
        let (file, _) = try "top.bin".withCString { try fs.lookup(parent: MirrorFilesystem.rootNode, name: $0) }
        let opened = try fs.open(node: file, flags: O_RDONLY)
        var first = ReadTier.memory
        _ = try fs.read(opened, at: 0, count: 2, tier: &first)
        var second = ReadTier.memory
        _ = try fs.read(opened, at: 0, count: 2, tier: &second)
        #expect(first == .source && second == .memory)
    }

    @Test("Pinning a directory's files and unpinning them by path")
    func pinAndUnpinByPath() throws {
        let source = try tree()
        let fs = source.filesystem
        try fs.pin(try fs.warmCandidates(atRelativePath: "models/lora"))
        #expect(fs.cache.statistics.pinnedBytes == 70_001 && fs.cache.statistics.pinnedFiles == 2)
        #expect(try fs.unpin(atRelativePath: "models") == (2, 70_001))
        #expect(fs.cache.statistics.pinnedBytes == 0)
    }
}
