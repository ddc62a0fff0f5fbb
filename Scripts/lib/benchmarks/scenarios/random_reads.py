"""5: random reads with fio over a file held in cachefs memory, against tmpfs."""

import json
import os
import subprocess

from .. import data, system
from ..context import BIG, log
from ..report import Row, fmt_iops, fmt_rate, ratio
from .memory import warm_main_mount

NUMBERS = ("5",)
TITLE = "random reads (fio, cachefs vs tmpfs)"
DESCRIPTION = """
**5. Random reads.** fio `--rw=randread --ioengine=psync --invalidate=1 --time_based` with `--bs=4k` and `--bs=1m` on
the 2 GiB file fully cached in cachefs memory (page cache dropped before each run) against the tmpfs copy. The ratio is
of IOPS.
"""


def fio(bench, path, bs, out):
    system.drop_caches()
    subprocess.run(["fio", "--name=randread", f"--filename={path}", "--readonly", "--rw=randread", f"--bs={bs}",
                    "--ioengine=psync", "--size=2g", "--time_based", f"--runtime={bench.plan.fio_seconds}",
                    "--invalidate=1", "--output-format=json", f"--output={out}"], check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
        raw = f.read()
    job = json.loads(raw[raw.index("{"):])["jobs"][0]["read"]   # fio may print warnings before the JSON
    return job["iops"], job["bw_bytes"] / system.MiB


def run(bench):
    mount = warm_main_mount(bench)
    for bs in ("4k", "1m"):
        for i in range(1, bench.plan.runs + 1):
            for target, path in (("tmpfs", data.tmpfs_copy(bench)), ("cachefs", os.path.join(mount.path, BIG))):
                out = os.path.join(bench.results, f"fio-{bs}-{target}-{i}.json")
                iops, mibs = fio(bench, path, bs, out)
                bench.record(f"s5.{bs}.{target}.iops", iops)
                bench.record(f"s5.{bs}.{target}.mibs", mibs)
                log(f"run {i}: bs={bs} {target} {iops:.0f} IOPS, {mibs:.0f} MiB/s")
    bench.keep_stats(mount, "main")


def rows(s, plan):
    out = []
    for ident, bs, minimum in (("5a", "4k", 0.5), ("5b", "1m", 0.8)):
        m_iops, b_iops = s.median(f"s5.{bs}.cachefs.iops"), s.median(f"s5.{bs}.tmpfs.iops")
        m_mibs, b_mibs = s.median(f"s5.{bs}.cachefs.mibs"), s.median(f"s5.{bs}.tmpfs.mibs")
        out.append(Row(ident, f"Random reads, fio psync bs={bs.upper()}iB over cached 2 GiB", m_iops, b_iops, fmt_iops,
                       f">= {minimum}x" if minimum is not None else "report",
                       (lambda m, b, r, x=minimum: r >= x) if minimum is not None else None,
                       "tmpfs", ratio(m_iops, b_iops), measured_text=f"{fmt_iops(m_iops)}, {fmt_rate(m_mibs)}",
                       baseline_text=f"{fmt_iops(b_iops)}, {fmt_rate(b_mibs)}" if b_iops is not None else None,
                       stats="stats-main.json"))
    return out
