"""Benchmarks cachefs against tmpfs, its sources and other clients (rclone's VFS cache, bindfs), each figure a
median of several runs and a ratio against a baseline measured in the same run; prints the table and rewrites
Docs/BENCHMARKS.md. Run through Scripts/bench, which installs what it needs first."""

import argparse
import dataclasses
import datetime
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

from . import data, report, scenarios, system
from .context import LIBRARY, Bench, Plan, say

REPO = os.path.dirname(os.path.dirname(LIBRARY))
USAGE = """\
    Scripts/bench              # the full set: 5 runs a figure, about 45 minutes on 2 busy cores
    Scripts/bench --quick      # 3 runs, smaller files and shorter fio runs: about 12 minutes
    Scripts/bench --report-only   # the report again from the last run's raw samples
    Scripts/bench --only 3,11  # just these scenarios; the report goes to the results directory,
                               # not to Docs/BENCHMARKS.md

Needs root (FUSE mounts, drop_caches, apt-get), about 18 GiB of free memory for the full seed table (5 GiB with
--quick) and 12 GiB of disk. Test data is kept under $CACHEFS_BENCH_DIR (/var/tmp/cachefs-bench) and reused;
nothing stays mounted afterwards."""


def arguments(argv):
    listing = "\n".join(f"    {', '.join(m.NUMBERS):>5}  {m.TITLE}" for m in scenarios.ALL)
    parser = argparse.ArgumentParser(prog="Scripts/bench", description=__doc__,
                                     epilog=f"{USAGE}\n\nScenarios, in running order:\n{listing}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller sizes")
    parser.add_argument("--only", metavar="N,N", help="only these scenarios (numbers as in the report)")
    parser.add_argument("--runs", type=int, help="runs a figure (default 5, or 3 with --quick)")
    parser.add_argument("--peer-size-mib", type=int, help="scenario 12's file (default 2048, or 1024 with --quick)")
    parser.add_argument("--peer-bandwidth", help="scenario 12's source cap, e.g. 300M (the default)")
    parser.add_argument("--seed-mib", type=int, help="scenario 15's checkpoint (default 4096, or 1024 with --quick)")
    parser.add_argument("--fleet-sizes", type=fleet_sizes, metavar="NxMIB,NxMIB",
                        help="scenario 17's fleets: instances x file MiB (default 4x1024,8x512, or 4x512,8x256 with "
                             "--quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the last run's raw samples (after editing bench-limits.md)")
    return parser.parse_args(argv)


def fleet_sizes(text):
    """"4x1024,8x512" -> ((4, 1024), (8, 512))."""
    try:
        sizes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(len(size) != 2 or size[0] < 2 or size[1] < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxMIB,... with N >= 2 instances, e.g. 4x1024,8x512")
    return sizes


def make_plan(args):
    plan = Plan.make(args.quick)
    if args.runs:
        plan.runs = plan.seed_runs = plan.fleet_runs = args.runs
    plan.fleet_sizes = args.fleet_sizes or plan.fleet_sizes
    plan.peer_mib = args.peer_size_mib or plan.peer_mib
    plan.peer_bandwidth = args.peer_bandwidth or plan.peer_bandwidth
    plan.seed_mib = args.seed_mib or plan.seed_mib
    return plan


def build():
    say("building cachefs and cachefs-testsource (release)")
    for product in ("cachefs", "cachefs-testsource"):
        out = subprocess.run(["swift", "build", "-c", "release", "--product", product], cwd=REPO,
                             capture_output=True, text=True)
        print("\n".join(line for line in out.stdout.splitlines() if line.startswith("Build ")))
        if out.returncode != 0:
            sys.exit(f"bench: swift build of {product} failed:\n{out.stdout}{out.stderr}")
    return system.output(["swift", "build", "-c", "release", "--show-bin-path"])


def record_meta(bench, args, argv, selected):
    plan, r = bench.plan, bench.record
    r("meta.mode", "quick" if plan.quick else "full")
    r("meta.runs", plan.runs)
    r("meta.only", args.only or "")
    r("meta.date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    r("meta.command", " ".join(["Scripts/bench"] + argv))
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "Sources", "Package.swift"], cwd=REPO).returncode
    r("meta.commit", (system.output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]) or "unknown")
      + (" (with uncommitted changes in Sources/)" if dirty else ""))
    r("meta.nproc", system.CORES)
    with open("/proc/cpuinfo") as f:
        r("meta.cpu", next((line.split(": ", 1)[1].strip() for line in f if line.startswith("model name")), "?"))
    with open("/proc/meminfo") as f:
        r("meta.memory", f"{int(f.readline().split()[1]) / 1048576:.1f} GiB")
    r("meta.kernel", os.uname().release)
    with open("/etc/os-release") as f:
        r("meta.os", next((line.split("=", 1)[1].strip().strip('"') for line in f
                           if line.startswith("PRETTY_NAME")), "?"))
    swift = next((w for w in system.output(["swift", "--version"]).split("\n") if "Swift version" in w), "")
    r("meta.tools", ", ".join([swift[swift.find("Swift version"):].split(" (")[0],
                               "libfuse " + system.output(["fusermount3", "-V"]).split()[-1],
                               system.output(["rclone", "version"]).split("\n")[0],
                               "bindfs " + system.output(["bindfs", "--version"]).split()[-1],
                               system.output(["fio", "--version"]),
                               "safetensors " + system.output([sys.executable, "-c",
                                                               "import safetensors; print(safetensors.__version__)"])]))
    r("meta.load", system.loadavg())
    r("meta.plan", json.dumps(dataclasses.asdict(plan)))   # what --report-only needs to label the rows
    if plan.quick:
        bench.note(f"--quick: {plan.runs} runs a figure; scenario 3 and 11 read 1 GiB (not 2 GiB), scenario 4 the "
                   f"first {plan.latency_mib} MiB of the 1 GiB file, fio runs {plan.fio_seconds} s (not 10 s), 7 and "
                   f"14 walk {plan.tree_dirs * 1000:,} files (not 50,000), the sweep reads {plan.sweep_mib} MiB once "
                   f"per setting, 12 reads {plan.peer_mib} MiB, 15 loads a {plan.seed_mib} MiB checkpoint, 16 reads "
                   f"{plan.s3_mib} MiB, 17's fleets are "
                   f"{', '.join(f'{n} x {mib} MiB' for n, mib in plan.fleet_sizes)}")
    if scenarios.seed_table in selected and plan.seed_runs != plan.runs:
        minutes = 2 * plan.seed_mib * system.MiB / scenarios.seed_table.SOURCE_BANDWIDTH / 60
        bench.note(f"scenario 15 (seed table) is the median of {report.runs_text(plan.seed_runs)}: its two "
                   f"source-bound loads of a {plan.seed_mib} MiB checkpoint take about {minutes:.1f} minutes a run")


def load_warning(bench):
    """Said in the report's header when other work shared the machine (it lowers every figure)."""
    busiest = max(float(v) for text in (bench.samples["meta.load"][0], system.loadavg()) for v in text.split()[:2])
    if busiest > system.CORES / 2:
        return (f"a loaded machine: load average up to {busiest:.1f} on {system.CORES} cores during this run; other "
                "work shared the cores, so the figures are lower and noisier than on an idle machine")
    return ""


def markdown_path(results, only):
    """A partial run does not replace the full figures."""
    return os.path.join(results if only else os.path.join(REPO, "Docs"), "BENCHMARKS.md")


def readme_path(only):
    """Only a full run's figures reach the README."""
    return None if only else os.path.join(REPO, "README.md")


def report_only(work):
    results = os.path.join(work, "results")
    raw = {}
    with open(os.path.join(results, "results.tsv")) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            raw.setdefault(key, []).append(value)
    s = report.Samples(raw)
    plan = Plan.make(s.text("meta.mode") == "quick")
    if s.text("meta.plan"):
        plan = Plan(**json.loads(s.text("meta.plan")))
    failed = {n.strip() for f in raw.get("failed", []) for n in f.split(":", 1)[0].split(",")}
    selected = [m for m in scenarios.select(s.text("meta.only"))
                if any(s.has(f"s{n}.") or n in failed for n in m.NUMBERS)]
    markdown = markdown_path(results, s.text("meta.only"))
    report.write(results, raw, plan, selected, markdown, readme_path(s.text("meta.only")))
    say(f"wrote {markdown} from {results}/results.tsv")
    return 0


def run_scenario(bench, module):
    start = time.monotonic()
    say(f"{', '.join(module.NUMBERS)}. {module.TITLE}")
    try:
        module.run(bench)
    except Exception as error:
        with open(os.path.join(bench.logs, f"failed-{module.NUMBERS[0]}.log"), "w") as f:
            traceback.print_exc(file=f)
        print(f"    failed: {error!r} (traceback in {bench.logs}/failed-{module.NUMBERS[0]}.log)", file=sys.stderr)
        bench.record("failed", f"{', '.join(module.NUMBERS)}: {module.__name__.split('.')[-1]}: {error}")
    finally:
        cleanup_mounts(bench)
    print(f"    ({time.monotonic() - start:.0f} s)", flush=True)


def cleanup_mounts(bench):
    """Stops every daemon the bench started and lazily unmounts anything else left under the mount directory."""
    bench.daemons.stop_all()
    return system.unmount_all_under(bench.mnt + "/")


def main(argv):
    args = arguments(argv)
    if os.geteuid() != 0:
        sys.exit("bench: run as root (FUSE mounts, drop_caches and apt-get need it)")
    selected = scenarios.select(args.only)
    plan = make_plan(args)
    work = os.environ.get("CACHEFS_BENCH_DIR", "/var/tmp/cachefs-bench")
    if args.report_only:
        return report_only(work)
    os.makedirs(os.path.join(work, "mnt"), exist_ok=True)
    lock = open(os.path.join(work, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"bench: another Scripts/bench is running (lock {work}/.lock)")
    bin_path = build()
    bench = Bench(REPO, plan, work, os.path.join(bin_path, "cachefs"), os.path.join(bin_path, "cachefs-testsource"))
    shutil.rmtree(bench.results, ignore_errors=True)
    os.makedirs(bench.logs)
    # A SIGTERM unwinds like Ctrl-C does, through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    left = []
    try:
        cleanup_mounts(bench)   # a previous run killed hard may have left some
        data.prepare(bench)
        record_meta(bench, args, argv, selected)
        for module in selected:
            run_scenario(bench, module)
        bench.record("meta.load_end", system.loadavg())
        bench.record("meta.load_warning", load_warning(bench))
        markdown = markdown_path(bench.results, args.only)
        report.write(bench.results, bench.samples, plan, selected, markdown, readme_path(args.only))
        print()
        say(f"wrote {markdown}; raw numbers, stats and logs in {bench.results}")
    finally:
        left = cleanup_mounts(bench)
        shutil.rmtree(bench.shm, ignore_errors=True)
        shutil.rmtree(os.path.join(work, "rclone-cache"), ignore_errors=True)
    if left:
        sys.exit(f"bench: could not unmount {', '.join(left)}")
    return 1 if bench.samples.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
