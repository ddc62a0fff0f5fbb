"""A Debian 12 root booted with systemd in systemd-nspawn, as SystemdTests boots it (Scripts/lib/container.sh's
base root and `DESTDIR=... Scripts/install`'s files): for measurements under a real service manager."""

import os
import shutil
import subprocess

from .context import LIBRARY

REPO = os.path.dirname(os.path.dirname(LIBRARY))
CONTAINER_SH = os.path.join(LIBRARY, "container.sh")


def _bash(script, *args, **kwargs):
    """Runs SCRIPT (its arguments as "$1"...) with Scripts/lib/container.sh's functions."""
    script = f"source Scripts/lib/common.sh && source Scripts/lib/container.sh && {script}"
    return subprocess.run(["bash", "-c", script, "bench", *args], cwd=REPO, capture_output=True, text=True, **kwargs)


def prepare(work):
    """The base root and a staged install under WORK (container.sh's `prepare_container_tests`); returns
    (base, stage), or raises RuntimeError saying why the container cannot run here."""
    stage = os.path.join(work, "container-stage")
    # Its progress and Scripts/install's errors go to standard error. On standard output: the base root; or, with a
    # non-zero status, the reason the container cannot run here (nothing there when Scripts/install failed).
    out = _bash('unset CACHEFS_CONTAINER_SKIP; set -e; prepare_container_tests "$1" >&2; '
                'if [ -n "${CACHEFS_CONTAINER_SKIP:-}" ]; then echo "$CACHEFS_CONTAINER_SKIP"; exit 1; fi; '
                'echo "$CACHEFS_CONTAINER_BASE"', stage)
    if out.returncode != 0:
        raise RuntimeError(out.stdout.strip()
                           or f"DESTDIR={stage} Scripts/install failed: {out.stderr.strip()[-300:]}")
    if not out.stdout.strip():
        raise RuntimeError("prepare_container_tests printed no container base")
    return out.stdout.strip().splitlines()[-1], stage


class Container:
    """A copy of BASE with STAGE's files and PREPARE(root)'s, booted with BINDS ("host:inside" or
    "host:inside:ro") by container.sh's `container_boot`; `stop` powers it off and deletes the copy."""

    def __init__(self, base, stage, scratch, binds=(), prepare=lambda root: None):
        self.scratch, self.root = scratch, os.path.join(scratch, "root")
        self.console = os.path.join(scratch, "console.log")
        self.nspawn = self.init = None
        shutil.rmtree(scratch, ignore_errors=True)
        os.makedirs(scratch)
        subprocess.run(["cp", "-a", "--reflink=auto", base, self.root], check=True)
        subprocess.run(["cp", "-a", stage + "/.", self.root + "/"], check=True)
        prepare(self.root)
        options = [f"--bind{'-ro' if b.endswith(':ro') else ''}={b.removesuffix(':ro')}" for b in binds]
        booted = _bash('container_boot "$@"', self.root, self.console, *options, timeout=300)
        pids = booted.stdout.split()
        if booted.returncode != 0 or len(pids) != 2:
            self.stop()
            raise RuntimeError(f"systemd-nspawn did not boot: {booted.stderr.strip()[-300:]} {self.tail()}")
        self.nspawn, self.init = int(pids[0]), int(pids[1])

    def tail(self):
        try:
            with open(self.console, errors="replace") as f:
                return " / ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def command(self, script):
        """The argv that runs shell SCRIPT in every namespace of the container, with a clean environment
        (container.sh's `container_exec`)."""
        return ["bash", "-c", 'source "$0" && container_exec "$@"', CONTAINER_SH, str(self.init), "sh", "-c", script]

    def run(self, script, timeout=300):
        return subprocess.run(self.command(script), capture_output=True, text=True, timeout=timeout)

    def check(self, script, timeout=300):
        out = self.run(script, timeout)
        if out.returncode != 0:
            raise RuntimeError(f"in the container, `{script}` failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        return out.stdout.strip()

    def property(self, unit, name):
        return self.run(f"systemctl show -P {name} {unit}").stdout.strip()

    def stop(self):
        """Powers the container off (container.sh's `container_stop`; its mounts go with it) and deletes its root."""
        if self.nspawn is not None:
            _bash('container_stop "$1"', str(self.nspawn), timeout=60)
        # Never through a mount (the bound data directory): only a root nothing is mounted in is deleted.
        with open("/proc/mounts") as f:
            if not any(line.split()[1].startswith(self.scratch + "/") for line in f):
                shutil.rmtree(self.scratch, ignore_errors=True)
