"""Measuring on this machine: the kernel's caches, mounts, timed reads and CPU time."""

import os
import statistics
import subprocess
import time

MiB = 1 << 20
HZ = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def drop_caches():
    """Empties the page cache (the FUSE mounts' included) and the dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mountpoints():
    """Mountpoints in /proc/mounts order (a later entry is mounted over or inside an earlier one)."""
    with open("/proc/mounts") as f:
        # Spaces in paths are octal escapes in /proc/mounts.
        return [line.split()[1].replace("\\040", " ") for line in f]


def is_mounted(path):
    return os.path.realpath(path) in mountpoints()


def wait_until(predicate, what, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_mounted(path, process=None, seconds=10.0):
    def up():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with status {process.returncode} before mounting {path}")
        return is_mounted(path)

    wait_until(up, f"a mount at {path}", seconds)


def unmount(path, lazy=False):
    """Asks FUSE to unmount PATH; true when it is gone."""
    if not is_mounted(path):
        return True
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    if subprocess.run(command, stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: not is_mounted(path), f"{path} to be unmounted", 10)
        return True
    except RuntimeError:
        return False


def unmount_all_under(prefix):
    """Lazily unmounts everything mounted under PREFIX, innermost first; returns what is still mounted."""
    for path in reversed([m for m in mountpoints() if m.startswith(prefix)]):
        unmount(path, lazy=True)
    return [m for m in mountpoints() if m.startswith(prefix)]


def seconds(command, **kwargs):
    """Runs COMMAND to completion and returns its wall time in seconds."""
    start = time.monotonic()
    subprocess.run(command, check=True, **kwargs)
    return time.monotonic() - start


def dd(path, mib=None):
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"] + ([f"count={mib}"] if mib else [])


def read_rate(path, mib=None, **kwargs):
    """MiB/s of one sequential `dd bs=1M` read of PATH (all of it, or its first MIB MiB)."""
    size = mib * MiB if mib else os.stat(path).st_size
    return size / MiB / seconds(dd(path, mib), **kwargs)


def idle_ticks():
    """Idle and iowait time of all cores, in clock ticks."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[4]) + int(fields[5])


def cpu_ticks(pid):
    """User + system time of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def timed_busy(command, **kwargs):
    """Runs COMMAND; returns its wall seconds and the CPU seconds all cores spent meanwhile
    (on an otherwise idle machine, the whole cost of the command and the daemons serving it)."""
    idle = idle_ticks()
    wall = seconds(command, **kwargs)
    return wall, CORES * wall - (idle_ticks() - idle) / HZ


def median(values):
    return statistics.median(values) if values else None


def available_memory():
    """Bytes the kernel could hand out now without swapping (MemAvailable)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def output(command):
    """Standard output of COMMAND, or "" when it cannot run."""
    try:
        return subprocess.run(command, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def alternating(commands, runs, warmup=0):
    """Wall seconds of each shell command in COMMANDS (name -> command), RUNS of each, kernel caches dropped
    before every run. The commands take turns, run by run, so that the machine's drift over the minutes the runs
    take (a fifth or more on these VMs) falls on all of them alike instead of on whichever ran last. WARMUP
    unmeasured turns go first. Returns name -> list of seconds."""
    times = {name: [] for name in commands}
    for turn in range(warmup + runs):
        for name, command in commands.items():
            drop_caches()
            wall = seconds(command, shell=True, stdout=subprocess.DEVNULL)
            if turn >= warmup:
                times[name].append(wall)
    return times
