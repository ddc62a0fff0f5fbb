"""9: the daemon's memory stays within its capacity while it reads 4x the capacity."""

import os

from .. import system
from ..context import BIG, log
from ..report import Row, fmt_mib, ratio

NUMBERS = ("9",)
TITLE = "memory bound (--capacity 512M, 2 GiB read)"
DESCRIPTION = """
**9. Memory.** A fresh cachefs with a small capacity over the data directory reads 4x its capacity of distinct data;
the figure is `VmHWM` from `/proc/PID/status` of the daemon.
"""


def status_mib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024


def run(bench):
    capacity = bench.plan.memory_bound_capacity_mib
    for i in range(1, bench.plan.runs + 1):
        mount = bench.daemons.cachefs(bench.data, bench.mountpoint("small"), capacity=f"{capacity}M")
        system.seconds(system.dd(os.path.join(mount.path, BIG)))
        hwm, rss = status_mib(mount.pid, "VmHWM"), status_mib(mount.pid, "VmRSS")
        bench.record("s9.hwm_mib", hwm)
        bench.record("s9.capacity_mib", capacity)
        log(f"run {i}: VmHWM {hwm:.1f} MiB, VmRSS {rss:.0f} MiB (capacity {capacity} MiB)")
        bench.keep_stats(mount, "s9")
        bench.daemons.stop(mount)


def rows(s, plan):
    hwm, cap = s.median("s9.hwm_mib"), s.median("s9.capacity_mib")
    return [Row("9", f"Memory: daemon VmHWM after reading 2 GiB with --capacity {fmt_mib(cap)}", hwm, cap, fmt_mib,
                "<= capacity + 64 MiB", lambda m, b, r: m <= b + 64, "capacity", ratio(hwm, cap),
                stats="stats-s9.json")]
