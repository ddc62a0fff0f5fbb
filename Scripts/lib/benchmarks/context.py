"""What every scenario is handed: the plan (how many runs, which sizes), the paths, the
daemons, and where raw samples go."""

import json
import os
from dataclasses import dataclass

from .daemons import Daemons


@dataclass
class Plan:
    """Sizes and counts of one invocation; --quick trades precision for time."""
    quick: bool
    runs: int
    fio_seconds: int
    cold_file: str            # scenario 3 and 11's file
    latency_mib: int          # how much of the 1 GiB file scenario 4 reads
    tree_dirs: int            # top-level directories of the tree walked by 7 and 14 (100 files x 10 each)
    sweep_mib: int
    sweep_runs: int
    peer_mib: int             # scenario 12's file (Scripts/bench-peers --size-mib)
    peer_bandwidth: str       # scenario 12's source cap (Scripts/bench-peers --bandwidth)
    seed_mib: int             # scenario 15's checkpoint
    seed_runs: int
    s3_mib: int               # scenario 16's file, read through s3fs from moto_server (about 65 MiB/s)
    herd_readers: int = 16
    fleet_sizes: tuple = ((4, 1024), (8, 512))   # scenario 17's (instances, file MiB) (Scripts/bench-fleet --sizes)
    fleet_runs: int = 3
    memory_bound_capacity_mib: int = 512   # scenario 9 reads 4x this: the 2 GiB file
    sweep_depths: tuple = (4, 16, 32)
    sweep_block_sizes: tuple = ("1M", "4M")

    @classmethod
    def make(cls, quick):
        if quick:
            return cls(quick=True, runs=3, fio_seconds=5, cold_file=ONE, latency_mib=256, tree_dirs=10,
                       sweep_mib=128, sweep_runs=1, peer_mib=1024, peer_bandwidth="300M", seed_mib=1024, seed_runs=1,
                       s3_mib=256, fleet_sizes=((4, 512), (8, 256)))
        return cls(quick=False, runs=5, fio_seconds=10, cold_file=BIG, latency_mib=1024, tree_dirs=50,
                   sweep_mib=512, sweep_runs=3, peer_mib=2048, peer_bandwidth="300M", seed_mib=4096, seed_runs=3,
                   s3_mib=512)


LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # Scripts/lib: this package and its neighbours

# The data set, kept on local disk and reused across runs.
BIG = "big-2g.bin"        # 2 GiB of random bytes
ONE = "one-1g.bin"        # 1 GiB of random bytes
TREE = "tree"             # 50 x 10 directories of 100 small files
FILE_MIB = {BIG: 2048, ONE: 1024}


class Bench:
    def __init__(self, repo, plan, work, cachefs_bin, testsource_bin):
        self.repo, self.plan, self.work = repo, plan, work
        self.data = os.path.join(work, "data")            # the "slow" source: local disk
        self.mnt = os.path.join(work, "mnt")              # every mountpoint lives here
        self.shm = "/dev/shm/cachefs-bench"               # the tmpfs copy for baselines
        self.results = os.path.join(work, "results")      # this invocation's raw numbers, logs and stats
        self.logs = os.path.join(self.results, "logs")
        self.daemons = Daemons(cachefs_bin, testsource_bin, self.logs)
        self.samples = {}

    def path(self, *parts):
        return os.path.join(self.data, *parts)

    def mountpoint(self, name):
        return os.path.join(self.mnt, name)

    @property
    def tree_walk(self):
        """The tree scenarios 7 and 14 walk: the whole tree, or a subset of hard links (see data.py)."""
        return TREE if self.plan.tree_dirs == 50 else f"tree-{self.plan.tree_dirs}"

    def record_turns(self, times, key, label):
        """Records and logs the seconds `system.alternating` returned: each command's under KEY with its name
        filled in ("s14.{name}.sec"), logged as "LABEL name: ..."."""
        for name, runs in times.items():
            for t in runs:
                self.record(key.format(name=name), t)
            log(f"{label} {name}: {' '.join(f'{t:.3f}' for t in runs)} s")

    def record(self, key, value):
        """One raw sample: the same key repeated is one sample per run, and the figure is their median."""
        if isinstance(value, float):   # five significant digits, never in exponent form
            text = f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.5g}"
        else:
            text = str(value)
        self.samples.setdefault(key, []).append(text)
        with open(os.path.join(self.results, "results.tsv"), "a") as f:
            f.write(f"{key}\t{text}\n")

    def note(self, text):
        print(f"    note: {text}", flush=True)
        self.record("note", text)

    def keep_stats(self, mount, name):
        """Keeps the daemon's counters as stats-NAME.json (shown in the report where a target is missed)."""
        stats = self.daemons.stats(mount)
        self.save_stats(name, stats)
        return stats

    def save_stats(self, name, stats):
        """Writes counters got elsewhere (a daemon in a container) as stats-NAME.json, as keep_stats does."""
        with open(os.path.join(self.results, f"stats-{name}.json"), "w") as f:
            json.dump(stats, f, indent=1)


def say(text):
    print(f"==> {text}", flush=True)


def log(text):
    print(f"    {text}", flush=True)
