"""11: a cold cachefs instance reading from a warm one on loopback instead of the capped source."""

import os
import random

from .. import system
from ..report import Row, fmt_plain, throughput
from ..context import log
from .cold_bandwidth import capped_rclone, label, source_rate

NUMBERS = ("11",)
TITLE = "cache peers: a cold instance reading from a warm one on loopback (rclone --bwlimit 300M source)"
DESCRIPTION = """
**11. Cache peers.** Two cachefs instances on this machine over the rclone 300M mount of scenario 3, each
`--listen 127.0.0.1:PORT --peers 127.0.0.1:OTHER`. Per run: A reads the file (warm), then is read again after
dropping caches (11b's baseline, A's memory hit); B, fresh, reads the file after dropping caches, getting blocks from
A's memory over HTTP. 11a compares B with scenario 3's direct read of the capped source; 11c is B's
`bytesFromSource` / file size. Both instances and the reader share this machine's cores.
"""


def peer_ports():
    port = random.randrange(20000, 40000)
    return port, port + 1


def pair(bench, source, name_a, name_b, capacity="3G"):
    """Instance A over SOURCE, and a function starting B with A as its peer (and A with B as its)."""
    port_a, port_b = peer_ports()
    a = bench.daemons.cachefs(source, bench.mountpoint(name_a), "--listen", f"127.0.0.1:{port_a}",
                              "--peers", f"127.0.0.1:{port_b}", capacity=capacity)

    def start_b():
        return bench.daemons.cachefs(source, bench.mountpoint(name_b), "--listen", f"127.0.0.1:{port_b}",
                                     "--peers", f"127.0.0.1:{port_a}", capacity=capacity)
    return a, start_b


def run(bench):
    source = capped_rclone(bench)
    name = bench.plan.cold_file
    size = os.stat(bench.path(name)).st_size
    for i in range(1, bench.plan.runs + 1):
        a, start_b = pair(bench, source.path, "peer-a", "peer-b")
        system.seconds(system.dd(os.path.join(a.path, name)))   # A is warm
        system.drop_caches()
        rate = system.read_rate(os.path.join(a.path, name))
        bench.record("s11.memory.mibs", rate)
        log(f"run {i}: A, memory hit {rate:.0f} MiB/s")
        b = start_b()
        system.drop_caches()
        rate = system.read_rate(os.path.join(b.path, name))
        bench.record("s11.peer.mibs", rate)
        stats = bench.keep_stats(b, "s11")
        bench.record("s11.source_fraction", stats["bytesFromSource"] / size)
        log(f"run {i}: B, cold, from peer A {rate:.0f} MiB/s ({stats['bytesFromPeers']} bytes from the peer, "
            f"{stats['bytesFromSource']} from the source)")
        bench.daemons.stop(b)
        bench.daemons.stop(a)
    source_rate(bench, source)


def rows(s, plan):
    fraction = s.median("s11.source_fraction")
    return [
        throughput("11a", f"Cache peers: cold instance reads {label(plan)} from a warm peer on loopback, vs the capped "
                   "source", s, "s11.peer.mibs", "s3.source.mibs", "rclone mount direct", 5, "stats-s11.json"),
        throughput("11b", "Cache peers: the same read vs the warm peer's own memory hit", s, "s11.peer.mibs",
                   "s11.memory.mibs", "memory hit", 0.5, "stats-s11.json"),
        Row("11c", "Cache peers: bytes the cold instance read from the source / file size", fraction, None,
            fmt_plain, "<= 0.05", lambda m, b, r: m <= 0.05, ratio=fraction, baseline_text="—",
            stats="stats-s11.json"),
    ]
