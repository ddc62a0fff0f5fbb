"""7: walking a tree of small files through cachefs, against the source directory."""

import os

from .. import system
from ..report import duration
from .memory import warm_main_mount

NUMBERS = ("7",)
TITLE = "metadata (the small-file tree, cachefs vs source directory)"
DESCRIPTION = """
**7. Metadata.** `find . -type f -print0 | xargs -0 stat` and `ls -lR` over the tree through the main cachefs mount
against the data directory itself, the two taking turns run by run, kernel caches dropped before each run.
"""

WALKS = {"find": "cd {dir} && find . -type f -print0 | xargs -0 stat >/dev/null",
         "ls": "ls -lR {dir} >/dev/null"}


def run(bench):
    mount = warm_main_mount(bench)
    for what, command in WALKS.items():
        roots = {"source": bench.data, "cachefs": mount.path}
        times = system.alternating({name: command.format(dir=os.path.join(root, bench.tree_walk))
                                    for name, root in roots.items()}, bench.plan.runs)
        bench.record_turns(times, f"s7.{what}.{{name}}.sec", what)
    bench.keep_stats(mount, "main")


def tree_label(plan):
    return f"{plan.tree_dirs * 1000:,} files"


def rows(s, plan):
    return [duration(ident, f"Metadata, cold: {what} over {tree_label(plan)}", s, f"s7.{key}.cachefs.sec",
                     f"s7.{key}.source.sec", "source dir", 1.5, "stats-main.json")
            for ident, key, what in (("7a", "find", "find -type f | xargs stat"), ("7b", "ls", "ls -lR"))]
