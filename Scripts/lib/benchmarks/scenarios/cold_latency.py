"""4: a cold read through cachefs over a latency-bound source, against the source itself, and the floor of
that read on this machine."""

import os
import subprocess

from .. import system
from ..context import ONE, log
from ..report import Row, Samples, fmt_rate, ratio, throughput
from .peer_floor import compile_floor, floor_bound

NUMBERS = ("4",)
TITLE = "cold, latency-bound source (testsource --latency-ms 3), with the floor of the cold read"
DESCRIPTION = """
**4. Cold, latency-bound.** `cachefs-testsource DATA SRC --latency-ms 3` (direct_io passthrough, every read request
sleeps 3 ms); a fresh cachefs over it per run. Baseline: `dd bs=1M` of the testsource mount. The floor (4b) is the
least CPU a cold read through a daemon that keeps the bytes in memory costs here, each part measured alone as all
cores' busy time (medians of 3): the source delivering the bytes to 8 `O_DIRECT` readers taking 4 MiB chunks in
turn, the prefetch lanes' pattern (`Scripts/lib/floor/lanes.c`); filling fresh block memory (`populate.c`); and
serving the bytes from memory through the daemon the way a cold read's bytes reach the reader (a memory hit with
`--passthrough off`, read with `dd iflag=direct`: a file with blocks still to load is opened with direct I/O, so each
reply is copied straight into the reader's buffer). On this many cores that work takes at least CPU-s / cores seconds. It is an optimistic bound:
the parts run alone, so they do not share the cores' caches and memory bandwidth as a cold read's do.
"""
LATENCY_MS = "3"
LANES = 8  # the default --prefetch-threads
FLOOR_RUNS = 3


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
    measure_floor(bench, source, mib)
    bench.daemons.stop(source)


def measure_floor(bench, source, mib):
    programs = compile_floor(bench, ("lanes", "populate"))
    populate = programs["populate"]
    lanes = [programs["lanes"], os.path.join(source.path, ONE), str(mib), str(LANES)]
    served = bench.daemons.cachefs(source.path, bench.mountpoint("floor4"), "--passthrough", "off")
    subprocess.run(system.dd(os.path.join(served.path, ONE), mib), check=True)  # the bytes into its memory
    for _ in range(FLOOR_RUNS):
        system.drop_caches()
        _, busy = system.timed_busy(lanes, stdout=subprocess.DEVNULL)
        bench.record("s4.floor.source.cpu", busy)
        bench.record("s4.floor.populate.cpu", float(system.output([populate, str(mib)])))
        system.drop_caches()
        _, busy = system.timed_busy(system.dd(os.path.join(served.path, ONE), mib) + ["iflag=direct"])
        bench.record("s4.floor.served.cpu", busy)
    bench.daemons.stop(served)
    s = Samples(bench.samples)
    log(f"floor of {mib} MiB: the source to {LANES} readers {s.median('s4.floor.source.cpu'):.2f} CPU-s, populating "
        f"{s.median('s4.floor.populate.cpu'):.2f}, served from memory {s.median('s4.floor.served.cpu'):.2f}")


def floor_rate(s, plan):
    """The fastest a cold read can be here: the floor's CPU spread over all cores."""
    return floor_bound(s, plan.latency_mib, [f"s4.floor.{part}.cpu" for part in ("source", "populate", "served")])


def label(plan):
    return "1 GiB" if plan.latency_mib >= 1024 else f"first {plan.latency_mib} MiB of 1 GiB"


def rows(s, plan):
    rate, cpu = floor_rate(s, plan)
    source = s.median("s4.source.mibs")
    return [
        throughput("4a", f"Cold, latency-bound: {label(plan)} over testsource --latency-ms 3", s,
                   "s4.cachefs.mibs", "s4.source.mibs", "testsource dd bs=1M", 3, "stats-s4.json"),
        Row("4b", "Cold, latency-bound: the floor's bound on the cold read (source to 8 lanes + populate + "
            "daemon-served memory hit" + (f" = {cpu:.2f} CPU-s on {system.CORES} cores)" if cpu else ")"),
            rate, source, fmt_rate, "report", None, "testsource dd bs=1M", ratio(rate, source)),
    ]
