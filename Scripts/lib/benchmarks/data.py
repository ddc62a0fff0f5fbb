"""The test data: random files and a tree of small files on local disk, made once and reused."""

import os
import random
import shutil

from .context import BIG, FILE_MIB, ONE, TREE, say
from .system import MiB

DESCRIPTION = """\
Data lives on local disk under the work directory (`/var/tmp/cachefs-bench` unless `CACHEFS_BENCH_DIR` is set): a
2 GiB and a 1 GiB file of random bytes, a tree of 50,000 small files and the seed table's checkpoint, reused across
runs; the 2 GiB file is copied to `/dev/shm` for the tmpfs baselines. Every sequential read is `dd bs=1M
of=/dev/null`, timed around the process; "page cache dropped" is `sync; echo 3 > /proc/sys/vm/drop_caches` right
before the timed command. Every daemon (cachefs in `--foreground`, rclone, bindfs, cachefs-testsource) is a child of
the bench, stopped by its PID, and everything mounted under the work directory is unmounted when a scenario ends,
fails, or the bench is interrupted."""


def random_file(bench, name, mib):
    """DATA/NAME of MIB MiB of random bytes (compression or deduplication anywhere would flatter the reads)."""
    path = bench.path(name)
    if os.path.exists(path) and os.stat(path).st_size == mib * MiB:
        return path
    say(f"writing {path} ({mib} MiB of random bytes)")
    with open(path + ".tmp", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    os.replace(path + ".tmp", path)
    return path


def sized_file(bench, mib):
    """A file of MIB MiB: one of the standard two, or model-NNNm.bin."""
    for name, size in FILE_MIB.items():
        if size == mib:
            return random_file(bench, name, mib)
    return random_file(bench, f"model-{mib}m.bin", mib)


def tree(bench):
    """50 x 10 directories of 100 files of 0-4 KiB; a subset of the first top-level directories as hard links,
    so that find and ls walk the same kind of tree (symlinks would be followed differently)."""
    root = bench.path(TREE)
    if not os.path.exists(os.path.join(root, ".complete")):
        say(f"writing {root} (50,000 small files)")
        shutil.rmtree(root, ignore_errors=True)
        rng = random.Random(1)
        for a in range(50):
            for b in range(10):
                d = os.path.join(root, f"d{a:02}", f"s{b}")
                os.makedirs(d)
                for c in range(100):
                    with open(os.path.join(d, f"f{c:03}.bin"), "wb") as f:
                        f.write(rng.randbytes(rng.randrange(0, 4096)))
        open(os.path.join(root, ".complete"), "w").close()
    walk = bench.path(bench.tree_walk)
    if walk != root and not os.path.exists(os.path.join(walk, ".complete")):
        shutil.rmtree(walk, ignore_errors=True)
        os.makedirs(walk)
        for a in range(bench.plan.tree_dirs):
            shutil.copytree(os.path.join(root, f"d{a:02}"), os.path.join(walk, f"d{a:02}"), copy_function=os.link)
        open(os.path.join(walk, ".complete"), "w").close()


def tree_files(bench):
    return sum(len([f for f in files if f != ".complete"]) for _, _, files in os.walk(bench.path(bench.tree_walk)))


def prepare(bench):
    """The data most scenarios need."""
    os.makedirs(bench.data, exist_ok=True)
    random_file(bench, BIG, FILE_MIB[BIG])
    random_file(bench, ONE, FILE_MIB[ONE])
    tree(bench)


def tmpfs_copy(bench):
    """The 2 GiB file on tmpfs, for the baselines (made when first needed: it holds 2 GiB of memory until the end)."""
    path = os.path.join(bench.shm, BIG)
    if not os.path.exists(path):
        say(f"copying {BIG} to tmpfs ({bench.shm})")
        os.makedirs(bench.shm, exist_ok=True)
        shutil.copyfile(bench.path(BIG), path)
    return path
