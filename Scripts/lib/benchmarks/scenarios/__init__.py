"""The scenarios, in the order they run. Each module has NUMBERS (its row numbers in the report), TITLE,
DESCRIPTION (how it is measured, for Docs/BENCHMARKS.md), run(bench) and rows(samples, plan), and may have
section(samples, plan) for a table of its own.

The order keeps the cheap in-memory scenarios first and lets 11 and 10 reuse the baselines 3 and 4 measured."""

from . import (cache_peers, cold_bandwidth, cold_latency, continuity, fleet, footprint, herd, memory, memory_bound,
               metadata, other_clients, peer_floor, random_reads, rclone_metadata, s3fs, seed_table, sweep)

ALL = [memory, random_reads, metadata, memory_bound, footprint, cold_bandwidth, other_clients, cache_peers,
       cold_latency, herd, sweep, peer_floor, rclone_metadata, seed_table, s3fs, fleet,
       continuity]


def select(only):
    """The scenarios named by --only (numbers, as in the report), in running order."""
    if not only:
        return list(ALL)
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    known = {n for m in ALL for n in m.NUMBERS}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"bench: no scenario {', '.join(sorted(unknown))} "
                         f"(there are {', '.join(sorted(known, key=int))})")
    return [m for m in ALL if wanted & set(m.NUMBERS)]
