#!/usr/bin/env python3
"""Checks deploy/Containerfile and deploy/kubernetes.yaml without a container engine or a cluster.

    check_deploy.py validate   schema (kubernetes-validate, bundled schemas, --strict), hadolint,
                               and the facts the two files must agree on with each other and
                               with Scripts/install; prints one line per failed fact, exits 1
    check_deploy.py steps      prints, as JSON, what a container of the image would run: the final
                               stage's RUN commands, its ENTRYPOINT, the DaemonSet's args, and the
                               files its ConfigMap volumes put in the container (path -> text)
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy/Containerfile"
MANIFEST = ROOT / "deploy/kubernetes.yaml"
INSTALL = ROOT / "Scripts/install"
SHUTDOWN_GRACE_DEFAULT = 5  # seconds, cachefs --shutdown-grace


def final_stage():
    """The final stage's instructions, and the build stage's RUN commands."""
    with open(CONTAINERFILE, "rb") as file:  # path= would take any name but Dockerfile for a directory
        structure = DockerfileParser(fileobj=file).structure
    stages, current = [], None
    for instruction in structure:
        if instruction["instruction"] == "FROM":
            current = []
            stages.append(current)
        elif current is not None:
            current.append(instruction)
    return stages[-1], [i["value"] for stage in stages[:-1] for i in stage if i["instruction"] == "RUN"]


def resources():
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in documents}
    return by_kind["Service"], by_kind["DaemonSet"]


def config_files(daemonset):
    """The files the cachefs container's ConfigMap volumes hold: path in the container -> text."""
    config_maps = {d["metadata"]["name"]: d.get("data", {})
                   for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    files = {}
    for mount in cachefs_container(daemonset).get("volumeMounts", []):
        config_map = volumes.get(mount["name"], {}).get("configMap")
        if config_map:
            for key, text in config_maps.get(config_map["name"], {}).items():
                files[f"{mount['mountPath'].rstrip('/')}/{key}"] = text
    return files


def cache_mounts(args, files):
    """(source, mountpoint, capacity in bytes) of each mount the args make: SOURCE MOUNTPOINT --capacity, or
    each storage entry with a cache object in the --spec file (cachefs mount --spec)."""
    spec = option(args, "--spec")
    if spec is None:
        return [(args[1], args[2], parse_size(option(args, "--capacity")))]
    document = json.loads(files.get(spec, "null"))
    storage = document.get("storage", []) if isinstance(document, dict) else document or []
    return [(entry["cache"]["path"], entry["mount_path"], parse_size(entry["cache"]["capacity"]))
            for entry in storage if "cache" in entry]


def beneath(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def cachefs_container(daemonset):
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "cachefs")


def option(args, name):
    """The value of --name=VALUE or --name VALUE in an argument list."""
    for index, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and index + 1 < len(args):
            return args[index + 1]
    return None


def parse_size(text):
    """Kubernetes quantity or cachefs size to bytes (K/M/G/T and Ki/Mi/Gi/Ti as powers of 1024)."""
    match = re.fullmatch(r"([\d.]+)([KMGT])?(i?B?)?", text)
    return int(float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1 if match.group(2) else 1))


def steps():
    stage, _ = final_stage()
    entrypoint = json.loads(next(i["value"] for i in stage if i["instruction"] == "ENTRYPOINT"))
    _, daemonset = resources()
    return {
        "run": [i["value"] for i in stage if i["instruction"] == "RUN"],
        "copy": [i["value"] for i in stage if i["instruction"] == "COPY"],
        "entrypoint": entrypoint,
        "args": cachefs_container(daemonset)["args"],
        "files": config_files(daemonset),
    }


def facts():
    """(description, holds) for everything the files must agree on."""
    service, daemonset = resources()
    pod = daemonset["spec"]["template"]
    container = cachefs_container(daemonset)
    args = container["args"]
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    stage, build_runs = final_stage()
    plan = steps()

    installed = re.search(r'"\$destdir(/\S+/cachefs)"', INSTALL.read_text()).group(1)
    copy_source, copy_target = plan["copy"][0].split()[-2:]
    peers = re.fullmatch(r"dns:([^:]+):(\d+)", option(args, "--peers") or "")
    peer_port = next(p for p in service["spec"]["ports"] if p["name"] == "peers")
    namespace = service["metadata"].get("namespace", "default")
    spec = option(args, "--spec")
    caches = cache_mounts(args, plan["files"])
    mountpoint = caches[0][1] if caches else None
    limit = parse_size(container["resources"]["limits"]["memory"])
    token_file = option(args, "--peer-token-file") or ""
    token_mount = mounts.get(str(Path(token_file).parent), {})
    probe = container["readinessProbe"]["exec"]["command"]
    rolling = daemonset["spec"].get("updateStrategy", {}).get("rollingUpdate", {})
    sockets = mounts.get("/run/cachefs", {})

    return [
        ("the build stage runs Scripts/install into /stage", any(re.search(r"DESTDIR=/stage Scripts/install", r) for r in build_runs)),
        (f"the image copies /stage{installed} to {installed}, where Scripts/install puts it",
         copy_source == "/stage" + installed and copy_target == installed and "--from=build" in plan["copy"][0]),
        ("the ENTRYPOINT is the installed binary", plan["entrypoint"] == [installed]),
        ("the image installs fuse3 (fusermount3, for a daemon that does not run as root)", any("install" in r and re.search(r"\bfuse3\b", r) for r in plan["run"])),
        ("the DaemonSet runs `mount` in the foreground", args[0] == "mount" and "--foreground" in args),
        ("--spec names a file of a ConfigMap the container mounts", spec is None or spec in plan["files"]),
        ("there is a cache mount (SOURCE MOUNTPOINT, or a cache entry in the spec)", bool(caches)),
        ("the Service is headless", service["spec"].get("clusterIP") == "None"),
        ("the Service selects the DaemonSet's pods",
         all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())),
        ("the Service's peers port targets the container's peers port", peer_port["targetPort"] in (ports.get("peers"), "peers")),
        ("--peers is dns:NAME:PORT", peers is not None),
        (f"--peers names the Service ({service['metadata']['name']}.{namespace}.svc.cluster.local:{peer_port['port']})",
         peers is not None and peers.group(1) in (service["metadata"]["name"], f"{service['metadata']['name']}.{namespace}",
                                                   f"{service['metadata']['name']}.{namespace}.svc.cluster.local")
         and int(peers.group(2)) == peer_port["port"]),
        ("--listen serves on the container's peers port", option(args, "--listen") == f"0.0.0.0:{ports.get('peers')}"),
        ("--metrics serves on the container's metrics port", option(args, "--metrics") == f"0.0.0.0:{ports.get('metrics')}"),
        ("the peer token file lies in a mounted Secret",
         "secret" in volumes.get(token_mount.get("name"), {}) and token_mount.get("readOnly") is True),
        ("/dev/fuse comes from the node", volumes.get(mounts.get("/dev/fuse", {}).get("name"), {}).get("hostPath", {}).get("path") == "/dev/fuse"),
        ("every mountpoint propagates to the node (Bidirectional, privileged)",
         all(mounts.get(point, {}).get("mountPropagation") == "Bidirectional"
             and "hostPath" in volumes.get(mounts.get(point, {}).get("name"), {}) for _, point, _ in caches)
         and container["securityContext"].get("privileged") is True),
        ("every source is mounted from the node (at it or above it)",
         all(any(beneath(source, path) and "hostPath" in volumes.get(m["name"], {}) for path, m in mounts.items())
             for source, _, _ in caches)),
        ("the memory limit leaves room above the capacities", limit >= sum(c for _, _, c in caches) + (512 << 20)),
        ("the termination grace outlasts --shutdown-grace",
         pod["spec"].get("terminationGracePeriodSeconds", 30) > float(option(args, "--shutdown-grace") or SHUTDOWN_GRACE_DEFAULT)),
        ("the readiness probe asks the daemon (cachefs stats MOUNTPOINT)", probe == [installed, "stats", mountpoint]),
        ("a rolling update starts the new pod beside the old one, which it takes the mounts over from (maxSurge 1, maxUnavailable 0)",
         daemonset["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
         and rolling.get("maxSurge") in (1, "1") and rolling.get("maxUnavailable") in (0, "0")),
        ("the control and hand-over sockets (/run/cachefs) are a node directory, shared by the old and the new pod",
         volumes.get(sockets.get("name"), {}).get("hostPath", {}).get("path") == "/run/cachefs" and option(args, "--control-socket") is None),
    ]


def validate():
    failures = []
    for command in (["kubernetes-validate", "--strict", "--quiet", str(MANIFEST)], ["hadolint", str(CONTAINERFILE)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{command[0]}: {(result.stdout + result.stderr).strip()}")
    failures += [description for description, holds in facts() if not holds]
    for failure in failures:
        print("FAILED:", failure)
    print(f"{len(facts()) + 2 - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["validate"]:
        sys.exit(validate())
    if sys.argv[1:] == ["steps"]:
        print(json.dumps(steps()))
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
