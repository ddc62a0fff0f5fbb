"""Memory charged to a group of processes: a child memory cgroup of the bench's own (cgroup v1 or v2), or the whole
machine's /proc/meminfo where no such group can be made (then other processes' memory is counted too)."""

import os

V1, V2 = "/sys/fs/cgroup/memory", "/sys/fs/cgroup"


def own_cgroup():
    """(version, directory) of this process's memory cgroup, or (None, None)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "memory" in controllers.split(",") and os.path.isdir(V1 + path):
            return 1, V1 + path
    for number, _, path in lines:
        directory = V2 + path
        if number == "0" and os.path.exists(os.path.join(directory, "cgroup.subtree_control")):
            with open(os.path.join(directory, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split():
                    return 2, directory
    return None, None


class MemoryGroup:
    """Processes started with `preexec_fn=group.join` are charged here; `used()` is their anonymous memory plus page
    cache in bytes (the page cache a process brings in is charged to its group)."""

    def __init__(self, name):
        self.version, parent = own_cgroup()
        self.path = None
        if parent:
            self.path = os.path.join(parent, name)
            os.makedirs(self.path, exist_ok=True)

    @property
    def scope(self):
        return f"cgroup v{self.version} {self.path}" if self.path else "the whole machine (/proc/meminfo)"

    def join(self):
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def used(self):
        """(anonymous, page cache) bytes."""
        if not self.path:
            info = read_table("/proc/meminfo", 1024)
            return info["AnonPages"], info["Cached"]
        stat = read_table(os.path.join(self.path, "memory.stat"))
        return (stat["anon"], stat["file"]) if self.version == 2 else (stat["rss"], stat["cache"])

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass   # a process is still in it; it is left for the next run


def read_table(path, unit=1):
    table = {}
    with open(path) as f:
        for line in f:
            key, value = line.split()[:2]
            table[key.rstrip(":")] = int(value) * unit
    return table
