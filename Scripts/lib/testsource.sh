# Starts and stops cachefs-testsource, the slow object-store-like FUSE source
# used by the benchmarks and fault tests. Source after Scripts/lib/common.sh.

testsource_bin() {
    echo "${TESTSOURCE_BIN:-$(swift build -c release --show-bin-path)/cachefs-testsource}"
}

# start_testsource ROOT MOUNTPOINT [cachefs-testsource options...]
start_testsource() {
    local root=$1 mountpoint=$2
    shift 2
    mkdir -p "$mountpoint"
    "$(testsource_bin)" "$root" "$mountpoint" "$@" 2>/dev/null &
    local _
    for _ in $(seq 100); do
        grep -q " $mountpoint fuse.testsource " /proc/mounts && return 0
        sleep 0.1
    done
    echo "cachefs-testsource did not mount at $mountpoint" >&2
    return 1
}

# stop_testsource MOUNTPOINT
stop_testsource() {
    local mountpoint=$1 _
    pkill -TERM -f "cachefs-testsource .* $mountpoint( |$)" 2>/dev/null || true
    for _ in $(seq 50); do
        grep -q " $mountpoint fuse.testsource " /proc/mounts || return 0
        sleep 0.1
    done
    fusermount3 -u -z "$mountpoint" 2>/dev/null || true
}
