"""1, 2: reads of a file held in cachefs memory, against tmpfs."""

import os

from .. import data, system
from ..context import BIG, log
from ..report import throughput

NUMBERS = ("1", "2")
TITLE = "memory hit and re-read (2 GiB, cachefs vs tmpfs)"
DESCRIPTION = """
**1. Memory hit.** One cachefs mount over the data directory (`--capacity 3G`); the 2 GiB file is read once, so every
block is in cachefs memory; then, per run, caches are dropped and the file is read. Baseline: the tmpfs copy, read
the same way.

**2. Re-read.** Right after each run of 1, the same file is read again without dropping caches (the kernel page cache,
kept by cachefs across opens, answers). Baseline: tmpfs again.
"""


def warm_main_mount(bench):
    """The cachefs mount over the data directory with the 2 GiB file in its memory (1, 2, 5 and 7 use it)."""
    mount = bench.daemons.cachefs(bench.data, bench.mountpoint("main"))
    system.seconds(system.dd(os.path.join(mount.path, BIG)))
    cached = bench.daemons.stats(mount)["cachedBytes"]
    if cached < os.stat(bench.path(BIG)).st_size:
        bench.note(f"after one read only {cached} bytes of {BIG} are cached in cachefs")
    return mount


def run(bench):
    mount = warm_main_mount(bench)
    tmpfs, cached = data.tmpfs_copy(bench), os.path.join(mount.path, BIG)
    for i in range(1, bench.plan.runs + 1):
        system.drop_caches()
        bench.record("s1.tmpfs.mibs", system.read_rate(tmpfs))
        bench.record("s2.tmpfs.mibs", system.read_rate(tmpfs))
        system.drop_caches()
        hit = system.read_rate(cached)
        bench.record("s1.cachefs.mibs", hit)
        again = system.read_rate(cached)
        bench.record("s2.cachefs.mibs", again)
        log(f"run {i}: memory hit {hit:.0f} MiB/s, re-read {again:.0f} MiB/s")
    bench.keep_stats(mount, "main")


def rows(s, plan):
    return [
        throughput("1", "Memory hit: 2 GiB cached in cachefs, page cache dropped, dd bs=1M", s, "s1.cachefs.mibs",
                   "s1.tmpfs.mibs", "tmpfs", 0.9, "stats-main.json"),
        throughput("2", "Re-read: 2 GiB again, page cache kept", s, "s2.cachefs.mibs", "s2.tmpfs.mibs", "tmpfs", 0.9,
                   "stats-main.json"),
    ]
