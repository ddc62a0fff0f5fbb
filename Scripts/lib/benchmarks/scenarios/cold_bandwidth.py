"""3 (and 8d): a cold read through cachefs over a bandwidth-capped rclone mount, against the mount itself."""

import os

from .. import system
from ..context import FILE_MIB, log
from ..report import throughput

NUMBERS = ("3",)
TITLE = "cold, bandwidth-bound source (rclone --bwlimit 300M) and bindfs over it"
DESCRIPTION = """
**3. Cold, bandwidth-bound.** `rclone mount DATA SRC --read-only --vfs-cache-mode off --bwlimit 300M`; per run, caches
are dropped, a fresh cachefs is mounted over SRC, the file is read, and cachefs is unmounted. Baseline: the same read
from SRC directly. bindfs (a plain passthrough) over SRC is read the same way for 8d.
"""


def capped_rclone(bench):
    """The bandwidth-bound source of 3 and 11."""
    return bench.daemons.rclone(bench.data, bench.mountpoint("rclone-300m"), "--vfs-cache-mode", "off",
                                "--bwlimit", "300M")


def source_rate(bench, source):
    """Scenario 3's baseline, the direct read of the capped source; measured here once when 3 did not run."""
    if "s3.source.mibs" not in bench.samples:
        system.drop_caches()
        bench.record("s3.source.mibs", system.read_rate(os.path.join(source.path, bench.plan.cold_file)))


def run(bench):
    source = capped_rclone(bench)
    name = bench.plan.cold_file
    for i in range(1, bench.plan.runs + 1):
        system.drop_caches()
        rate = system.read_rate(os.path.join(source.path, name))
        bench.record("s3.source.mibs", rate)
        log(f"run {i}: rclone mount {rate:.0f} MiB/s")
        mount = bench.daemons.cachefs(source.path, bench.mountpoint("cold"))
        system.drop_caches()
        rate = system.read_rate(os.path.join(mount.path, name))
        bench.record("s3.cachefs.mibs", rate)
        log(f"run {i}: cachefs over it {rate:.0f} MiB/s")
        bench.keep_stats(mount, "s3")
        bench.daemons.stop(mount)
        mount = bench.daemons.bindfs(source.path, bench.mountpoint("bindfs-cold"))
        system.drop_caches()
        rate = system.read_rate(os.path.join(mount.path, name))
        bench.record("s8.bindfs_cold.mibs", rate)
        log(f"run {i}: bindfs over it {rate:.0f} MiB/s")
        bench.daemons.stop(mount)


def label(plan):
    return f"{FILE_MIB[plan.cold_file] // 1024} GiB"


def rows(s, plan):
    return [throughput("3", f"Cold, bandwidth-bound: {label(plan)} over rclone --bwlimit 300M", s, "s3.cachefs.mibs",
                       "s3.source.mibs", "rclone mount direct", 0.95, "stats-s3.json"),
            throughput("8d", f"Peer: bindfs over the rclone 300M mount, cold ({label(plan)}; cf. 3)", s,
                       "s8.bindfs_cold.mibs", "s3.source.mibs", "rclone mount direct", None)]
