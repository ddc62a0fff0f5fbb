"""12: cache peers with their CPU cost and the floor (what was Scripts/bench-peers, which now runs it alone).

A cold instance reads a file from a warm peer on loopback, against the same file read from the peer's own memory
and from a bandwidth-capped source; then the least CPU any peer read can cost on this machine is measured: the
memory-hit read's own work, fresh memory for the new blocks, the bytes over loopback TCP (Scripts/lib/floor)."""

import os
import shutil
import subprocess

from .. import data, system
from ..context import log
from ..report import Row, Samples, fmt_rate, ratio, throughput
from .cache_peers import pair

NUMBERS = ("12",)
TITLE = "cache peers on a capped testsource, with their CPU and the floor (Scripts/bench-peers)"
DESCRIPTION = """
**12. Cache peers and their floor** (`Scripts/bench-peers` runs this alone). Source: `cachefs-testsource
--bandwidth` at 300 MiB/s over the data directory. Per run: instance A, fresh, reads the file (12a's baseline: a
cold read of the capped source through cachefs), then again after dropping caches (its memory hit, 12b's baseline);
B, fresh, with A as its peer, reads it after dropping caches. Reads are `cat`; CPU is all cores' busy time during
the read (from `/proc/stat`), so on an idle machine it is the whole cost, daemons and reader. The floor (12c) adds
the memory hit's CPU, filling fresh block memory as the daemon does (`Scripts/lib/floor/populate.c`: `pwrite` of 1 MiB
pieces into a memfd) and the bytes over loopback TCP (`loopback.c`), medians of 3 each; on this many cores that work takes at
least CPU-s / cores seconds, which bounds the peer read's rate.
"""
FLOOR_RUNS = 3


def bandwidth_bytes(text):
    return int(text.rstrip("Mm")) * system.MiB if text[-1] in "Mm" else int(text)


def compile_floor(bench, names=("populate", "loopback"), directory="Scripts/lib/floor"):
    """Builds the named programs of DIRECTORY (in the repository; Scripts/lib/floor by default); returns their paths
    by name."""
    compiler = shutil.which("cc") or shutil.which("clang")
    programs = {}
    for name in names:
        programs[name] = os.path.join(bench.work, name)
        source = os.path.join(bench.repo, directory, name + ".c")
        subprocess.run([compiler, "-O2", "-pthread", "-o", programs[name], source], check=True)
    return programs


def run(bench):
    plan = bench.plan
    mib = plan.peer_mib
    name = os.path.basename(data.sized_file(bench, mib))
    source = bench.daemons.testsource(bench.data, bench.mountpoint("testsource-capped"), "--bandwidth",
                                      str(bandwidth_bytes(plan.peer_bandwidth)))
    for i in range(1, plan.runs + 1):
        a, start_b = pair(bench, source.path, "floor-a", "floor-b", capacity=f"{mib + mib // 2 + 64}M")
        read = ["cat", os.path.join(a.path, name)]
        system.drop_caches()
        cold, _ = system.timed_busy(read, stdout=subprocess.DEVNULL)
        system.drop_caches()
        memory, memory_busy = system.timed_busy(read, stdout=subprocess.DEVNULL)
        b = start_b()
        a_ticks, b_ticks = system.cpu_ticks(a.pid), system.cpu_ticks(b.pid)
        system.drop_caches()
        peer, peer_busy = system.timed_busy(["cat", os.path.join(b.path, name)], stdout=subprocess.DEVNULL)
        a_cpu = (system.cpu_ticks(a.pid) - a_ticks) / system.HZ
        b_cpu = (system.cpu_ticks(b.pid) - b_ticks) / system.HZ
        stats = bench.keep_stats(b, "s12")
        for key, value in (("source.mibs", mib / cold), ("memory.mibs", mib / memory), ("peer.mibs", mib / peer),
                           ("memory.busy", memory_busy), ("peer.busy", peer_busy), ("serving.cpu", a_cpu),
                           ("reading.cpu", b_cpu)):
            bench.record(f"s12.{key}", value)
        log(f"run {i}: A cold from the source {cold:.2f} s, A memory {memory:.2f} s, B from peer {peer:.2f} s "
            f"(B: {stats['bytesFromPeers']} bytes from peers, {stats['bytesFromSource']} from the source)")
        log(f"run {i}, CPU seconds of the peer read: serving instance A {a_cpu:.2f}, reading instance B {b_cpu:.2f}, "
            f"all cores busy {peer_busy:.2f} of {system.CORES * peer:.2f}; of the memory hit: busy {memory_busy:.2f} "
            f"of {system.CORES * memory:.2f}")
        bench.daemons.stop(b)
        bench.daemons.stop(a)
    bench.daemons.stop(source)

    programs = compile_floor(bench)
    for _ in range(FLOOR_RUNS):
        for what, program in programs.items():
            bench.record(f"s12.floor.{what}.cpu", float(system.output([program, str(mib)])))
    s = Samples(bench.samples)
    populate, loopback, busy = (s.median(f"s12.{key}")
                                for key in ("floor.populate.cpu", "floor.loopback.cpu", "memory.busy"))
    log(f"floor: populating {mib} MiB of new block memory {populate:.2f} CPU-s, {mib} MiB over loopback TCP "
        f"{loopback:.2f} CPU-s, the memory-hit read itself {busy:.2f} CPU-s")


def floor_bound(s, mib, keys):
    """The fastest MIB MiB can be read here if reading costs the CPU-s the samples KEYS hold (medians,
    summed) spread over all cores; with that sum, or (None, None) when a part is missing."""
    parts = [s.median(key) for key in keys]
    if None in parts or sum(parts) == 0:
        return None, None
    return mib / (sum(parts) / system.CORES), sum(parts)


def floor_rate(s, plan):
    """The fastest a peer read can be here: the floor's CPU spread over all cores."""
    return floor_bound(s, plan.peer_mib, ("s12.memory.busy", "s12.floor.populate.cpu", "s12.floor.loopback.cpu"))


def rows(s, plan):
    size = f"{plan.peer_mib / 1024:g} GiB" if plan.peer_mib >= 1024 else f"{plan.peer_mib} MiB"
    rate, cpu = floor_rate(s, plan)
    memory, peer = s.median("s12.memory.mibs"), s.median("s12.peer.mibs")
    gib = plan.peer_mib / 1024
    reading = s.median("s12.reading.cpu")
    reading_per_gib, floor_per_gib = (reading / gib if reading is not None else None), (cpu / gib if cpu else None)
    return [
        throughput("12a", f"Cache peers ({size}, testsource --bandwidth {plan.peer_bandwidth}): cold instance from a "
                   "warm peer vs a cold instance from the capped source", s, "s12.peer.mibs", "s12.source.mibs",
                   "cold from source", 5, "stats-s12.json"),
        throughput("12b", "Cache peers: the same read vs the warm peer's own memory hit", s, "s12.peer.mibs",
                   "s12.memory.mibs", "memory hit", 0.5, "stats-s12.json"),
        Row("12c", "Cache peers: the floor's bound on the peer read (memory hit's CPU + populate + loopback"
            + (f" = {cpu:.2f} CPU-s on {system.CORES} cores)" if cpu else ")"), rate, memory, fmt_rate, "report", None,
            "memory hit", ratio(rate, memory)),
        Row("12d", "Cache peers: the peer read (12a) vs the floor's bound (12c)", peer, rate, fmt_rate, ">= 0.7x",
            lambda m, b, r: r >= 0.7, "floor", ratio(peer, rate), stats="stats-s12.json"),
        Row("12e", "Cache peers: the reading instance's CPU per GiB vs the floor's (all of 12c's CPU, per GiB)",
            reading_per_gib, floor_per_gib, lambda v: "—" if v is None else f"{v:.2f} CPU-s/GiB", "<= 1.3x",
            lambda m, b, r: r <= 1.3, "floor", ratio(reading_per_gib, floor_per_gib)),
    ]
