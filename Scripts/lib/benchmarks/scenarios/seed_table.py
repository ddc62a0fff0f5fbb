"""15: the reference product's published model-switch table, reproduced with a real safetensors loader."""

import json
import os
import subprocess
import sys
import time

from .. import checkpoint, system
from ..context import LIBRARY, log, say
from ..daemons import free_ports, listen_address
from ..report import duration, fmt_seconds, runs_text
from .cache_peers import pair

NUMBERS = ("15",)
TITLE = "seed table: a safetensors checkpoint loaded over an OSS-like source (testsource capped as the published one)"
IN_README = True   # its table also stands in the README ("Against the reference product")
PICTURE = "seed-table.png"   # drawn by each run that writes Docs/BENCHMARKS.md, shown in the README

# Alibaba PAI-EAS memory caching, Stable Diffusion model switch, anything-v4.5.safetensors (7.2 GB), seconds.
PUBLISHED_BYTES = 7.2e9
PUBLISHED = {"source": 89.88, "memory": 3.845, "peer": 15.18}
# The emulated source: the published OSS mount's own rate (7.2 GB in 89.88 s, 80 MB/s), and 1 ms a request. An
# object-store client's readahead hides most of a GET's latency; with 1 ms the direct load reaches about 60 MB/s here,
# near the published mount's rate (3 ms gave 46, 10 ms 18 MB/s: the loader's page faults come 128 KiB at a time).
SOURCE_BANDWIDTH = round(PUBLISHED_BYTES / PUBLISHED["source"])
SOURCE_LATENCY_MS = "1"
# The fleet row: a fleet of four scaled out at once, the new instances loading from the one warm instance.
FLEET_NEW = 3
FLEET_START_DELAY = 3.0   # seconds for the loaders' Python to start and import before their common start

READS = (("source", "source directly (the OSS-like mount)"), ("cold", "cachefs, cold (every block from the source)"),
         ("memory", "cachefs, memory hit (kernel page cache dropped)"),
         ("peer", "cachefs, warm peer (a second instance, --peers to the first)"),
         ("fleet", f"cachefs, fleet scale-out ({FLEET_NEW} new instances at once from the warm one; the slowest)"))

DESCRIPTION = f"""
**15. Seed table.** The reference product published, for a 7.2 GB Stable Diffusion checkpoint, {PUBLISHED['source']} s
from the OSS mount, {PUBLISHED['memory']} s from local memory and {PUBLISHED['peer']} s from a peer instance. Here a
valid safetensors checkpoint of float16 tensors (random values, made once) is loaded by the `safetensors` library
(`safe_open(framework="numpy")`, then `get_tensor` of every tensor, which copies it out of the mapped file), timed
inside a fresh Python process, page cache dropped before each load. Source: `cachefs-testsource --latency-ms
{SOURCE_LATENCY_MS} --bandwidth {SOURCE_BANDWIDTH}` (the published mount's 80 MB/s). Per run: the load from the
testsource mount itself; instance A (`--listen`) fresh over the testsource, loaded cold, then again (memory hit);
instance B, fresh, `--peers` A, loaded (every block from A over loopback). Then B is stopped for the fleet row, a
fleet of {FLEET_NEW + 1} scaled out at once from one warm replica: {FLEET_NEW} fresh instances, each `--listen` and
`--peers` A and all {FLEET_NEW} new ones (itself included, as a DNS name lists a fleet; A's own list names B only, and
A, being warm, asks nobody), load it at once, each in its own Python process, the loads starting together once every
process has imported; the row is the slowest load. It reuses the warm A rather than warming another instance (one
cold load fewer a run), and the new instances share A's one capped testsource, as every row here does, so blocks that
do not come from A queue on the one 80 MB/s link (scenario 17 gives each instance a link of its own). The published
seconds are scaled to this file by size (each published time divided by 7.2 GB, times this file's bytes: as if every
figure were a rate); the published memory-hit times of the 2.0 and 7.2 GB models (2.967 and 3.845 s) suggest a fixed
part of about 2.6 s that does not scale, so the scaled memory-hit figure is an underestimate of what the product would
take.
"""


def ensure_checkpoint(bench, mib):
    directory = bench.path("checkpoints")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"model-{mib}m.safetensors")
    if not (os.path.exists(path) and checkpoint.is_valid(path)):
        say(f"writing {path} (a {mib} MiB safetensors checkpoint)")
        checkpoint.write(path, mib)
        if not checkpoint.is_valid(path):
            raise RuntimeError(f"{path} does not open with safetensors")
    return path


def loader(path, *start):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.checkpoint", "load", path, *start],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": LIBRARY})


def load_seconds(*paths):
    """Loads of PATHS at once, each in a fresh Python process (its start and imports are not timed), all beginning
    together: the slowest load's seconds."""
    system.drop_caches()
    start = [] if len(paths) == 1 else [repr(time.monotonic() + FLEET_START_DELAY)]
    loaders = [loader(path, *start) for path in paths]
    outputs = [process.communicate()[0] for process in loaders]
    if any(process.returncode != 0 for process in loaders):
        raise RuntimeError(f"a load of {', '.join(paths)} failed")
    return max(json.loads(out)["seconds"] for out in outputs)


def fleet_load(bench, source, warm, name, size, capacity):
    """FLEET_NEW fresh instances load NAME at once, each a peer of WARM and of each other: the slowest load's seconds
    (None when memory is short) and what the new instances took from the source and from peers."""
    # They hold the checkpoint FLEET_NEW more times in memory that cannot be reclaimed (the caches' memory files),
    # beside the page cache of the loaders' mappings: never a push to the OOM killer on a shared machine.
    needed, available = FLEET_NEW * (size + 512 * system.MiB), system.available_memory()
    if available < needed:
        bench.note(f"scenario 15: a run's fleet load skipped, {available / 2**30:.1f} GiB of memory available and its "
                   f"{FLEET_NEW} instances need about {needed / 2**30:.1f}")
        return None, "the fleet skipped"
    ports = [int(listen_address(warm).rsplit(":", 1)[1])] + free_ports(FLEET_NEW)
    fleet = [bench.daemons.fleet_member(source.path, bench.mountpoint(f"seed-fleet-{i}"), ports, i, capacity=capacity)
             for i in range(1, FLEET_NEW + 1)]
    seconds = load_seconds(*(os.path.join(mount.path, name) for mount in fleet))
    counters = bench.daemons.counters(fleet, ("bytesFromSource", "bytesFromPeers"))
    for mount in reversed(fleet):
        bench.daemons.stop(mount)
    from_source, from_peers = (sum(c[key] for c in counters) / size for key in ("bytesFromSource", "bytesFromPeers"))
    bench.record("s15.fleet_source_fraction", from_source)
    return seconds, (f"the fleet's new instances took {from_source:.2f} of the file from the source, "
                     f"{from_peers:.2f} from peers")


def run(bench):
    mib = bench.plan.seed_mib
    path = ensure_checkpoint(bench, mib)
    name, size = os.path.basename(path), os.stat(path).st_size
    bench.record("s15.bytes", size)
    source = bench.daemons.testsource(os.path.dirname(path), bench.mountpoint("seed-source"), "--latency-ms",
                                      SOURCE_LATENCY_MS, "--bandwidth", str(SOURCE_BANDWIDTH))
    for i in range(1, bench.plan.seed_runs + 1):
        times = {"source": load_seconds(os.path.join(source.path, name))}
        a, start_b = pair(bench, source.path, "seed-a", "seed-b", capacity=f"{mib + 256}M")
        times["cold"] = load_seconds(os.path.join(a.path, name))
        times["memory"] = load_seconds(os.path.join(a.path, name))
        b = start_b()
        times["peer"] = load_seconds(os.path.join(b.path, name))
        stats = bench.keep_stats(b, "s15")
        bench.record("s15.peer_source_fraction", stats["bytesFromSource"] / size)
        bench.daemons.stop(b)
        seconds, fleet = fleet_load(bench, source, a, name, size, f"{mib + 256}M")
        if seconds is not None:
            times["fleet"] = seconds
        bench.daemons.stop(a)
        for key, seconds in times.items():
            bench.record(f"s15.{key}.sec", seconds)
        log(f"run {i}: " + ", ".join(f"{key} {seconds:.2f} s" for key, seconds in times.items())
            + f" (B read {stats['bytesFromSource']} bytes from the source; {fleet})")


def label(s):
    size = s.median("s15.bytes")
    return "?" if size is None else f"{size / 1e9:.2f} GB"


def rows(s, plan):
    return [duration(f"15{letter}", f"Seed table ({label(s)} safetensors load): {text}", s, f"s15.{key}.sec",
                     "s15.source.sec", "source directly", None, "stats-s15.json")
            for letter, (key, text) in zip("abcd", READS[1:])]


def loads(s):
    """The table's figures, one load a row: (key, text, this run's seconds, published seconds, published seconds scaled
    to this run's file), None where there is none. The table and the picture both take them from here."""
    size = s.median("s15.bytes")
    return [(key, text, s.median(f"s15.{key}.sec"), PUBLISHED.get(key),
             None if key not in PUBLISHED or size is None else PUBLISHED[key] * size / PUBLISHED_BYTES)
            for key, text in READS]


def section(s, plan):
    size = s.median("s15.bytes")
    source = s.median("s15.source.sec")
    header = ["load", f"this run ({label(s)})", "MB/s", "speed-up vs source", "published (7.2 GB)",
              "published speed-up", f"published scaled to {label(s)}"]
    table = []
    for key, text, mine, theirs, scaled in loads(s):
        table.append([text, fmt_seconds(mine), "—" if mine is None or size is None else f"{size / mine / 1e6:,.0f}",
                      "—" if mine is None or source is None else f"{source / mine:.1f}x",
                      "—" if theirs is None else f"{theirs} s",
                      "—" if theirs is None else f"{PUBLISHED['source'] / theirs:.1f}x",
                      fmt_seconds(scaled)])
    intro = (f"Alibaba PAI-EAS's published model-switch figures beside the same loads through cachefs (scenario 15): "
             f"median of {runs_text(len(s.floats('s15.source.sec')))}, seconds; the source is capped at the published "
             f"mount's {SOURCE_BANDWIDTH / 1e6:.0f} MB/s with {SOURCE_LATENCY_MS} ms per request.")
    return "Seed table: the reference product's published figures", intro, header, table


def picture(s, plan, directory):
    """The table as a picture, PICTURE in DIRECTORY (beside BENCHMARKS.md; the README shows it): per load, this run's
    seconds and the published ones scaled to this file (with the published seconds themselves), each bar labelled with
    its table cell. A load this run has no figure for and the reference product published none for (the fleet row
    when it was not measured) is left out."""
    from ..chart import paired_bars
    rows = [(text.split(" (")[0], mine, fmt_seconds(mine), scaled,
             None if theirs is None else f"{fmt_seconds(scaled)} ({theirs} s for 7.2 GB)")
            for key, text, mine, theirs, scaled in loads(s) if mine is not None or theirs is not None]
    footer = (f"Scripts/bench scenario 15, median of {runs_text(len(s.floats('s15.source.sec')))}; "
              f"run {s.text('meta.date')}, commit {s.text('meta.commit')}, {s.text('meta.nproc')} cores. "
              f"Source capped at {SOURCE_BANDWIDTH / 1e6:.0f} MB/s, {SOURCE_LATENCY_MS} ms a request.")
    return paired_bars(os.path.join(directory, PICTURE), f"Loading a {label(s)} safetensors checkpoint through cachefs,\n"
                       "beside Alibaba PAI-EAS's published model-switch times", footer, rows,
                       f"measured in this run ({label(s)})", f"PAI-EAS published, scaled to {label(s)}")
