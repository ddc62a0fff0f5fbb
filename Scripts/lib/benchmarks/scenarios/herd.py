"""6: many readers of one cold file: the source is read once, and the herd takes about as long as one reader."""

import os
import subprocess
import time

from .. import system
from ..context import ONE, log
from ..report import Row, duration, fmt_plain
from .cold_latency import latency_source

NUMBERS = ("6",)
TITLE = "thundering herd (16 readers, testsource --latency-ms 3)"
DESCRIPTION = """
**6. Thundering herd.** 16 `dd` readers started together on the cold 1 GiB file through a fresh cachefs over the
latency-bound testsource. 6a is `bytesFromSource` / file size from `cachefs stats --json` after the herd; 6b is the
herd's wall time against one reader of the same file on another fresh mount.
"""


def herd_seconds(path, readers):
    start = time.monotonic()
    procs = [subprocess.Popen(system.dd(path)) for _ in range(readers)]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"a reader of {path} failed")
    return time.monotonic() - start


def run(bench):
    source = latency_source(bench)
    size = os.stat(bench.path(ONE)).st_size
    readers = bench.plan.herd_readers
    for i in range(1, bench.plan.runs + 1):
        mount = bench.daemons.cachefs(source.path, bench.mountpoint("herd"))
        system.drop_caches()
        herd = herd_seconds(os.path.join(mount.path, ONE), readers)
        bench.record("s6.herd.sec", herd)
        amplification = bench.keep_stats(mount, "s6")["bytesFromSource"] / size
        bench.record("s6.amplification", amplification)
        bench.daemons.stop(mount)
        mount = bench.daemons.cachefs(source.path, bench.mountpoint("herd"))
        system.drop_caches()
        single = system.seconds(system.dd(os.path.join(mount.path, ONE)))
        bench.record("s6.single.sec", single)
        bench.daemons.stop(mount)
        log(f"run {i}: {readers} readers {herd:.2f} s ({amplification:.2f}x the file from the source), "
            f"1 reader {single:.2f} s")


def rows(s, plan):
    amp = s.median("s6.amplification")
    return [
        Row("6a", f"Thundering herd: {plan.herd_readers} readers of a cold 1 GiB file, bytesFromSource / size", amp,
            None, fmt_plain, "<= 1.1", lambda m, b, r: m <= 1.1, ratio=amp, baseline_text="—",
            stats="stats-s6.json"),
        duration("6b", f"Thundering herd: wall time of {plan.herd_readers} readers vs 1 reader (fresh mounts)", s,
                 "s6.herd.sec", "s6.single.sec", "1 reader", 1.5, "stats-s6.json"),
    ]
