# Shared by the scripts: dependencies, toolchain, and cleanup of test mounts.

# What building and mounting cachefs needs: libfuse3's headers and pkg-config entry, and fusermount3.
CACHEFS_BUILD_PACKAGES=(fuse3 libfuse3-dev pkg-config)

# Installs the Debian packages cachefs needs to build and mount (CACHEFS_BUILD_PACKAGES), with the
# scripts' own tools and any named here, if any is missing.
ensure_packages() {
    local packages=("${CACHEFS_BUILD_PACKAGES[@]}" attr python3 "$@")
    if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
        echo "==> installing ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
}

# Debian's own python3 refuses pip installs (PEP 668, "externally managed"); the scripts then use a
# virtual environment here, on PATH for everything they start (the tests call `python3` by name).
CACHEFS_PYTHON_ENV=/var/cache/cachefs/python

# Puts that environment first on PATH, once it exists.
use_python_env() {
    if [ -x "$CACHEFS_PYTHON_ENV/bin/python3" ]; then export PATH=$CACHEFS_PYTHON_ENV/bin:$PATH; fi
}

# Installs PyPI packages for python3 on PATH, into CACHEFS_PYTHON_ENV where the system's refuses them.
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1 ||
        python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        ensure_packages python3-venv
        [ -x "$CACHEFS_PYTHON_ENV/bin/python3" ] || python3 -m venv --system-site-packages "$CACHEFS_PYTHON_ENV"
        use_python_env
    fi
    python3 -m pip install -q "$@" 2>&1 | grep -v "WARNING: Running pip as" || true
}

# Installs Python modules from PyPI for the tests, if any is missing. Each argument is a
# module name, or MODULE=REQUIREMENT where pip knows it otherwise (moto.server='moto[server]').
ensure_python_modules() {
    local argument missing=()
    use_python_env
    for argument in "$@"; do
        python3 -c "import ${argument%%=*}" 2>/dev/null || missing+=("${argument#*=}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        pip_install "${missing[@]}"
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

# What the Swift toolchain itself needs on Debian 12 (swift.org's list, less what only the REPL and
# docs use): git to fetch packages, the C and C++ headers and linker, and the runtime's libraries.
SWIFT_TOOLCHAIN_PACKAGES=(binutils git libc6-dev libcurl4 libedit2 libgcc-12-dev libpython3-dev
    libsqlite3-0 libstdc++-12-dev libxml2-dev libncurses-dev libz3-dev tzdata unzip zlib1g-dev)

ensure_swift() {
    if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH=/opt/swift/usr/bin:$PATH
    fi
    command -v swift >/dev/null 2>&1 || { echo "$(basename "$0"): no Swift toolchain (expected at /opt/swift)" >&2; exit 1; }
    ensure_packages "${SWIFT_TOOLCHAIN_PACKAGES[@]}"
}

# Unmounts cachefs mounts under the given prefix and stops their daemons.
unmount_all_under() {
    local prefix=$1 mountpoint
    { grep ' fuse.cachefs ' /proc/mounts || true; } | awk '{print $2}' | while read -r mountpoint; do
        case "$mountpoint" in "$prefix"*) fusermount3 -u -z "$mountpoint" 2>/dev/null || umount -l "$mountpoint" 2>/dev/null || true ;; esac
    done
}
