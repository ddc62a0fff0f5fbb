#!/usr/bin/env python3
"""A real object-store source for tests and benchmarks.

A directory tree is uploaded to a local S3 endpoint (moto_server) and mounted
read-only by s3fs, configured as a production ossfs/s3fs mount is (ossfs is a
fork of s3fs): no local data cache, so every read reaches the object store, and
s3fs's own stat cache on, with a short expiry so that a replaced object shows
its new mtime within about a second (s3fs's default, 900 s, hides it for 15
minutes while reads already return the new bytes).

Command line (from bash, or from tests that supervise the process):

    s3source.py serve DATA MOUNTPOINT [--bucket NAME] [--stat-cache-expire SECONDS]
        Stays in the foreground. Prints one JSON line once the mount answers
        ({"mountpoint", "endpoint", "bucket", "pid"}), and tears everything down
        on SIGTERM or SIGINT, when s3fs or moto_server dies, or, if its standard
        input is a pipe, when that pipe closes (the parent died).
    s3source.py up DATA MOUNTPOINT [...]     the same in the background; returns once mounted
    s3source.py put MOUNTPOINT KEY FILE      replaces object KEY (a path beneath MOUNTPOINT)
                                             with FILE's bytes, under a later Last-Modified
    s3source.py down MOUNTPOINT              unmounts and stops s3fs and moto_server

From Python:

    with S3Source(data, mountpoint) as source:
        source.put("models/model.bin", "/tmp/new.bin")

It installs nothing: s3fs comes from apt, moto[server] and boto3 from pip
(Scripts/test ensures them).
"""

import argparse
import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

ACCESS_KEY, SECRET_KEY = "key", "secret"


def state_directory(mountpoint):
    """Where the passwd file, the logs and the state of the source at MOUNTPOINT live."""
    tag = hashlib.sha1(os.path.realpath(mountpoint).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "s3source-" + tag)


def is_mounted(mountpoint):
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1].replace("\\040", " ") == target for line in mounts)


def die_with_parent(signal_number):
    """What a child runs before exec: it gets SIGNAL_NUMBER when the supervising process dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    return lambda: ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal_number)


def s3_client(endpoint):
    import boto3  # imported here so that `down` works without boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=Config(s3={"addressing_style": "path"}))


def put(endpoint, bucket, key, path):
    """Uploads PATH as KEY. A replaced object gets a Last-Modified at least one second
    later than the old one: s3fs reports Last-Modified, in whole seconds, as the mtime
    (and ctime), so a replacement within the same second would change no attribute at all."""
    client = s3_client(endpoint)
    try:
        previous = client.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()
    except client.exceptions.ClientError:
        previous = None
    if previous is not None:
        time.sleep(max(0.0, previous + 1 - time.time()))
    client.upload_file(path, bucket, key)
    modified = client.head_object(Bucket=bucket, Key=key)["LastModified"].timestamp()
    if previous is not None and modified <= previous:
        raise RuntimeError(f"{key}: Last-Modified did not advance ({previous} -> {modified})")
    return modified


class S3Source:
    """moto_server holding DATA's files as objects of BUCKET, mounted read-only by s3fs at MOUNTPOINT."""

    def __init__(self, data, mountpoint, bucket="models", stat_cache_expire=1):
        self.data, self.bucket, self.stat_cache_expire = data, bucket, stat_cache_expire
        self.mountpoint = os.path.realpath(mountpoint)
        self.directory = state_directory(self.mountpoint)
        self.moto = self.s3fs = None
        self.endpoint = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.stop()

    def start(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            os.makedirs(self.mountpoint, exist_ok=True)
            self._start_moto()
            self._upload()
            self._mount()
            with open(os.path.join(self.directory, "state.json"), "w") as state:
                json.dump(self.description(), state)
        except BaseException:
            self.stop()
            raise

    def description(self):
        return {"mountpoint": self.mountpoint, "endpoint": self.endpoint, "bucket": self.bucket, "pid": os.getpid(),
                "moto": self.moto.pid, "s3fs": self.s3fs.pid}

    def put(self, key, path):
        return put(self.endpoint, self.bucket, key, path)

    def _start_moto(self):
        for _ in range(3):  # a free port can be taken between finding it and binding it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            self.endpoint = f"http://127.0.0.1:{port}"
            # moto keeps its objects in memory, so nothing is lost by killing it: it is always SIGKILLed.
            self.moto = self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    "moto.log", signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self.moto.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(self.endpoint, timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            self._end(self.moto, signal.SIGKILL)
        raise RuntimeError("moto_server did not start: " + self._log("moto.log"))

    def _upload(self):
        client = s3_client(self.endpoint)
        client.create_bucket(Bucket=self.bucket)
        for directory, _, files in os.walk(self.data):  # files only: S3 has no empty directories
            for name in files:
                path = os.path.join(directory, name)
                client.upload_file(path, self.bucket, os.path.relpath(path, self.data))

    def _mount(self):
        passwd = os.path.join(self.directory, "passwd")
        with open(os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(f"{ACCESS_KEY}:{SECRET_KEY}\n")
        options = [f"url={self.endpoint}", "use_path_request_style", f"passwd_file={passwd}",
                   "ro", "allow_other",  # a shared model mount: read-only, readable by the serving user
                   f"stat_cache_expire={self.stat_cache_expire}",  # no use_cache: reads reach the object store
                   "dbglevel=warn"]
        # SIGTERM lets s3fs unmount itself.
        self.s3fs = self._spawn(["s3fs", self.bucket, self.mountpoint, "-f", "-o", ",".join(options)],
                                "s3fs.log", signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not (is_mounted(self.mountpoint) and self._answers()):
            if self.s3fs.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("s3fs did not mount: " + self._log("s3fs.log"))
            time.sleep(0.05)

    def _answers(self):
        try:
            os.listdir(self.mountpoint)
            return True
        except OSError:
            return False

    def stop(self):
        """Unmounts, then stops s3fs and moto_server; safe to call more than once and after a failed start."""
        if self.s3fs is not None and is_mounted(self.mountpoint):
            subprocess.run(["fusermount", "-u", self.mountpoint], stderr=subprocess.DEVNULL)
        self._end(self.s3fs, signal.SIGTERM)
        if is_mounted(self.mountpoint):  # busy, or s3fs was killed: detach it
            subprocess.run(["fusermount", "-u", "-z", self.mountpoint], stderr=subprocess.DEVNULL)
        self._end(self.moto, signal.SIGKILL)
        self.s3fs = self.moto = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def running(self):
        return all(child is not None and child.poll() is None for child in (self.moto, self.s3fs))

    def _spawn(self, command, log, stop_signal):
        with open(os.path.join(self.directory, log), "ab") as output:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                    preexec_fn=die_with_parent(stop_signal))

    @staticmethod
    def _end(child, stop_signal):
        if child is None:
            return
        child.send_signal(stop_signal)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _log(self, name):
        try:
            with open(os.path.join(self.directory, name), errors="replace") as log:
                return log.read()[-2000:]
        except OSError:
            return "(no log)"


def load_state(mountpoint):
    with open(os.path.join(state_directory(mountpoint), "state.json")) as state:
        return json.load(state)


def serve(arguments):
    source = S3Source(arguments.data, arguments.mountpoint, arguments.bucket, arguments.stat_cache_expire)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    with source:
        print(json.dumps(source.description()), flush=True)
        try:
            watch_stdin = stat.S_ISFIFO(os.fstat(0).st_mode)
        except OSError:
            watch_stdin = False
        while source.running():
            if watch_stdin:
                readable, _, _ = select.select([sys.stdin], [], [], 0.5)
                if readable and not os.read(sys.stdin.fileno(), 4096):
                    return 0
            else:
                time.sleep(0.5)
    print("s3source: s3fs or moto_server ended by itself", file=sys.stderr)
    return 1


def up(arguments):
    command = [sys.executable, os.path.abspath(__file__), "serve", arguments.data, arguments.mountpoint,
               "--bucket", arguments.bucket, "--stat-cache-expire", str(arguments.stat_cache_expire)]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
    line = server.stdout.readline()
    if not line:
        return server.wait() or 1
    sys.stdout.write(line.decode())
    return 0


def down(arguments):
    try:
        state = load_state(arguments.mountpoint)
    except FileNotFoundError:
        state = {}
    if "pid" in state:
        try:
            os.kill(state["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                os.kill(state["pid"], 0)
                time.sleep(0.05)
        except ProcessLookupError:
            pass
    # Whatever the supervisor left behind (it was killed, or never wrote its state).
    for name in ("s3fs", "moto"):
        if name in state:
            try:
                os.kill(state[name], signal.SIGKILL)
            except ProcessLookupError:
                pass
    if is_mounted(arguments.mountpoint):
        subprocess.run(["fusermount", "-u", "-z", arguments.mountpoint], stderr=subprocess.DEVNULL)
    shutil.rmtree(state_directory(arguments.mountpoint), ignore_errors=True)
    return 0


def main():
    # A parent may start us with signals blocked (the Swift test runner does), and children
    # inherit the mask: SIGTERM must reach this process, s3fs and moto_server.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    parser = argparse.ArgumentParser(description="A local S3 object store (moto_server) mounted read-only by s3fs.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "up"):
        command = commands.add_parser(name)
        command.add_argument("data", help="directory whose files become the bucket's objects")
        command.add_argument("mountpoint")
        command.add_argument("--bucket", default="models")
        command.add_argument("--stat-cache-expire", type=int, default=1,
                             help="seconds s3fs may report an object's cached attributes (s3fs's default: 900)")
    replace = commands.add_parser("put")
    replace.add_argument("mountpoint")
    replace.add_argument("key", help="the object's path beneath the mountpoint")
    replace.add_argument("file", help="the new bytes")
    commands.add_parser("down").add_argument("mountpoint")
    arguments = parser.parse_args()

    if arguments.command == "serve":
        return serve(arguments)
    if arguments.command == "up":
        return up(arguments)
    if arguments.command == "put":
        state = load_state(arguments.mountpoint)
        print(put(state["endpoint"], state["bucket"], arguments.key, arguments.file))
        return 0
    return down(arguments)


if __name__ == "__main__":
    sys.exit(main())
