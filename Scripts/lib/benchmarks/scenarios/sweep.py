"""10: scenario 4's cold read for a few block sizes and prefetch depths."""

import os

from .. import system
from ..context import ONE, log
from ..report import runs_text
from .cold_latency import latency_source

NUMBERS = ("10",)
TITLE = "block size / prefetch depth sweep"
DESCRIPTION = """
**10. Sweep.** Scenario 4's cold read for `--block-size` 1M and 4M and `--prefetch-depth` 4, 16 and 32.
"""


def run(bench):
    plan = bench.plan
    source = latency_source(bench)
    if "s4.source.mibs" not in bench.samples:
        for _ in range(plan.sweep_runs):
            system.drop_caches()
            bench.record("s10.source.mibs", system.read_rate(os.path.join(source.path, ONE), plan.sweep_mib))
    for bs in plan.sweep_block_sizes:
        for depth in plan.sweep_depths:
            for _ in range(plan.sweep_runs):
                mount = bench.daemons.cachefs(source.path, bench.mountpoint("cold"), "--block-size", bs,
                                              "--prefetch-depth", str(depth))
                system.drop_caches()
                rate = system.read_rate(os.path.join(mount.path, ONE), plan.sweep_mib)
                bench.record(f"s10.bs{bs}.pd{depth}.mibs", rate)
                log(f"--block-size {bs} --prefetch-depth {depth}: {rate:.0f} MiB/s")
                bench.daemons.stop(mount)


def rows(s, plan):
    return []


def section(s, plan):
    base = s.median("s10.source.mibs") or s.median("s4.source.mibs")
    header = ["block size \\ prefetch depth"] + [str(d) for d in plan.sweep_depths]
    table = []
    for bs in plan.sweep_block_sizes:
        row = [bs]
        for depth in plan.sweep_depths:
            m = s.median(f"s10.bs{bs}.pd{depth}.mibs")
            row.append("—" if m is None else f"{m:,.0f} MiB/s" + (f" ({m / base:.1f}x)" if base else ""))
        table.append(row)
    intro = (f"Cold read through a fresh cachefs over `cachefs-testsource --latency-ms 3` (first {plan.sweep_mib} MiB "
             f"of the 1 GiB file), median of {runs_text(plan.sweep_runs)}; the ratio is against the plain `dd bs=1M` "
             "read of the testsource mount (scenario 4's baseline).")
    return "Block size and prefetch depth", intro, header, table
