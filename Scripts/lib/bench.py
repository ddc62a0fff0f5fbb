#!/usr/bin/env python3
"""Arithmetic and reporting for Scripts/bench.

Scripts/bench measures; this turns its raw numbers into medians, ratios and
tables. The raw numbers are one `key<TAB>value` line per run in results.tsv;
the same key repeated is one sample per run, and the figure is their median.

    bench.py json FILE KEY...              print fields of a JSON file (cachefs stats, fio)
    bench.py fio FILE                      print "IOPS MiB/s" of a fio --output-format=json run
    bench.py hyperfine FILE                print every run time of a hyperfine --export-json file, one per line
    bench.py report RESULTS_DIR --markdown PATH   print the tables and rewrite PATH
"""

import json
import os
import statistics
import sys

MiB = 1 << 20


# --------------------------------------------------------------------------- small helpers


def load_results(path):
    samples = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or "\t" not in line:
                    continue
                key, value = line.split("\t", 1)
                samples.setdefault(key, []).append(value)
    return samples


def floats(samples, key):
    out = []
    for value in samples.get(key, []):
        try:
            out.append(float(value))
        except ValueError:
            pass
    return out


def median(samples, key):
    values = floats(samples, key)
    return statistics.median(values) if values else None


def text(samples, key, default=""):
    values = samples.get(key)
    return values[-1] if values else default


def fmt_rate(v):
    return "—" if v is None else f"{v:,.0f} MiB/s"


def fmt_seconds(v):
    return "—" if v is None else f"{v:.2f} s"


def fmt_iops(v):
    if v is None:
        return "—"
    return f"{v / 1000:,.1f}k IOPS" if v >= 10000 else f"{v:,.0f} IOPS"


def fmt_mib(v):
    return "—" if v is None else f"{v:,.0f} MiB"


def fmt_plain(v):
    return "—" if v is None else f"{v:.2f}"


def fmt_ratio(v):
    return "—" if v is None else f"{v:.2f}x"


# --------------------------------------------------------------------------- the report


class Row:
    """One line of the main table: a measured figure against a baseline."""

    def __init__(self, ident, label, measured, baseline, fmt, target_text, check, baseline_label="",
                 ratio=None, measured_text=None, baseline_text=None, stats=None, scenario=None):
        self.ident = ident
        self.label = label
        self.measured = measured
        self.baseline = baseline
        self.fmt = fmt
        self.target_text = target_text
        self.check = check  # (measured, baseline, ratio) -> bool, or None for "report only"
        self.baseline_label = baseline_label
        self.ratio = ratio
        self.measured_text = measured_text
        self.baseline_text = baseline_text
        self.stats = stats  # name of a stats-*.json file in the results dir, shown when the target is missed
        self.scenario = scenario or ident.rstrip("abcdefgh")

    def cells(self, status):
        measured = self.measured_text or self.fmt(self.measured)
        baseline = self.baseline_text or self.fmt(self.baseline)
        if self.baseline is not None and self.baseline_label:
            baseline = f"{baseline} ({self.baseline_label})"
        elif self.baseline is None and self.baseline_label and not self.baseline_text:
            baseline = f"— ({self.baseline_label})"
        if self.check is None:
            verdict = ""
        elif self.measured is None or (self.baseline is None and self.ratio is None):
            verdict = status or "not measured"
        else:
            verdict = "yes" if self.check(self.measured, self.baseline, self.ratio) else "**no**"
        return [self.ident, self.label, measured, baseline, fmt_ratio(self.ratio), self.target_text, verdict]

    def missed(self):
        return (self.check is not None and self.measured is not None and self.ratio is not None
                and not self.check(self.measured, self.baseline, self.ratio))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_rows(s):
    rows = []

    def throughput(ident, label, key, base_key, base_label, minimum, stats=None):
        m, b = median(s, key), median(s, base_key)
        rows.append(Row(ident, label, m, b, fmt_rate,
                        f">= {minimum}x" if minimum is not None else "report",
                        (lambda m, b, r, x=minimum: r >= x) if minimum is not None else None,
                        base_label, ratio(m, b), stats=stats))

    big = text(s, "meta.big_label", "2 GiB")
    cold3 = text(s, "meta.s3_label", big)
    cold4 = text(s, "meta.s4_label", "?")
    herd = text(s, "meta.herd_label", "1 GiB")

    throughput("1", f"Memory hit: {big} cached in cachefs, page cache dropped, dd bs=1M", "s1.cachefs.mibs",
               "s1.tmpfs.mibs", "tmpfs", 0.6, "stats-main.json")
    throughput("2", f"Re-read: {big} again, page cache kept", "s2.cachefs.mibs", "s2.tmpfs.mibs", "tmpfs", 0.9,
               "stats-main.json")
    throughput("3", f"Cold, bandwidth-bound: {cold3} over rclone --bwlimit 300M", "s3.cachefs.mibs",
               "s3.source.mibs", "rclone mount direct", 0.95, "stats-s3.json")
    throughput("4", f"Cold, latency-bound: {cold4} over testsource --latency-ms 3", "s4.cachefs.mibs",
               "s4.source.mibs", "testsource dd bs=1M", 3, "stats-s4.json")

    for bs, minimum in (("4k", None), ("1m", 0.5)):
        m_iops, b_iops = median(s, f"s5.{bs}.cachefs.iops"), median(s, f"s5.{bs}.tmpfs.iops")
        m_mibs, b_mibs = median(s, f"s5.{bs}.cachefs.mibs"), median(s, f"s5.{bs}.tmpfs.mibs")
        rows.append(Row(f"5{'a' if bs == '4k' else 'b'}",
                        f"Random reads, fio psync bs={bs.upper()}iB over cached {big}",
                        m_iops, b_iops, fmt_iops,
                        f">= {minimum}x" if minimum is not None else "report",
                        (lambda m, b, r, x=minimum: r >= x) if minimum is not None else None,
                        "tmpfs", ratio(m_iops, b_iops),
                        measured_text=f"{fmt_iops(m_iops)}, {fmt_rate(m_mibs)}",
                        baseline_text=f"{fmt_iops(b_iops)}, {fmt_rate(b_mibs)}" if b_iops is not None else None,
                        stats="stats-main.json"))

    amp = median(s, "s6.amplification")
    rows.append(Row("6a", f"Thundering herd: 16 readers of a cold {herd} file, bytesFromSource / size",
                    amp, None, fmt_plain, "<= 1.1", lambda m, b, r: m <= 1.1, ratio=amp,
                    baseline_text="—", stats="stats-s6.json"))
    h, one = median(s, "s6.herd.sec"), median(s, "s6.single.sec")
    rows.append(Row("6b", "Thundering herd: wall time of 16 readers vs 1 reader (fresh mounts)", h, one,
                    fmt_seconds, "<= 1.5x", lambda m, b, r: r <= 1.5, "1 reader", ratio(h, one),
                    stats="stats-s6.json"))

    tree = text(s, "meta.tree_label", "~50,000 files")
    for ident, key, what in (("7a", "find", "find -type f | xargs stat"), ("7b", "ls", "ls -lR")):
        m, b = median(s, f"s7.{key}.cachefs.sec"), median(s, f"s7.{key}.source.sec")
        rows.append(Row(ident, f"Metadata, cold: {what} over {tree}", m, b, fmt_seconds, "<= 1.5x",
                        lambda m, b, r: r <= 1.5, "source dir", ratio(m, b), stats="stats-main.json"))

    cw, rw = median(s, "s1.cachefs.mibs"), median(s, "s8.rclone_warm.mibs")
    rows.append(Row("8a", f"Peer: cachefs warm vs rclone --vfs-cache-mode full warm ({big}, page cache dropped)",
                    cw, rw, fmt_rate, ">= 4x", lambda m, b, r: r >= 4, "rclone full", ratio(cw, rw)))
    throughput("8b", f"Peer: bindfs over tmpfs, page cache dropped ({big}; cf. 1)", "s8.bindfs_hit.mibs",
               "s1.tmpfs.mibs", "tmpfs", None)
    throughput("8c", f"Peer: bindfs over tmpfs, re-read ({big}; cf. 2)", "s8.bindfs_reread.mibs",
               "s2.tmpfs.mibs", "tmpfs", None)
    throughput("8d", f"Peer: bindfs over the rclone 300M mount, cold ({cold3}; cf. 3)", "s8.bindfs_cold.mibs",
               "s3.source.mibs", "rclone mount direct", None)

    shared = text(s, "meta.s11_label", cold3)
    throughput("11a", f"Cache peers: cold instance reads {shared} from a warm peer on loopback, vs the capped source",
               "s11.peer.mibs", "s3.source.mibs", "rclone mount direct", 5, "stats-s11.json")
    throughput("11b", f"Cache peers: the same read vs the warm peer's own memory hit", "s11.peer.mibs",
               "s11.memory.mibs", "memory hit", 0.5, "stats-s11.json")
    fraction = median(s, "s11.source_fraction")
    rows.append(Row("11c", "Cache peers: bytes the cold instance read from the source / file size", fraction, None,
                    fmt_plain, "<= 0.05", lambda m, b, r: m <= 0.05, ratio=fraction, baseline_text="—",
                    stats="stats-s11.json"))

    hwm, cap = median(s, "s9.hwm_mib"), median(s, "s9.capacity_mib")
    read_label = text(s, "meta.s9_label", "4x capacity")
    rows.append(Row("9", f"Memory: daemon VmHWM after reading {read_label} with --capacity {fmt_mib(cap)}",
                    hwm, cap, fmt_mib, "<= capacity + 64 MiB", lambda m, b, r: m <= b + 64, "capacity",
                    ratio(hwm, cap), stats="stats-s9.json"))
    return rows


def markdown_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(out)


def plain_table(header, rows):
    cells = [header] + [[str(c).replace("**", "") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sweep_table(s):
    block_sizes = [b for b in ("64K", "256K", "1M", "2M", "4M", "8M") if any(k.startswith(f"s10.bs{b}.") for k in s)]
    depths = sorted({int(k.split(".pd")[1].split(".")[0]) for k in s if k.startswith("s10.bs")})
    if not block_sizes or not depths:
        return None, None
    base = median(s, "s10.source.mibs") or median(s, "s4.source.mibs")
    header = ["block size \\ prefetch depth"] + [str(d) for d in depths]
    rows = []
    for b in block_sizes:
        row = [b]
        for d in depths:
            m = median(s, f"s10.bs{b}.pd{d}.mibs")
            row.append("—" if m is None else (f"{m:,.0f} MiB/s" + (f" ({m / base:.1f}x)" if base else "")))
        rows.append(row)
    return header, rows


def stats_summary(results_dir, name):
    path = os.path.join(results_dir, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    keys = ["cachedBytes", "cachedBlocks", "hits", "misses", "coalescedMisses", "bytesFromSource", "evictions",
            "sourceErrors", "readRequests", "bytesRead", "prefetchedBlocks", "prefetchSkippedBlocks", "blockSizeBytes",
            "capacityBytes"]
    return ", ".join(f"{k}={st[k]}" for k in keys if k in st)


def report(results_dir, markdown_path):
    s = load_results(os.path.join(results_dir, "results.tsv"))
    mode = text(s, "meta.mode", "full")
    rows = build_rows(s)
    failures = s.get("failed", [])
    failed_scenarios = {i.strip() for f in failures for i in f.split(":", 1)[0].split(",")}

    header = ["#", "scenario", "measured", "baseline", "ratio", "target", "met"]
    table_rows = []
    for r in rows:
        status = "failed" if r.scenario in failed_scenarios else ("skipped" if r.measured is None else "")
        table_rows.append(r.cells(status))
    sweep_header, sweep_rows = sweep_table(s)

    notes = list(s.get("note", []))
    stats_lines = []
    for r in rows:
        if r.missed() and r.stats:
            summary = stats_summary(results_dir, r.stats)
            if summary:
                stats_lines.append(f"{r.ident} ({r.stats.removeprefix('stats-').removesuffix('.json')}): {summary}")

    # ---- terminal
    print()
    print(f"cachefs benchmarks ({mode} mode; each figure the median of {text(s, 'meta.runs', '?')} runs)")
    print()
    print(plain_table(header, table_rows))
    if sweep_header:
        print()
        print(f"Block size / prefetch sweep: cold latency-bound read ({text(s, 'meta.s10_label', '?')}), "
              f"ratio against testsource dd")
        print(plain_table(sweep_header, sweep_rows))
    if notes:
        print()
        for n in notes:
            print(f"note: {n}")
    if stats_lines:
        print()
        print("cachefs stats where a target was missed:")
        for line in stats_lines:
            print(f"  {line}")
    if failures:
        print()
        for f in failures:
            print(f"FAILED: {f}")

    # ---- markdown
    if not markdown_path:
        return
    md = []
    md.append("# Benchmarks")
    md.append("")
    md.append("Written by `Scripts/bench`; do not edit by hand. Rerun it to refresh this page: "
              "`Scripts/bench` (about 20 minutes) or `Scripts/bench --quick` (under 5 minutes, smaller sizes).")
    md.append("")
    if mode == "quick":
        md.append("**These are `--quick` figures** (fewer runs, smaller files, shorter fio runs; see the notes). "
                  "Run `Scripts/bench` for the full set.")
        md.append("")
    md.append(f"- date: {text(s, 'meta.date')}")
    md.append(f"- command: `{text(s, 'meta.command')}`")
    md.append(f"- commit: {text(s, 'meta.commit')}")
    md.append(f"- machine: {text(s, 'meta.nproc')} CPUs ({text(s, 'meta.cpu')}), {text(s, 'meta.memory')} memory, "
              f"kernel {text(s, 'meta.kernel')}, {text(s, 'meta.os')}")
    md.append(f"- tools: {text(s, 'meta.tools')}")
    md.append(f"- load average at start: {text(s, 'meta.load')}; at end: {text(s, 'meta.load_end')}")
    md.append(f"- runs: each figure is the median of {text(s, 'meta.runs')} runs; ratios are taken against a "
              "baseline measured in the same invocation")
    md.append("")
    md.append("## Results")
    md.append("")
    md.append("Ratios are measured / baseline: higher is better for throughput and IOPS, lower is better for "
              "times (6b, 7), source bytes (6a) and memory (9). *met* compares with the project's target.")
    md.append("")
    md.append(markdown_table(header, table_rows))
    md.append("")
    limits_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-limits.md")
    if os.path.exists(limits_path):
        # Hand-written, with the profiles and counters behind it: kept beside the script so every rerun carries it.
        with open(limits_path) as f:
            md.append(f.read().rstrip())
        md.append("")
    if sweep_header:
        md.append("## Block size and prefetch depth")
        md.append("")
        md.append(f"Cold read through a fresh cachefs over `cachefs-testsource --latency-ms 3` "
                  f"({text(s, 'meta.s10_label', '?')}), median of {text(s, 'meta.s10_runs', '?')} runs; the ratio is "
                  "against the plain `dd bs=1M` read of the testsource mount (scenario 4's baseline).")
        md.append("")
        md.append(markdown_table(sweep_header, sweep_rows))
        md.append("")
    md.append("## How each scenario is measured")
    md.append("")
    md.extend(SCENARIO_TEXT)
    md.append("")
    if notes or failures or stats_lines:
        md.append("## Notes from this run")
        md.append("")
        for f in failures:
            md.append(f"- **failed**: {f}")
        for n in notes:
            md.append(f"- {n}")
        for line in stats_lines:
            md.append(f"- cachefs stats for {line}")
        md.append("")
    md.append("## Raw samples")
    md.append("")
    md.append("```")
    for key in sorted(k for k in s if not k.startswith("meta.") and k not in ("note", "failed")):
        md.append(f"{key}: {' '.join(s[key])}")
    md.append("```")
    md.append("")
    with open(markdown_path, "w") as f:
        f.write("\n".join(md))


SCENARIO_TEXT = """\
Data lives on local disk under the work directory (`/var/tmp/cachefs-bench` unless `CACHEFS_BENCH_DIR` is set):
a 2 GiB and a 1 GiB file of random bytes and a tree of 50,000 small files, reused across runs; the 2 GiB file is
copied to `/dev/shm` for the tmpfs baselines. Every sequential read is `dd bs=1M of=/dev/null`, timed with
`date +%s.%N`; "page cache dropped" is `sync; echo 3 > /proc/sys/vm/drop_caches` right before the timed command.

1. **Memory hit.** One cachefs mount over the data directory (`--capacity 3G`); the 2 GiB file is read once,
   so every block is in cachefs memory; then, per run, caches are dropped and the file is read. Baseline: the
   tmpfs copy, read the same way.
2. **Re-read.** Right after each run of 1, the same file is read again without dropping caches (the kernel
   page cache, kept by cachefs across opens, answers). Baseline: tmpfs again.
3. **Cold, bandwidth-bound.** `rclone mount DATA SRC --read-only --vfs-cache-mode off --bwlimit 300M`; per run,
   caches are dropped, a fresh cachefs is mounted over SRC, the file is read, and cachefs is unmounted.
   Baseline: the same read from SRC directly.
4. **Cold, latency-bound.** `cachefs-testsource DATA SRC --latency-ms 3` (direct_io passthrough, every read
   request sleeps 3 ms); a fresh cachefs over it per run. Baseline: `dd bs=1M` of the testsource mount.
5. **Random reads.** fio `--rw=randread --ioengine=psync --invalidate=1 --time_based` with `--bs=4k` and
   `--bs=1m` on the 2 GiB file fully cached in cachefs memory (page cache dropped before each run) against the
   tmpfs copy. The ratio is of IOPS.
6. **Thundering herd.** 16 `dd` readers started together on the cold 1 GiB file through a fresh cachefs over the
   latency-bound testsource. 6a is `bytesFromSource` / file size from `cachefs stats --json` after the herd; 6b
   is the herd's wall time against one reader of the same file on another fresh mount.
7. **Metadata.** `find . -type f -print0 | xargs -0 stat` and `ls -lR` over the tree through the main cachefs
   mount against the data directory itself, caches dropped before each run (hyperfine `--prepare`).
8. **Peers.** rclone `--vfs-cache-mode full` over the data directory (cache on local disk): the file is read
   once, then per run caches are dropped and it is read again; 8a compares cachefs's scenario-1 throughput with
   it. bindfs (default options, a plain passthrough) over the tmpfs copy for the scenario 1 and 2 style reads,
   and over the rclone 300M mount for the cold read of scenario 3.
9. **Memory.** A fresh cachefs with a small capacity over the data directory reads 4x its capacity of distinct
   data; the figure is `VmHWM` from `/proc/PID/status` of the daemon (PID from `cachefs stats --json`).
10. **Sweep.** Scenario 4's cold read for `--block-size` 1M and 4M and `--prefetch-depth` 4, 16 and 32.
11. **Cache peers.** Two cachefs instances on this machine over the rclone 300M mount of scenario 3, each
    `--listen 127.0.0.1:PORT --peers 127.0.0.1:OTHER`. Per run: A reads the file (warm), then is read again after
    dropping caches (11b's baseline, A's memory hit); B, fresh, reads the file after dropping caches, getting
    blocks from A's memory over HTTP. 11a compares B with scenario 3's direct read of the capped source; 11c is
    B's `bytesFromSource` / file size. Both instances and the reader share this machine's cores.""".split("\n")


# --------------------------------------------------------------------------- entry point


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[1]
    if command == "json":
        with open(argv[2]) as f:
            data = json.load(f)
        for key in argv[3:]:
            print(data[key])
        return 0
    if command == "fio":
        with open(argv[2]) as f:
            raw = f.read()
        # fio may print warnings before the JSON document
        data = json.loads(raw[raw.index("{"):])
        job = data["jobs"][0]["read"]
        print(f"{job['iops']:.1f} {job['bw_bytes'] / MiB:.1f}")
        return 0
    if command == "hyperfine":
        with open(argv[2]) as f:
            data = json.load(f)
        for t in data["results"][0]["times"]:
            print(f"{t:.4f}")
        return 0
    if command == "report":
        results_dir = argv[2]
        markdown = None
        if "--markdown" in argv:
            markdown = argv[argv.index("--markdown") + 1]
        report(results_dir, markdown)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
