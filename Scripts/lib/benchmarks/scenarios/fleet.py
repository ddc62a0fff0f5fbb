"""17: a fleet of instances, each over its own capped link to one object store, reading one file at once: how much
of the file the fleet takes from the store, and how long its slowest member takes (Scripts/bench-fleet runs it
alone)."""

import json
import os
import resource
import subprocess
import threading
import time

from .. import data, system
from ..context import log
from ..daemons import free_ports
from ..report import Row, fmt_plain, fmt_ratio, fmt_seconds, ratio, runs_text

NUMBERS = ("17",)
TITLE = "fleet: N instances, each over its own capped testsource of one store, reading one file at once"
BANDWIDTH = 52428800   # each host's own link to the object store: 50 MiB/s
LATENCY_MS = "2"
# The targets. Scale-out: the new instances together take at most this much of the file from the source,
# and the slowest finishes at least this many times faster than one cold instance alone.
SCALE_OUT_SOURCE, SCALE_OUT_SPEEDUP = 0.05, 2
# Cold burst: at most this much of the file from the source over all instances; the speed-up is set for the
# issue's two fleets (N=4 with 1 GiB, N=8 with 512 MiB) and only reported for others.
BURST_SOURCE, BURST_SPEEDUP = 1.10, {4: 2.5, 8: 2}
COUNTERS = ("bytesFromSource", "bytesFromPeers", "servedBytes", "peerRequests", "blocksFromPeers", "peerNotFound",
            "peerFailures", "peerFallbacks")
MODES = (("scaleout", "scale-out", "one warm instance and N-1 cold ones"),
         ("burst", "cold burst", "N cold instances"))

DESCRIPTION = f"""
**17. Fleet** (`Scripts/bench-fleet` runs this alone). N cachefs instances on this machine, each over its own
`cachefs-testsource --bandwidth {BANDWIDTH} --latency-ms {LATENCY_MS}` of the same data directory (each host has its
own 50 MiB/s link to the object store), each `--listen 127.0.0.1:PORT` and `--peers` the full list of all N
addresses, itself included, as a DNS name would list it. Every read is `cat` of the whole file to `/dev/null`, page
cache dropped first, the readers started together; a phase's time is its slowest reader's. Per run: instance 1,
fresh, reads the file alone (the baseline, "one alone"); then (a) **scale-out**: N-1 fresh instances read it at once
from warm instance 1; then all N are stopped and (b) **cold burst**: N fresh instances read it at once. "Source /
file" is the sum of `bytesFromSource` over the readers of the phase (for scale-out only the new instances: the warm
one's first read is the baseline, not counted), divided by the file size; "peers / file" is the same for
`bytesFromPeers` over all instances. Targets (issue 29): scale-out, source / file <= {SCALE_OUT_SOURCE} and the
slowest at least {SCALE_OUT_SPEEDUP}x faster than one alone (time ratio <= {1 / SCALE_OUT_SPEEDUP:g}x); cold burst,
source / file <= {BURST_SOURCE} and the slowest at least {BURST_SPEEDUP[4]}x faster for N=4, {BURST_SPEEDUP[8]}x for
N=8 (other N: reported only). Every daemon and reader shares this machine's cores, so with N=8 sixteen daemons and
eight readers share two cores; the section below gives the share of the cores' time that was busy during each
phase, whoever used it, and the share the fleet's own processes took (from `/proc/PID/stat` and the readers' rusage).
"""


def fleet_key(n, mib):
    return f"s17.n{n}.m{mib}"


def run(bench):
    for n, mib in bench.plan.fleet_sizes:
        run_fleet(bench, n, mib)


def run_fleet(bench, n, mib):
    path = data.sized_file(bench, mib)
    name, size = os.path.basename(path), os.stat(path).st_size
    key = fleet_key(n, mib)
    sources = [bench.daemons.testsource(bench.data, bench.mountpoint(f"fleet-source-{i + 1}"), "--bandwidth",
                                        str(BANDWIDTH), "--latency-ms", LATENCY_MS) for i in range(n)]
    for run_number in range(1, bench.plan.fleet_runs + 1):
        ports = free_ports(n)

        def start(i):
            return bench.daemons.fleet_member(sources[i].path, bench.mountpoint(f"fleet-{i + 1}"), ports, i,
                                              capacity=f"{mib + 256}M")

        warm = start(0)
        alone = read_at_once(bench, [warm], [warm], name, sources[:1])
        bench.record(f"{key}.alone.sec", alone.slowest)
        log(f"N={n}, {mib} MiB, run {run_number}: one alone {alone.slowest:.2f} s")
        fleet = [warm] + [start(i) for i in range(1, n)]
        scale_out = read_at_once(bench, fleet, fleet[1:], name, sources)
        # Counters are taken from the phase's start, so the warm one's first read is left out; by the rule
        # only the new instances' source bytes count (the warm one's, which should be none, are in the log).
        scale_out.record(bench, f"{key}.scaleout", size, source_from=fleet[1:])
        stop(bench, fleet)
        fleet = [start(i) for i in range(n)]
        burst = read_at_once(bench, fleet, fleet, name, sources)
        burst.record(bench, f"{key}.burst", size, source_from=fleet)
        stop(bench, fleet)
        for label, phase in (("scale-out", scale_out), ("cold burst", burst)):
            log(f"N={n}, {mib} MiB, run {run_number}, {label}: {phase.summary(size)}")
    stop(bench, sources)


def stop(bench, mounts):
    for mount in reversed(mounts):
        bench.daemons.stop(mount)


class Phase:
    """One concurrent read: each reader's seconds, each member's counters' growth, the CPU-s all cores were busy
    and the CPU-s the fleet's own processes (members, sources, readers) took."""

    def __init__(self, members, readers, seconds, growth, busy, own, wall):
        self.members, self.readers, self.seconds, self.growth = members, readers, seconds, growth
        self.busy, self.own, self.wall = busy, own, wall

    def share(self, cpu):
        """CPU-s as a share of all cores over the phase."""
        return cpu / (system.CORES * self.wall)

    @property
    def slowest(self):
        return max(self.seconds)

    def total(self, counter, mounts=None):
        return sum(g[counter] for m, g in zip(self.members, self.growth) if mounts is None or m in mounts)

    def record(self, bench, key, size, source_from):
        self.source_fraction = self.total("bytesFromSource", source_from) / size
        self.peer_fraction = self.total("bytesFromPeers") / size
        for name, value in (("sec", self.slowest), ("fastest.sec", min(self.seconds)),
                            ("source", self.source_fraction), ("peers", self.peer_fraction),
                            ("busy", self.share(self.busy)), ("own", self.share(self.own))):
            bench.record(f"{key}.{name}", float(value))
        summed = {counter: self.total(counter) for counter in COUNTERS}
        with open(os.path.join(bench.results, f"stats-{key}.json"), "w") as f:
            json.dump({**summed, "members": self.growth}, f, indent=1)

    def summary(self, size):
        per_member = "; ".join(f"{g['bytesFromSource'] / size:.2f}/{g['bytesFromPeers'] / size:.2f}"
                               for g in self.growth)
        return (f"slowest {self.slowest:.2f} s, readers {' '.join(f'{t:.2f}' for t in self.seconds)} s; source "
                f"{self.source_fraction:.2f} and peers {self.peer_fraction:.2f} of the file (each member's "
                f"source/peers: {per_member}); cores {100 * self.share(self.busy):.0f}% busy, "
                f"{100 * self.share(self.own):.0f}% by the fleet's own processes")


def read_at_once(bench, members, readers, name, sources):
    """Drops the page cache, then reads NAME with `cat` through every one of READERS at once; the counters of
    every one of MEMBERS are taken before and after, the CPU time of the members and SOURCES too."""
    before = bench.daemons.counters(members, COUNTERS)
    system.drop_caches()
    seconds = [0.0] * len(readers)
    daemons = [m.pid for m in members + sources]
    ticks, readers_cpu = [system.cpu_ticks(pid) for pid in daemons], children_cpu()
    idle = system.idle_ticks()
    start = time.monotonic()
    processes = [subprocess.Popen(["cat", os.path.join(r.path, name)], stdout=subprocess.DEVNULL)
                 for r in readers]

    def wait(i):
        processes[i].wait()
        seconds[i] = time.monotonic() - start

    waiters = [threading.Thread(target=wait, args=(i,)) for i in range(len(processes))]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    wall = time.monotonic() - start
    busy = system.CORES * wall - (system.idle_ticks() - idle) / system.HZ
    own = (sum(map(system.cpu_ticks, daemons)) - sum(ticks)) / system.HZ + children_cpu() - readers_cpu
    failed = [r.path for r, p in zip(readers, processes) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"cat failed through {', '.join(failed)}")
    after = bench.daemons.counters(members, COUNTERS)
    growth = [{k: a[k] - b[k] for k in COUNTERS} for a, b in zip(after, before)]
    return Phase(members, readers, seconds, growth, busy, own, wall)


def children_cpu():
    """User + system seconds of this process's children that have ended (the readers, once waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def size_text(mib):
    return f"{mib / 1024:g} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def rows(s, plan):
    out, letters = [], iter("abcdefghijklmnopqrstuvwxyz")
    for n, mib in plan.fleet_sizes:
        key = fleet_key(n, mib)
        alone = s.median(f"{key}.alone.sec")
        for mode, label, who in MODES:
            speedup = SCALE_OUT_SPEEDUP if mode == "scaleout" else BURST_SPEEDUP.get(n)
            most_source = SCALE_OUT_SOURCE if mode == "scaleout" else BURST_SOURCE
            slowest = s.median(f"{key}.{mode}.sec")
            readers = n - 1 if mode == "scaleout" else n
            out.append(Row(
                f"17{next(letters)}", f"Fleet {label} (N={n}, {size_text(mib)}, {who}): slowest of {readers} readers "
                "vs one cold instance alone", slowest, alone, fmt_seconds,
                f"<= {1 / speedup:g}x ({speedup:g}x faster)" if speedup else "report",
                (lambda m, b, r, x=1 / speedup: r <= x) if speedup else None, "one alone", ratio(slowest, alone)))
            source, peers = s.median(f"{key}.{mode}.source"), s.median(f"{key}.{mode}.peers")
            out.append(Row(
                f"17{next(letters)}", f"Fleet {label} (N={n}, {size_text(mib)}): bytes from the source "
                f"{'(new instances) ' if mode == 'scaleout' else ''}/ file size (and from peers)", source, None,
                fmt_plain, f"<= {most_source:g}", lambda m, b, r, x=most_source: m <= x, ratio=source,
                measured_text=None if source is None else f"{source:.2f} (peers {fmt_plain(peers)})",
                baseline_text="—", stats=f"stats-{key}.{mode}.json"))
    return out


def section(s, plan):
    header = ["fleet", "one alone", "slowest", "fastest", "speed-up", "source / file", "peers / file", "cores busy",
              "by the fleet"]
    table = []
    for n, mib in plan.fleet_sizes:
        key = fleet_key(n, mib)
        alone = s.median(f"{key}.alone.sec")
        for mode, label, _ in MODES:
            slowest = s.median(f"{key}.{mode}.sec")
            busy, own = (s.median(f"{key}.{mode}.{cpu}") for cpu in ("busy", "own"))
            table.append([f"{label}, N={n}, {size_text(mib)}", fmt_seconds(alone), fmt_seconds(slowest),
                          fmt_seconds(s.median(f"{key}.{mode}.fastest.sec")), fmt_ratio(ratio(alone, slowest)),
                          fmt_plain(s.median(f"{key}.{mode}.source")), fmt_plain(s.median(f"{key}.{mode}.peers")),
                          "—" if busy is None else f"{100 * busy:.0f}%", "—" if own is None else f"{100 * own:.0f}%"])
    runs = len(s.floats(f"{fleet_key(*plan.fleet_sizes[0])}.alone.sec"))
    intro = (f"Scenario 17, medians of {runs_text(runs)}: each instance over its own testsource capped at "
             f"{BANDWIDTH / system.MiB:.0f} MiB/s with {LATENCY_MS} ms a request; speed-up is one alone / slowest; "
             "cores busy is the share of all cores' time not idle during the phase, whoever used it; by the fleet is "
             "the share its own instances, testsources and readers took.")
    return "Fleet: many instances reading one file at once", intro, header, table
