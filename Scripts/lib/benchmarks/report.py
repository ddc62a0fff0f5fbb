"""Medians, ratios and tables: the terminal summary and Docs/BENCHMARKS.md.

Each scenario module supplies its rows (`rows`), optionally a section of its own (`section`), and the
text saying how it is measured (`DESCRIPTION`); this module only arranges them."""

import json
import os
import statistics

from . import data
from .context import LIBRARY


class Samples:
    """The raw samples of a run: key -> list of values as recorded (one per run)."""

    def __init__(self, samples):
        self.raw = samples

    def floats(self, key):
        out = []
        for value in self.raw.get(key, []):
            try:
                out.append(float(value))
            except ValueError:
                pass
        return out

    def median(self, key):
        values = self.floats(key)
        return statistics.median(values) if values else None

    def has(self, prefix):
        return any(k.startswith(prefix) for k in self.raw)

    def text(self, key, default=""):
        values = self.raw.get(key)
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


def runs_text(n):
    return f"{n} run" + ("" if n == 1 else "s")


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


class Row:
    """One line of the main table: a measured figure against a baseline, and the target if there is one.

    check is (measured, baseline, ratio) -> bool, or None for a figure that is only reported."""

    def __init__(self, ident, label, measured, baseline, fmt, target_text, check, baseline_label="",
                 ratio=None, measured_text=None, baseline_text=None, stats=None):
        self.ident, self.label, self.measured, self.baseline, self.fmt = ident, label, measured, baseline, fmt
        self.target_text, self.check, self.baseline_label, self.ratio = target_text, check, baseline_label, ratio
        self.measured_text, self.baseline_text, self.stats = measured_text, baseline_text, stats
        self.scenario = ident.rstrip("abcdefghijklmnopqrstuvwxyz")

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


def throughput(ident, label, s, key, base_key, base_label, minimum, stats=None):
    """A rate against a baseline rate; the target, if any, is a least ratio."""
    m, b = s.median(key), s.median(base_key)
    return Row(ident, label, m, b, fmt_rate, f">= {minimum}x" if minimum is not None else "report",
               (lambda m, b, r, x=minimum: r >= x) if minimum is not None else None,
               base_label, ratio(m, b), stats=stats)


def duration(ident, label, s, key, base_key, base_label, maximum, stats=None):
    """A time against a baseline time; the target, if any, is a largest ratio."""
    m, b = s.median(key), s.median(base_key)
    return Row(ident, label, m, b, fmt_seconds, f"<= {maximum}x" if maximum is not None else "report",
               (lambda m, b, r, x=maximum: r <= x) if maximum is not None else None,
               base_label, ratio(m, b), stats=stats)


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


# Figures of `cachefs stats --json` shown where a target is missed (names as the daemon reports them).
STATS_KEYS = ["cachedBytes", "cachedBlocks", "hits", "misses", "coalescedMisses", "bytesFromSource", "bytesFromPeers",
              "evictions", "sourceErrors", "readRequests", "bytesRead", "prefetchedBlocks", "prefetchSkippedBlocks",
              "passthroughOpens"]


def stats_summary(results_dir, name):
    try:
        with open(os.path.join(results_dir, name)) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    settings = st.get("settings", {})
    return ", ".join([f"{k}={st[k]}" for k in STATS_KEYS if k in st]
                     + [f"{k}={settings[k]}" for k in ("blockSize", "capacity") if k in settings])


HEADER = ["#", "scenario", "measured", "baseline", "ratio", "target", "met"]


def write(results_dir, raw, plan, scenarios, markdown_path, readme_path=None):
    """SCENARIOS are the modules this run ran. Prints the tables; writes them, the limits text and the raw samples
    to MARKDOWN_PATH, and the sections of scenarios marked IN_README into README_PATH (a full run's)."""
    s = Samples(raw)
    ran = sorted(scenarios, key=lambda m: int(m.NUMBERS[0]))
    rows = sorted((r for m in ran for r in m.rows(s, plan)),
                  key=lambda r: (int(r.scenario), r.ident))
    failures = raw.get("failed", [])
    failed = {n.strip() for f in failures for n in f.split(":", 1)[0].split(",")}
    table = [r.cells("failed" if r.scenario in failed else ("skipped" if r.measured is None else "")) for r in rows]
    sections = [sec for m in ran if hasattr(m, "section") for sec in [m.section(s, plan)] if sec]
    notes = raw.get("note", [])
    stats_lines = [f"{r.ident} ({r.stats.removeprefix('stats-').removesuffix('.json')}): {summary}"
                   for r in rows if r.missed() and r.stats
                   for summary in [stats_summary(results_dir, r.stats)] if summary]

    print()
    print(f"cachefs benchmarks ({s.text('meta.mode')} mode; each figure the median of "
          f"{runs_text(int(s.text('meta.runs', '0')))} unless a note says otherwise)")
    print()
    print(plain_table(HEADER, table))
    for title, intro, header, section_rows in sections:
        print()
        print(f"{title}: {intro}")
        print(plain_table(header, section_rows))
    for lines, title, prefix in ((notes, None, "note: "), (failures, None, "FAILED: "),
                                 (stats_lines, "cachefs stats where a target was missed:", "  ")):
        if lines:
            print()
            if title:
                print(title)
            for line in lines:
                print(prefix + line)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(markdown(s, table, sections, ran, notes, failures, stats_lines))
    if readme_path:
        for m in ran:
            if getattr(m, "IN_README", False) and (section := m.section(s, plan)):
                update_readme(readme_path, m.NUMBERS[0], s, section)
            if hasattr(m, "picture"):   # beside Docs/BENCHMARKS.md, which the README's pictures point into
                m.picture(s, plan, os.path.dirname(markdown_path))


def update_readme(path, number, s, section):
    """Replaces the README's copy of scenario NUMBER's section, between its two markers, with this run's: the
    README shows the table the benchmark wrote, never a hand copy of it."""
    begin, end = f"<!-- scenario {number}: written by Scripts/bench -->", f"<!-- end of scenario {number} -->"
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        return
    title, intro, header, rows = section
    block = "\n".join([begin, f"{intro} Latest full run: {s.text('meta.date')}, commit {s.text('meta.commit')}, "
                              f"{s.text('meta.nproc')} cores.", "", markdown_table(header, rows), "", end])
    with open(path, "w") as f:
        f.write(text[:text.index(begin)] + block + text[text.index(end) + len(end):])


def markdown(s, table, sections, ran, notes, failures, stats_lines):
    md = ["# Benchmarks", "",
          "Written by `Scripts/bench`; do not edit by hand. Rerun it to refresh this page: `Scripts/bench` (the full "
          "set) or `Scripts/bench --quick` (fewer runs, smaller sizes).", ""]
    if s.text("meta.mode") == "quick":
        md += ["**These are `--quick` figures** (fewer runs, smaller files, shorter fio runs; see the notes). "
               "Run `Scripts/bench` for the full set.", ""]
    if s.text("meta.load_warning"):
        md += [f"**Measured on {s.text('meta.load_warning')}.**", ""]
    if s.text("meta.only"):
        md += [f"**A partial run** (`--only {s.text('meta.only')}`): only these scenarios were measured.", ""]
    md += [f"- date: {s.text('meta.date')}",
           f"- command: `{s.text('meta.command')}`",
           f"- commit: {s.text('meta.commit')}",
           f"- machine: {s.text('meta.nproc')} CPUs ({s.text('meta.cpu')}), {s.text('meta.memory')} memory, "
           f"kernel {s.text('meta.kernel')}, {s.text('meta.os')}",
           f"- tools: {s.text('meta.tools')}",
           f"- load average at start: {s.text('meta.load')}; at end: {s.text('meta.load_end')}",
           f"- runs: each figure is the median of {runs_text(int(s.text('meta.runs', '0')))} unless a note says "
           "otherwise; ratios "
           "are taken against a baseline measured in the same invocation", "",
           "## Results", "",
           "Ratios are measured / baseline: higher is better for throughput and IOPS, lower is better for times, "
           "source bytes, memory and footprint. *met* compares with the project's target.", "",
           markdown_table(HEADER, table), ""]
    limits = os.path.join(LIBRARY, "bench-limits.md")
    if os.path.exists(limits):
        # Hand-written, with the profiles and counters behind it: kept beside the script so every rerun carries it.
        with open(limits) as f:
            md += [f.read().rstrip(), ""]
    for title, intro, header, section_rows in sections:
        md += [f"## {title}", "", intro, "", markdown_table(header, section_rows), ""]
    md += ["## How each scenario is measured", "", data.DESCRIPTION, ""]
    for m in ran:
        md += [m.DESCRIPTION.strip(), ""]
    if notes or failures or stats_lines:
        md += ["## Notes from this run", ""]
        md += [f"- **failed**: {f}" for f in failures]
        md += [f"- {n}" for n in notes]
        md += [f"- cachefs stats for {line}" for line in stats_lines]
        md.append("")
    md += ["## Raw samples", "", "```"]
    md += [f"{key}: {' '.join(s.raw[key])}" for key in sorted(s.raw)
           if not key.startswith("meta.") and key not in ("note", "failed")]
    md += ["```", ""]
    return "\n".join(md)
