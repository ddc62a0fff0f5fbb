"""14: `ls -lR` of the small-file tree through cachefs over an rclone mount, against the rclone mount itself."""

import os

from .. import system
from ..report import duration
from .metadata import WALKS, tree_label

NUMBERS = ("14",)
TITLE = "ls -lR over an rclone source (cachefs vs the rclone mount)"
DESCRIPTION = """
**14. Metadata over rclone.** `rclone mount DATA SRC --read-only --vfs-cache-mode off` (rclone's own directory cache
at its defaults) and a cachefs over SRC; `ls -lR` of the tree (the one 7 walks) through cachefs against SRC itself,
the two taking turns run by run (this machine drifts by a fifth within minutes, which back-to-back series put on
one side only), kernel caches dropped before each run, after one unmeasured warm-up run of each, so that both read
rclone's directory cache in the same state.
"""
TARGET = 1.5


def run(bench):
    source = bench.daemons.rclone(bench.data, bench.mountpoint("rclone-tree"), "--vfs-cache-mode", "off")
    mount = bench.daemons.cachefs(source.path, bench.mountpoint("cachefs-rclone"))
    roots = {"rclone": source.path, "cachefs": mount.path}
    times = system.alternating({name: WALKS["ls"].format(dir=os.path.join(root, bench.tree_walk))
                                for name, root in roots.items()}, bench.plan.runs, warmup=1)
    bench.record_turns(times, "s14.{name}.sec", "ls -lR")
    bench.keep_stats(mount, "s14")


def rows(s, plan):
    return [duration("14", f"Metadata over rclone: ls -lR over {tree_label(plan)}", s, "s14.cachefs.sec",
                     "s14.rclone.sec", "rclone mount direct", TARGET, "stats-s14.json")]
