"""18: continuity: the longest stall readers see while a new daemon takes a live mount over (a hand-over, and a
restart by systemd after a SIGKILL), and the time to the first memory hit after it, against an unmount and a remount
with a cold cache."""

import json
import os
import shutil
import signal
import subprocess
import time

from .. import nspawn, system
from ..context import ONE, log
from ..report import Row, fmt_seconds, ratio
from .peer_floor import compile_floor

NUMBERS = ("18",)
# The source: an object-store mount as a model server sees it, 80 MiB/s with 1 ms a request (a 1 GiB reload: ~13 s).
SOURCE_LATENCY_MS, SOURCE_BANDWIDTH = "1", 80 << 20
TITLE = "continuity: a hand-over and a crash restart under systemd, against a cold remount (testsource 80 MiB/s, 1 ms)"
CAPACITY, NEW_CAPACITY = "1536M", "1600M"
WARM_SECONDS, AFTER_SECONDS = 1.0, 1.5   # the readers read this long before the take-over, and on after it serves
# Targets, as shares of the cold remount: a take-over has to cost a small part of what it saves.
STALL, FIRST_HIT = 0.2, 0.2
UNIT, INSIDE = "cachefs@models.service", "/mnt/models"

DESCRIPTION = f"""
**18. Continuity.** Two readers of the 1 GiB file, both comparing every 1 MiB read with the file on local disk:
one keeps its descriptor open and reads the file from start to end over and over, the other opens the file afresh
for every 1 MiB read (open, pread, close: every read asks whichever daemon serves the mount)
(`Scripts/lib/benchmarks/continuity_reader.c`). A reader's stall is the longest time between two consecutive read
completions that ends after the take-over began; a row's stall is the longer of the two readers'. The first memory
hit is the end of the reopening reader's longest stall: the first fresh open and read the new daemon answered (the
new daemon's `bytesFromSource` must stay 0 after it: the reads are memory hits). The readers read
{WARM_SECONDS:g} s before the take-over and {AFTER_SECONDS:g} s after the new daemon answers `cachefs stats`. Source:
`cachefs-testsource --latency-ms {SOURCE_LATENCY_MS} --bandwidth {SOURCE_BANDWIDTH}` (80 MiB/s), so the baseline is
the reload a restart without continuity costs. 18a/18b: a foreground cachefs `--capacity {CAPACITY}`
over it, the file read once (cached), then `cachefs mount SOURCE MNT --capacity {NEW_CAPACITY}` run again on the
live mountpoint in background mode, as a user would; the take-over begins as that command starts. 18c/18d: the
same readers inside a booted Debian 12 container (systemd-nspawn of Scripts/lib/container.sh's root with
`DESTDIR=... Scripts/install`'s files), the shipped `cachefs@models.service` (`--capacity {CAPACITY}`) over the
host's testsource mount bound into the container, the file read once, then `kill -9` of the unit's main PID (the
take-over begins then; systemd restarts it after the unit's `RestartSec=500ms`, so these stalls cannot be under
0.5 s). Baseline (per run, in the same place): page
cache dropped, then the timed unmount, mount and full `dd bs=1M` of the 1 GiB file through a fresh cachefs over the
same source (host: the bench's own unmount and mount; container: `systemctl stop`, `systemctl start`). Targets: the
stall and the time to the first hit each at most {STALL:g}x the cold remount (a take-over keeps the cache so as not
to pay that reload: it should cost a small fraction of it), and no read failed or differed, or the row fails.
"""


def observe(argv, stopfile, event, serving):
    """Starts the two readers (ARGV(mode) each), runs EVENT at t0, waits until SERVING() is true, lets them read on,
    stops them through STOPFILE (a host path); returns t0 and their reports."""
    if os.path.exists(stopfile):
        os.remove(stopfile)
    readers = [subprocess.Popen(argv(mode), stdout=subprocess.PIPE, text=True) for mode in ("held", "reopen")]
    time.sleep(WARM_SECONDS)
    t0 = time.monotonic()
    try:
        event()
        system.wait_until(serving, "the new daemon to serve", 30)
        time.sleep(AFTER_SECONDS)
    finally:
        open(stopfile, "w").close()
        outputs = [reader.communicate(timeout=120)[0] for reader in readers]
        os.remove(stopfile)
    return t0, [json.loads(out) for out in outputs]


def record(bench, key, t0, reports, from_source):
    """Records the stall, the time to the first hit and the failures of one take-over."""
    stalls = [end - start for r in reports for start, end in r["gaps"] if end >= t0]
    reopening = [(end - start, end) for start, end in reports[1]["gaps"] if end >= t0]
    stall = max(stalls, default=0.001)   # gaps under 1 ms are not listed
    hit = max(reopening)[1] - t0 if reopening else None
    failures = sum(r["failures"] for r in reports) + (from_source > 0)
    bench.record(f"{key}.stall.sec", stall)
    if hit is not None:
        bench.record(f"{key}.hit.sec", hit)
    bench.record(f"{key}.failures", failures)
    problems = [r["failure"] for r in reports if r["failure"]]
    if from_source:
        problems.append(f"the new daemon read {from_source} bytes from the source")
    for problem in problems:
        bench.note(f"scenario 18 ({key}): {problem}")
    return (f"stall {stall:.3f} s (held {reports[0]['maxGap']:.3f}, reopening {reports[1]['maxGap']:.3f}), first hit "
            f"{'—' if hit is None else f'{hit:.3f}'} s, {sum(r['reads'] for r in reports)} reads, {failures} failed")


def run(bench):
    reader = compile_floor(bench, ("continuity_reader",), "Scripts/lib/benchmarks")["continuity_reader"]
    source = bench.daemons.testsource(bench.data, bench.mountpoint("continuity-source"), "--latency-ms", SOURCE_LATENCY_MS,
                                      "--bandwidth", str(SOURCE_BANDWIDTH))
    original = bench.path(ONE)
    for i in range(1, bench.plan.runs + 1):
        log(f"run {i}: hand-over: {hand_over(bench, reader, source, original)}")
    try:
        base, stage = nspawn.prepare(bench.work)
    except (RuntimeError, OSError) as error:
        bench.record("s18.crash.skipped", str(error))
        bench.note(f"scenario 18c/18d skipped: the container cannot run here: {error}")
        return
    crash_restarts(bench, reader, source, base, stage)


def hand_over(bench, reader, source, original):
    size = os.stat(original).st_size
    mount = bench.daemons.cachefs(source.path, bench.mountpoint("continuity"), capacity=CAPACITY)
    inside = os.path.join(mount.path, ONE)
    subprocess.run(system.dd(inside), check=True)
    system.wait_until(lambda: bench.daemons.stats(mount)["cachedBytes"] >= size, "the file cached", 60)
    stopfile = os.path.join(bench.work, "continuity-stop")
    new = os.path.join(bench.logs, "cachefs-continuity-new.log")
    t0, reports = observe(lambda mode: [reader, inside, original, stopfile, mode], stopfile,
                          lambda: subprocess.run([bench.daemons.cachefs_bin, "mount", source.path, mount.path,
                                                  "--capacity", NEW_CAPACITY, "--log-file", new], check=True),
                          lambda: (bench.daemons.stats_or_none(mount) or {}).get("pid", mount.pid) != mount.pid)
    stats = bench.keep_stats(mount, "s18")
    if stats.get("continuity", {}).get("start") != "hand-over":
        bench.note(f"scenario 18: after the hand-over, continuity is {stats.get('continuity')}")
    summary = record(bench, "s18.handover", t0, reports, stats["bytesFromSource"])
    # The baseline: the old foreground daemon (it holds nothing now) goes first; then the timed cold remount.
    mount.process.terminate()
    mount.process.wait(timeout=15)
    system.drop_caches()
    start = time.monotonic()
    bench.daemons.stop(mount)
    wait_gone(stats["pid"])
    unmounted = time.monotonic()
    again = bench.daemons.cachefs(source.path, mount.path, capacity=CAPACITY)
    mounted = time.monotonic()
    subprocess.run(system.dd(inside), check=True)
    cold = time.monotonic() - start
    bench.record("s18.cold.sec", cold)
    bench.daemons.stop(again)
    return (f"{summary}; cold remount {cold:.2f} s (unmount {unmounted - start:.2f}, mount {mounted - unmounted:.2f}, "
            f"read {start + cold - mounted:.2f})")


def wait_gone(pid):
    """Waits for a daemon that is not our child (the hand-over's background one) to exit; kills it after 15 s."""
    try:
        system.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), f"pid {pid} to exit", 15)
    except RuntimeError:
        os.kill(pid, signal.SIGKILL)


def crash_restarts(bench, reader, source, base, stage):
    def prepare(root):
        for path in ("srv/models", "srv/plain", "mnt/models", "etc/cachefs"):
            os.makedirs(os.path.join(root, path), exist_ok=True)
        shutil.copy(reader, os.path.join(root, "usr/local/bin/continuity-reader"))
        with open(os.path.join(root, "etc/cachefs/models.conf"), "w") as f:
            f.write(f"SOURCE=/srv/models\nMOUNTPOINT={INSIDE}\nCAPACITY={CAPACITY}\n")

    container = nspawn.Container(base, stage, os.path.join(bench.work, "continuity-container"),
                                 binds=[f"{source.path}:/srv/models", f"{bench.data}:/srv/plain:ro"], prepare=prepare)
    try:
        if container.run(f"test -r /srv/models/{ONE}").returncode != 0:   # the host's FUSE mount not readable inside
            container.check(f"sed -i s,^SOURCE=.*,SOURCE=/srv/plain, /etc/cachefs/models.conf")
            bench.note("scenario 18c/18d: the testsource mount is not readable in the container; the source there is "
                       "a plain local directory (the bench's data directory, bound in)")
        container.check(f"systemctl start {UNIT}", timeout=60)
        for i in range(1, bench.plan.runs + 1):
            log(f"run {i}: crash restart: {crash_restart(bench, container)}")
    finally:
        container.stop()


def crash_restart(bench, container):
    inside, original = f"{INSIDE}/{ONE}", f"/srv/plain/{ONE}"
    # The baseline: a cold remount by the unit (stop, start, read); then the file is cached for the crash.
    system.drop_caches()
    start = time.monotonic()
    container.check(f"systemctl stop {UNIT} && systemctl start {UNIT}")
    mounted = time.monotonic()
    container.check(f"dd if={inside} of=/dev/null bs=1M status=none")
    cold = time.monotonic() - start
    bench.record("s18.crash.cold.sec", cold)
    old = container.property(UNIT, "MainPID")
    if not int(old or 0) > 0:
        raise RuntimeError(f"{UNIT} has no main PID")

    def serving():
        return (container.property(UNIT, "MainPID") not in ("", "0", old)
                and container.run(f"cachefs stats {INSIDE} --json").returncode == 0)

    t0, reports = observe(lambda mode: container.command(f"exec continuity-reader {inside} {original} /srv/stop "
                                                         f"{mode}"),
                          os.path.join(container.root, "srv/stop"), lambda: container.check(f"kill -9 {old}"),
                          serving)
    stats = json.loads(container.check(f"cachefs stats {INSIDE} --json"))
    bench.save_stats("s18-crash", stats)
    if stats.get("continuity", {}).get("start") != "restart":
        bench.note(f"scenario 18: after the SIGKILL, continuity is {stats.get('continuity')}")
    summary = record(bench, "s18.crash", t0, reports, stats["bytesFromSource"])
    return (f"{summary}; cold remount {cold:.2f} s (stop and start {mounted - start:.2f}, read "
            f"{start + cold - mounted:.2f})")


def row(ident, label, s, key, base_key, base_label, target, stats, skipped=None):
    m, b = s.median(key), s.median(base_key)
    failures = max(s.floats(key.rsplit(".", 2)[0] + ".failures"), default=0)
    text = (f"skipped: {skipped}" if skipped
            else f"{fmt_seconds(m)}, {failures:.0f} failed reads" if failures else None)
    return Row(ident, label, m, b, fmt_seconds, f"<= {target}x, no failed read",
               lambda m, b, r, x=target: r <= x and failures == 0, base_label, ratio(m, b), measured_text=text,
               stats=stats)


def rows(s, plan):
    skipped = s.text("s18.crash.skipped") or None
    host, unit = "cold unmount + mount + 1 GiB read", "cold systemctl stop + start + 1 GiB read"
    return [
        row("18a", "Continuity: longest reader stall during a hand-over (`cachefs mount` again)", s,
            "s18.handover.stall.sec", "s18.cold.sec", host, STALL, "stats-s18.json"),
        row("18b", "Continuity: hand-over start to the first memory hit (fresh open + read)", s,
            "s18.handover.hit.sec", "s18.cold.sec", host, FIRST_HIT, "stats-s18.json"),
        row("18c", "Continuity: longest reader stall during a crash restart (SIGKILL, systemd, container)", s,
            "s18.crash.stall.sec", "s18.crash.cold.sec", unit, STALL, "stats-s18-crash.json", skipped),
        row("18d", "Continuity: SIGKILL to the first memory hit after the restart (fresh open + read)", s,
            "s18.crash.hit.sec", "s18.crash.cold.sec", unit, FIRST_HIT, "stats-s18-crash.json", skipped),
    ]
