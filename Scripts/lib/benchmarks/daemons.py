"""The FUSE daemons a benchmark starts: cachefs, its sources and the other clients it is compared with.

Every daemon runs in the foreground as a child of the bench, in a session of its own (a Ctrl-C
reaches the bench, which stops them in order), so each is stopped by its own PID."""

import json
import os
import random
import signal
import socket
import subprocess

from . import system


class Mount:
    def __init__(self, kind, path, process, log):
        self.kind, self.path, self.process, self.log = kind, path, process, log

    @property
    def pid(self):
        return self.process.pid

    def __str__(self):
        return f"{self.kind} at {self.path} (pid {self.pid})"


class Daemons:
    def __init__(self, cachefs_bin, testsource_bin, logs):
        self.cachefs_bin, self.testsource_bin, self.logs = cachefs_bin, testsource_bin, logs
        self.running = []

    def _start(self, kind, path, command, preexec_fn=None):
        os.makedirs(path, exist_ok=True)
        log = os.path.join(self.logs, f"{kind}-{os.path.basename(path)}.log")
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True, preexec_fn=preexec_fn)
        mount = Mount(kind, path, process, log)
        self.running.append(mount)
        try:
            system.wait_mounted(path, process)
        except RuntimeError as error:
            self.stop(mount)
            raise RuntimeError(f"{error} (log: {log})") from None
        return mount

    def cachefs(self, source, path, *options, capacity="3G", preexec_fn=None):
        command = [self.cachefs_bin, source, path, "--foreground", "--capacity", capacity, *options]
        mount = self._start("cachefs", path, command, preexec_fn)
        # The control socket answers a moment after the mount does, and the daemon is ready (passthrough probed,
        # the read-ahead window raised: a file opened before that keeps FUSE's 128 KiB window) once stats show it.
        system.wait_until(lambda: (self.stats_or_none(mount) or {}).get("readAhead") is not None,
                          f"cachefs ready at {path}")
        return mount

    def fleet_member(self, source, path, ports, index, *options, capacity="3G"):
        """Member INDEX of a fleet on loopback: a cachefs serving peers on PORTS[INDEX] and given every member's
        address as its peers, its own included, the way a DNS name listing the fleet would give them."""
        return self.cachefs(source, path, "--listen", f"127.0.0.1:{ports[index]}",
                            "--peers", ",".join(f"127.0.0.1:{port}" for port in ports), *options, capacity=capacity)

    def testsource(self, root, path, *options):
        return self._start("testsource", path, [self.testsource_bin, root, path, *options])

    def rclone(self, source, path, *options):
        return self._start("rclone", path, ["rclone", "mount", source, path, "--read-only", "--config", "/dev/null",
                                            *options])

    def bindfs(self, source, path, *options):
        return self._start("bindfs", path, ["bindfs", "-f", "-r", *options, source, path])

    def stats(self, mount):
        """The daemon's counters, from `cachefs stats --json`."""
        out = subprocess.run([self.cachefs_bin, "stats", mount.path, "--json"], check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out)

    def counters(self, mounts, keys):
        """Each mount's counters named KEYS (0 where the daemon does not report one), from `cachefs stats`."""
        return [{key: stats.get(key, 0) for key in keys} for stats in map(self.stats, mounts)]

    def stats_or_none(self, mount):
        try:
            return self.stats(mount)
        except (subprocess.CalledProcessError, ValueError):
            return None

    def stop(self, mount):
        """Unmounts and waits for the daemon to exit, so that its memory is free; signals it by PID if it lingers."""
        if mount in self.running:
            self.running.remove(mount)
        clean = system.unmount(mount.path)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and mount.process.poll() is None:
                mount.process.send_signal(sig)
            try:
                mount.process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                clean = False
        if not clean:
            system.unmount(mount.path, lazy=True)
        return clean

    def stop_all(self):
        """Stops every daemon still running, the most recent (those mounted over the others) first."""
        for mount in reversed(list(self.running)):
            self.stop(mount)


def listen_address(mount):
    """The HOST:PORT a cachefs instance serves peers on (its --listen), or None."""
    args = list(mount.process.args)
    return args[args.index("--listen") + 1] if "--listen" in args else None


def free_ports(count):
    """COUNT consecutive loopback ports that nothing listens on now, below the kernel's ephemeral range (where the
    peers' own outgoing connections take theirs)."""
    for _ in range(100):
        base = random.randrange(20000, 30000 - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return list(range(base, base + count))
    raise RuntimeError(f"no {count} free consecutive ports on 127.0.0.1")


def _bindable(port):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
