"""4: a cold read through cachefs over a latency-bound source, against the source itself."""

import os

from .. import system
from ..context import ONE, log
from ..report import throughput

NUMBERS = ("4",)
TITLE = "cold, latency-bound source (testsource --latency-ms 3)"
DESCRIPTION = """
**4. Cold, latency-bound.** `cachefs-testsource DATA SRC --latency-ms 3` (direct_io passthrough, every read request
sleeps 3 ms); a fresh cachefs over it per run. Baseline: `dd bs=1M` of the testsource mount.
"""
LATENCY_MS = "3"


def latency_source(bench):
    """The latency-bound source of 4, 6 and 10."""
    return bench.daemons.testsource(bench.data, bench.mountpoint("testsource"), "--latency-ms", LATENCY_MS)


def run(bench):
    source = latency_source(bench)
    mib = bench.plan.latency_mib
    for i in range(1, bench.plan.runs + 1):
        system.drop_caches()
        rate = system.read_rate(os.path.join(source.path, ONE), mib)
        bench.record("s4.source.mibs", rate)
        log(f"run {i}: testsource {rate:.0f} MiB/s")
        mount = bench.daemons.cachefs(source.path, bench.mountpoint("cold"))
        system.drop_caches()
        rate = system.read_rate(os.path.join(mount.path, ONE), mib)
        bench.record("s4.cachefs.mibs", rate)
        log(f"run {i}: cachefs over it {rate:.0f} MiB/s")
        bench.keep_stats(mount, "s4")
        bench.daemons.stop(mount)


def label(plan):
    return "1 GiB" if plan.latency_mib >= 1024 else f"first {plan.latency_mib} MiB of 1 GiB"


def rows(s, plan):
    return [throughput("4", f"Cold, latency-bound: {label(plan)} over testsource --latency-ms 3", s,
                       "s4.cachefs.mibs", "s4.source.mibs", "testsource dd bs=1M", 3, "stats-s4.json")]
