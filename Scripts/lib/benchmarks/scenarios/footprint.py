"""13: memory the machine spends on a file read through cachefs: the daemon's blocks plus the mount's page cache."""

import os
import subprocess

from .. import data, system
from ..context import BIG, log
from ..memcg import MemoryGroup
from ..report import Row, fmt_mib

NUMBERS = ("13",)
TITLE = "footprint: page cache + anonymous memory after reading 2 GiB twice (cachefs vs plain local disk)"
DESCRIPTION = """
**13. Footprint.** The memory a read costs the machine, divided by the file size. The reader (two `dd bs=1M` of the
2 GiB file, back to back) and, for cachefs, a fresh daemon (`--capacity 3G`) run in a memory cgroup of their own
created for each run; the figure is the growth of its anonymous memory plus page cache (`rss` + `cache` in cgroup v1's
`memory.stat`, `anon` + `file` in v2) from just before the reads to just after, with the page cache dropped first.
cachefs reads the tmpfs copy, whose pages belong to the process that wrote them, so the source's own pages are not
counted. Baseline: the same two reads of the file on local disk (the page cache alone: about 1x).
"""
TARGET = 1.1


def footprint(bench, path, mount_source=None):
    """(anonymous, page cache) growth in bytes while reading PATH twice, or the file of the same name under a fresh
    cachefs over MOUNT_SOURCE; the reader and the daemon are charged to a group of their own."""
    group = MemoryGroup(f"cachefs-bench-footprint-{os.getpid()}")
    mount = None
    try:
        system.drop_caches()
        if mount_source:
            mount = bench.daemons.cachefs(mount_source, bench.mountpoint("footprint"), preexec_fn=group.join)
            path = os.path.join(mount.path, os.path.basename(path))
        before = group.used()
        for _ in range(2):
            subprocess.run(system.dd(path), check=True, preexec_fn=group.join)
        after = group.used()
        if mount:
            bench.keep_stats(mount, "s13")
        return after[0] - before[0], after[1] - before[1], group.scope
    finally:
        if mount:
            bench.daemons.stop(mount)
        group.remove()


def run(bench):
    size = os.stat(bench.path(BIG)).st_size
    for i in range(1, bench.plan.runs + 1):
        copy = data.tmpfs_copy(bench)
        for name, args in (("disk", (bench.path(BIG),)), ("cachefs", (copy, os.path.dirname(copy)))):
            anon, cache, scope = footprint(bench, *args)
            bench.record(f"s13.{name}.ratio", (anon + cache) / size)
            bench.record(f"s13.{name}.anon_mib", anon / system.MiB)
            bench.record(f"s13.{name}.cache_mib", cache / system.MiB)
            log(f"run {i}: {name}: +{anon / system.MiB:.0f} MiB anonymous, +{cache / system.MiB:.0f} MiB page cache "
                f"= {(anon + cache) / size:.2f}x the file")
    if scope.startswith("the whole machine"):
        bench.note(f"footprint measured over {scope}: other processes' memory is counted too")


def rows(s, plan):
    def parts(name):
        anon, cache = s.median(f"s13.{name}.anon_mib"), s.median(f"s13.{name}.cache_mib")
        return None if anon is None else f"{fmt_mib(anon + cache)} ({fmt_mib(anon)} anon + {fmt_mib(cache)} cache)"

    measured, baseline = s.median("s13.cachefs.ratio"), s.median("s13.disk.ratio")
    return [
        Row("13", "Footprint: anonymous + page cache growth / file size after reading 2 GiB twice through cachefs "
            "(source on tmpfs)", measured, baseline, lambda v: "—" if v is None else f"{v:.2f}x the file",
            f"<= {TARGET}x the file", lambda m, b, r: m <= TARGET, "local disk, no FUSE", ratio=measured,
            measured_text=parts("cachefs"), stats="stats-s13.json"),
    ]
