"""16: cachefs over a real object-store client, s3fs over a local S3 endpoint (issue 16)."""

import os
import shutil

from .. import data, system
from ..context import LIBRARY, TREE, log, say
from ..report import Row, duration, fmt_plain, throughput

NUMBERS = ("16",)
TITLE = "s3fs source: cold read, warm read with the kernel's caches dropped, ls -lR (cachefs vs s3fs)"
DESCRIPTION = """
**16. s3fs source** (issue 16). `Scripts/lib/s3source.py` uploads a directory (one file of random bytes and the first
1,000 files of the tree) to moto_server (in memory), a local S3 endpoint, and mounts the bucket read-only with s3fs as a
production ossfs/s3fs mount is set up (no local data cache). Per run: the file read from the s3fs mount directly
(16a's baseline), then through a fresh cachefs over it, cold (16a); then, with the kernel's caches dropped again, read
through the same cachefs (16b), which must come from cachefs memory: 16c is the bytes cachefs read from the source
during that read / file size. 16d: `ls -lR` of the 1,000 files through cachefs against the s3fs mount, taking turns, caches
dropped before each run, after one unmeasured warm-up run of each. s3fs gives a file a new inode number each time
the kernel forgets it, which is what 16b and 16c are about.
"""
TREE_DIRS = 1   # 1,000 files: each one is an object uploaded at the start and a HEAD request per listing


def source_directory(bench, mib):
    """DATA/s3-MIB: the file and the tree subset as hard links, the directory uploaded as the bucket."""
    root = bench.path(f"s3-{mib}m")
    name = os.path.basename(data.sized_file(bench, mib))
    if not os.path.exists(os.path.join(root, ".complete")):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        os.link(bench.path(name), os.path.join(root, name))
        for a in range(TREE_DIRS):
            shutil.copytree(bench.path(TREE, f"d{a:02}"), os.path.join(root, TREE, f"d{a:02}"),
                            copy_function=os.link)
        open(os.path.join(root, ".complete"), "w").close()
    return root, name


def run(bench):
    try:
        import s3source   # Scripts/lib/s3source.py, from the s3source branch
    except ImportError:
        raise RuntimeError("Scripts/lib/s3source.py (moto_server + s3fs) is not in this tree") from None
    if os.path.dirname(os.path.abspath(s3source.__file__)) != LIBRARY:
        bench.note(f"scenario 16 used {s3source.__file__} (not yet in this tree)")
    root, name = source_directory(bench, bench.plan.s3_mib)
    size = os.stat(os.path.join(root, name)).st_size
    say(f"uploading {root} to moto_server and mounting it with s3fs")
    with s3source.S3Source(root, bench.mountpoint("s3fs")) as source:
        direct = os.path.join(source.mountpoint, name)
        for i in range(1, bench.plan.runs + 1):
            system.drop_caches()
            rate = system.read_rate(direct)
            bench.record("s16.source.mibs", rate)
            mount = bench.daemons.cachefs(source.mountpoint, bench.mountpoint("cachefs-s3fs"))
            system.drop_caches()
            cold = system.read_rate(os.path.join(mount.path, name))
            bench.record("s16.cold.mibs", cold)
            before = bench.daemons.stats(mount)["bytesFromSource"]
            system.drop_caches()
            warm = system.read_rate(os.path.join(mount.path, name))
            bench.record("s16.warm.mibs", warm)
            from_source = bench.keep_stats(mount, "s16")["bytesFromSource"] - before
            bench.record("s16.warm_source_fraction", from_source / size)
            bench.daemons.stop(mount)
            log(f"run {i}: s3fs {rate:.0f} MiB/s, cachefs cold {cold:.0f} MiB/s, warm {warm:.0f} MiB/s "
                f"({from_source / size:.2f}x the file from the source)")
        mount = bench.daemons.cachefs(source.mountpoint, bench.mountpoint("cachefs-s3fs"))
        roots = {"source": source.mountpoint, "cachefs": mount.path}
        times = system.alternating({key: f"ls -lR {os.path.join(directory, TREE)} >/dev/null"
                                    for key, directory in roots.items()}, bench.plan.runs, warmup=1)
        bench.record_turns(times, "s16.ls.{name}.sec", "ls -lR")
        bench.daemons.stop(mount)


def rows(s, plan):
    size = f"{plan.s3_mib} MiB"
    fraction = s.median("s16.warm_source_fraction")
    return [
        throughput("16a", f"s3fs source: cold read of {size} through cachefs vs s3fs directly", s, "s16.cold.mibs",
                   "s16.source.mibs", "s3fs direct", 0.95, "stats-s16.json"),
        throughput("16b", "s3fs source: warm read through cachefs, kernel caches dropped", s, "s16.warm.mibs",
                   "s16.source.mibs", "s3fs direct", None, "stats-s16.json"),
        Row("16c", "s3fs source: bytes the warm read took from the source / file size", fraction, None, fmt_plain,
            "<= 0.05", lambda m, b, r: m <= 0.05, ratio=fraction, baseline_text="—", stats="stats-s16.json"),
        duration("16d", f"s3fs source: ls -lR over {TREE_DIRS * 1000:,} files", s, "s16.ls.cachefs.sec",
                 "s16.ls.source.sec", "s3fs direct", 1.5, "stats-s16.json"),
    ]
