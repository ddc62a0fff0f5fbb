# Shared by the scripts: dependencies, toolchain, and cleanup of test mounts.

# Installs the Debian packages cachefs needs to build, mount and test, if any is missing.
ensure_packages() {
    local packages=(fuse3 libfuse3-dev pkg-config attr python3 "$@")
    if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
        echo "==> installing ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
}

# Installs Python modules from PyPI for the tests, if any is missing. Each argument is a
# module name, or MODULE=REQUIREMENT where pip knows it otherwise (moto.server='moto[server]').
ensure_python_modules() {
    local argument missing=()
    for argument in "$@"; do
        python3 -c "import ${argument%%=*}" 2>/dev/null || missing+=("${argument#*=}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        python3 -m pip install -q "${missing[@]}" 2>&1 | grep -v "WARNING: Running pip as" || true
    fi
    for argument in "$@"; do
        python3 -c "import ${argument%%=*}" || { echo "$(basename "$0"): cannot import ${argument%%=*}" >&2; exit 1; }
    done
}

ensure_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$(basename "$0"): run as root (FUSE mounts, drop_caches and apt-get need it)" >&2
        exit 1
    fi
}

ensure_swift() {
    if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH=/opt/swift/usr/bin:$PATH
    fi
    command -v swift >/dev/null 2>&1 || { echo "$(basename "$0"): no Swift toolchain (expected at /opt/swift)" >&2; exit 1; }
}

# Unmounts cachefs mounts under the given prefix and stops their daemons.
unmount_all_under() {
    local prefix=$1 mountpoint
    { grep ' fuse.cachefs ' /proc/mounts || true; } | awk '{print $2}' | while read -r mountpoint; do
        case "$mountpoint" in "$prefix"*) fusermount3 -u -z "$mountpoint" 2>/dev/null || umount -l "$mountpoint" 2>/dev/null || true ;; esac
    done
}
