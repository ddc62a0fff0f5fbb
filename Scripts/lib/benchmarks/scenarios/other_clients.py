"""8: other FUSE clients over the same data: rclone's full VFS cache, bindfs over tmpfs (and 8d from scenario 3)."""

import os
import shutil

from .. import data, system
from ..context import BIG, log
from ..report import Row, fmt_rate, ratio, throughput

NUMBERS = ("8",)
TITLE = "peers: rclone --vfs-cache-mode full, bindfs over tmpfs"
DESCRIPTION = """
**8. Peers.** rclone `--vfs-cache-mode full` over the data directory (cache on local disk): the file is read once, then
per run caches are dropped and it is read again; 8a compares cachefs's scenario-1 throughput with it. bindfs (default
options, a plain passthrough) over the tmpfs copy for the scenario 1 and 2 style reads, and over the rclone 300M
mount for the cold read of scenario 3 (8d, measured by scenario 3).
"""


def run(bench):
    cache = os.path.join(bench.work, "rclone-cache")
    shutil.rmtree(cache, ignore_errors=True)
    rclone = bench.daemons.rclone(bench.data, bench.mountpoint("rclone-full"), "--vfs-cache-mode", "full",
                                  "--cache-dir", cache)
    system.drop_caches()
    rate = system.read_rate(os.path.join(rclone.path, BIG))
    bench.record("s8.rclone_first.mibs", rate)
    log(f"rclone full, first read {rate:.0f} MiB/s")
    for i in range(1, bench.plan.runs + 1):
        system.drop_caches()
        rate = system.read_rate(os.path.join(rclone.path, BIG))
        bench.record("s8.rclone_warm.mibs", rate)
        log(f"run {i}: rclone full, warm {rate:.0f} MiB/s")
    bench.daemons.stop(rclone)
    shutil.rmtree(cache, ignore_errors=True)

    bindfs = bench.daemons.bindfs(os.path.dirname(data.tmpfs_copy(bench)), bench.mountpoint("bindfs-shm"))
    for i in range(1, bench.plan.runs + 1):
        system.drop_caches()
        hit = system.read_rate(os.path.join(bindfs.path, BIG))
        bench.record("s8.bindfs_hit.mibs", hit)
        again = system.read_rate(os.path.join(bindfs.path, BIG))
        bench.record("s8.bindfs_reread.mibs", again)
        log(f"run {i}: bindfs over tmpfs, page cache dropped {hit:.0f} MiB/s, re-read {again:.0f} MiB/s")
    bench.daemons.stop(bindfs)


def rows(s, plan):
    cw, rw = s.median("s1.cachefs.mibs"), s.median("s8.rclone_warm.mibs")
    return [
        Row("8a", "Peer: cachefs warm vs rclone --vfs-cache-mode full warm (2 GiB, page cache dropped)", cw, rw,
            fmt_rate, ">= 4x", lambda m, b, r: r >= 4, "rclone full", ratio(cw, rw)),
        throughput("8b", "Peer: bindfs over tmpfs, page cache dropped (2 GiB; cf. 1)", s, "s8.bindfs_hit.mibs",
                   "s1.tmpfs.mibs", "tmpfs", None),
        throughput("8c", "Peer: bindfs over tmpfs, re-read (2 GiB; cf. 2)", s, "s8.bindfs_reread.mibs",
                   "s2.tmpfs.mibs", "tmpfs", None),
    ]
