"""A Debian 12 root booted with systemd in systemd-nspawn, as SystemdTests boots it (Scripts/lib/container.sh's
base root and `DESTDIR=... Scripts/install`'s files): for measurements under a real service manager."""

import os
import shutil
import signal
import subprocess
import time

from .context import LIBRARY

REPO = os.path.dirname(os.path.dirname(LIBRARY))
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _bash(script, **kwargs):
    script = f"source Scripts/lib/common.sh && source Scripts/lib/container.sh && {script}"
    return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, **kwargs)


def prepare(work):
    """The base root and a staged install under WORK; returns (base, stage), or raises RuntimeError saying why the
    container cannot run here."""
    out = _bash('ensure_container_base || { echo "$CONTAINER_UNAVAILABLE" >&2; exit 1; }; echo "$CONTAINER_BASE"')
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no container base")
    base = out.stdout.strip().splitlines()[-1]
    stage = os.path.join(work, "container-stage")
    shutil.rmtree(stage, ignore_errors=True)
    built = subprocess.run(["Scripts/install"], cwd=REPO, env={**os.environ, "DESTDIR": stage},
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"DESTDIR={stage} Scripts/install failed: {built.stderr.strip()[-300:]}")
    return base, stage


class Container:
    """A copy of BASE with STAGE's files and PREPARE(root)'s, booted with BINDS ("host:inside" or
    "host:inside:ro"); `stop` powers it off and deletes the copy."""

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
        with open(self.console, "ab") as log:
            self.nspawn = subprocess.Popen(["systemd-nspawn", "-D", self.root, "--keep-unit", "--register=no",
                                            "--bind=/dev/fuse", "--capability=CAP_SYS_ADMIN", "--console=pipe",
                                            *options, "-b"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                           start_new_session=True)
        try:
            self._wait_booted()
        except Exception:
            self.stop()
            raise

    def _wait_booted(self):
        deadline = time.monotonic() + 120
        while self.init is None:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd-nspawn did not boot: {self.tail()}")
            found = subprocess.run(["pgrep", "-P", str(self.nspawn.pid), "-x", "systemd"], capture_output=True,
                                   text=True).stdout.split()
            self.init = int(found[0]) if found else None
            time.sleep(0.1)
        while True:
            state = self.run("systemctl is-system-running --wait", timeout=120).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container did not finish booting ({state}): {self.tail()}")
            time.sleep(0.2)

    def tail(self):
        try:
            with open(self.console, errors="replace") as f:
                return " / ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def command(self, script):
        """The argv that runs shell SCRIPT in every namespace of the container, with a clean environment."""
        return ["nsenter", "-t", str(self.init), "-a", "env", "-i", PATH, "LANG=C.UTF-8", "sh", "-c", script]

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
        """Powers the container off (systemd-nspawn turns SIGTERM into a clean shutdown; its mounts go with it),
        killing it after 30 s; deletes its root."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.init:
                    os.kill(self.init, signal.SIGKILL)
                self.nspawn.kill()
                self.nspawn.wait()
        # Never through a mount (the bound data directory): only a root nothing is mounted in is deleted.
        with open("/proc/mounts") as f:
            if not any(line.split()[1].startswith(self.scratch + "/") for line in f):
                shutil.rmtree(self.scratch, ignore_errors=True)
