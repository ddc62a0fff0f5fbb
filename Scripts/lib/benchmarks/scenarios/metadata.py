"""7: walking a tree of small files through cachefs, against the source directory; listing what of it is cached."""

import os
import subprocess

from .. import system
from ..report import Row, duration, fmt_seconds, ratio
from .memory import warm_main_mount

NUMBERS = ("7",)
TITLE = "metadata (the small-file tree, cachefs vs source directory; cachefs ls of it)"
DESCRIPTION = """
**7. Metadata.** `find . -type f -print0 | xargs -0 stat` and `ls -lR` over the tree through the main cachefs mount
against the data directory itself, the two taking turns run by run, kernel caches dropped before each run.
**7c** times `cachefs ls` of the whole tree through the mount (the daemon stats each source file and looks its blocks
up in the cache; the client prints a line a file and the directory totals) against `find -type f -printf '%s\\n'`
over the data directory, which stats the same files and prints less; the two take turns, one unmeasured turn first,
kernel caches kept (a listing of a mount in use finds the source's metadata cached). Its target is the issue's: under
a second.
"""

WALKS = {"find": "cd {dir} && find . -type f -print0 | xargs -0 stat >/dev/null",
         "ls": "ls -lR {dir} >/dev/null"}
LISTING_LIMIT = 1.0   # seconds


def run(bench):
    mount = warm_main_mount(bench)
    for what, command in WALKS.items():
        roots = {"source": bench.data, "cachefs": mount.path}
        times = system.alternating({name: command.format(dir=os.path.join(root, bench.tree_walk))
                                    for name, root in roots.items()}, bench.plan.runs)
        bench.record_turns(times, f"s7.{what}.{{name}}.sec", what)
    listings = {"cachefs": f"{bench.daemons.cachefs_bin} ls {os.path.join(mount.path, bench.tree_walk)}",
                "source": f"find {os.path.join(bench.data, bench.tree_walk)} -type f -printf '%s\\n'"}
    times = {name: [] for name in listings}
    for turn in range(1 + bench.plan.runs):
        for name, command in listings.items():
            wall = system.seconds(command, shell=True, stdout=subprocess.DEVNULL)
            if turn:
                times[name].append(wall)
    bench.record_turns(times, "s7.list.{name}.sec", "cachefs ls")
    bench.keep_stats(mount, "main")


def tree_label(plan):
    return f"{plan.tree_dirs * 1000:,} files"


def rows(s, plan):
    walks = [duration(ident, f"Metadata, cold: {what} over {tree_label(plan)}", s, f"s7.{key}.cachefs.sec",
                      f"s7.{key}.source.sec", "source dir", 1.5, "stats-main.json")
             for ident, key, what in (("7a", "find", "find -type f | xargs stat"), ("7b", "ls", "ls -lR"))]
    listed, found = s.median("s7.list.cachefs.sec"), s.median("s7.list.source.sec")
    listing = Row("7c", f"cachefs ls over {tree_label(plan)} (what of each file is in memory)", listed, found,
                  fmt_seconds, f"< {LISTING_LIMIT:g} s", lambda m, b, r: m < LISTING_LIMIT,
                  "find -printf %s on the source dir", ratio(listed, found), stats="stats-main.json")
    return walks + [listing]
