import Foundation
import Testing

/// Programs nobody here wrote read through the mount exactly what they read from the source.
@Suite("Real clients", .serialized)
struct RealClientTests {
    static let makeModel = #"""
        import numpy as np, sys
        from safetensors.numpy import save_file
        rng = np.random.default_rng(7)
        tensors = {
            "model.embed.weight": rng.standard_normal((4096, 1024), dtype=np.float32),
            "model.layers.0.attn.q": rng.standard_normal((1024, 1024)).astype(np.float16),
            "model.layers.0.bias": rng.integers(-100, 100, size=(1024,), dtype=np.int64),
            "model.scalar": np.array(3.5, dtype=np.float64),
            "model.empty": np.zeros((0, 16), dtype=np.float32),
        }
        save_file(tensors, sys.argv[1], metadata={"format": "np"})
        """#

    static let compareModel = #"""
        import numpy as np, sys
        from safetensors import safe_open
        source, mirror = sys.argv[1], sys.argv[2]
        with safe_open(source, framework="np") as a, safe_open(mirror, framework="np") as b:
            assert a.metadata() == b.metadata(), "metadata differs"
            assert sorted(a.keys()) == sorted(b.keys()), "tensor names differ"
            count = len(a.keys())
            for name in a.keys():
                x, y = a.get_tensor(name), b.get_tensor(name)
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
        # numpy's memmap of the raw file, compared at every byte
        m, s = np.memmap(mirror, dtype=np.uint8, mode="r"), np.memmap(source, dtype=np.uint8, mode="r")
        assert m.shape == s.shape and np.array_equal(m, s), "memmap bytes differ"
        print("tensors", count)
        """#

    @Test("safetensors (mmap) and numpy memmap load every tensor identically")
    func safetensorsAndMemmap() throws {
        let tree = try MountedTree("true")
        defer { tree.stop() }
        let made = try run("python3", ["-c", Self.makeModel, tree.source + "/model.safetensors"])
        #expect(made.status == 0, "\(made.error)")
        try dropKernelCaches()
        let result = try run(
            "python3", ["-c", Self.compareModel, tree.source + "/model.safetensors", tree.mount.mountpoint + "/model.safetensors"])
        #expect(result.status == 0, "\(result.error)")
        #expect(result.output == "tensors 5\n")
    }

    /// The seed table's checkpoint layout (Scripts/lib/benchmarks/checkpoint.py): tensors lie in
    /// index order, and safetensors loads them in name order (1, 10…19, 100…109, 11, 110…119…),
    /// so through its mapping the loader alternates between regions of the file. Each region
    /// keeps its prefetch window, and the lanes load nearly every block before the loader asks
    /// for it; with one window for the file, 152 of these 400 blocks were read on demand.
    @Test("A safetensors load of tensors read in name order, not file order, is prefetched")
    func nameOrderLoadIsPrefetched() throws {
        let tree = try MountedTree("true", capacity: "1G")
        defer { tree.stop() }
        let library = "PYTHONPATH=" + packageRoot.appendingPathComponent("Scripts/lib").path
        let write = "import sys; from benchmarks import checkpoint; checkpoint.write(sys.argv[1], 400)"
        let made = try run("/usr/bin/env", [library, "python3", "-c", write, tree.source + "/model.safetensors"])
        #expect(made.status == 0, "\(made.error)")
        try dropKernelCaches()
        let loaded = try run(
            "/usr/bin/env", [library, "python3", "-m", "benchmarks.checkpoint", "load", tree.mount.mountpoint + "/model.safetensors"])
        #expect(loaded.status == 0, "\(loaded.output)\(loaded.error)")
        let stats = try tree.mount.stats()
        #expect(stats[.misses] == 400, "every block loaded once")
        let onDemand = stats[.misses] - stats[.prefetchedBlocks]
        #expect(onDemand <= 20, "\(onDemand) of 400 blocks were read on demand, not by a prefetch lane")
    }

    @Test("sha256sum, tar, rsync -c -n and diff see no difference over a mirrored tree")
    func standardTools() throws {
        let tree = try MountedTree(
            """
            mkdir -p models/Lora sub/deeper && head -c 5000000 /dev/urandom > models/base.ckpt
            for i in $(seq 1 50); do head -c $((i * 1000)) /dev/urandom > models/Lora/lora-$i.safetensors; done
            ln -s ../models/base.ckpt sub/link && echo text > sub/deeper/readme.txt && chmod 640 sub/deeper/readme.txt
            """)
        defer { tree.stop() }
        let (source, mirror) = (tree.source, tree.mount.mountpoint)
        let sums = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum"
        #expect(try shell(sums, in: mirror) == (try shell(sums, in: source)))
        let tarball = "tar -c --sort=name --numeric-owner -f - . | sha256sum"
        #expect(try shell(tarball, in: mirror) == (try shell(tarball, in: source)))
        #expect(try shell("rsync -a -c -n -i --delete \(source)/ \(mirror)/") == "", "rsync found differences")
        #expect(try run("/usr/bin/diff", ["-r", "--no-dereference", source, mirror]).status == 0)
    }

    @Test("fio verifies a cached file, sequentially and at random")
    func fioVerify() throws {
        let tree = try MountedTree(
            "fio --name=write --filename=fio.dat --rw=write --bs=64k --size=64m --verify=crc32c --do_verify=0 --output=/dev/null")
        defer { tree.stop() }
        let file = tree.mount.mountpoint + "/fio.dat"
        for pattern in ["read", "randread"] {
            let result = try run(
                "fio",
                [
                    "--name=verify-\(pattern)", "--filename=\(file)", "--rw=\(pattern)", "--bs=64k", "--size=64m",
                    "--verify=crc32c", "--verify_only", "--readonly", "--verify_fatal=1",
                ])
            #expect(result.status == 0, "fio \(pattern): \(result.output.suffix(400)) \(result.error)")
            #expect(!result.output.contains("verify:") || result.output.contains("err= 0"))
        }
    }
}
