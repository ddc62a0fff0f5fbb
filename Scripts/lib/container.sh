# A Debian 12 root booted with systemd in systemd-nspawn: a real service
# manager for the tests (SystemdTests) and the container measurements.
# Source after Scripts/lib/common.sh. Functions return non-zero with a reason on
# standard error; they never exit the caller.

# The debootstrapped root, kept between runs; a root without the marker is incomplete.
CONTAINER_BASE=${CACHEFS_CONTAINER_BASE:-/var/cache/cachefs-test/bookworm-systemd}
CONTAINER_BASE_MARKER=.cachefs-base-complete

# Makes sure systemd-nspawn and debootstrap are installed and the base root is complete,
# debootstrapping it (about 40 s with a network) when it is missing or incomplete.
# On failure, CONTAINER_UNAVAILABLE says why.
ensure_container_base() {
    if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap; } >/dev/null 2>&1; then
            CONTAINER_UNAVAILABLE="no systemd-nspawn or debootstrap, and apt-get cannot install systemd-container and debootstrap"
            return 1
        fi
    fi
    [ -e "$CONTAINER_BASE/$CONTAINER_BASE_MARKER" ] && return 0
    echo "==> debootstrap bookworm (systemd, fuse3) into $CONTAINER_BASE"
    rm -rf "$CONTAINER_BASE"
    mkdir -p "$(dirname "$CONTAINER_BASE")"
    local log=$CONTAINER_BASE.debootstrap.log
    if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,fuse3 bookworm "$CONTAINER_BASE" \
            http://deb.debian.org/debian >"$log" 2>&1; then
        CONTAINER_UNAVAILABLE="debootstrap failed (is deb.debian.org reachable?): $(tail -n 1 "$log")"
        rm -rf "$CONTAINER_BASE"
        return 1
    fi
    touch "$CONTAINER_BASE/$CONTAINER_BASE_MARKER"
}

# prepare_container_tests STAGE: what SystemdTests and ContainerImageTests boot. Exports
# CACHEFS_CONTAINER_BASE and CACHEFS_INSTALL_STAGE (Scripts/install's files, release build,
# under STAGE), or CACHEFS_CONTAINER_SKIP with the reason, which it prints.
prepare_container_tests() {
    local stage=$1
    if ! ensure_container_base; then
        echo "SKIP: the container tests cannot run here: $CONTAINER_UNAVAILABLE"
        export CACHEFS_CONTAINER_SKIP=$CONTAINER_UNAVAILABLE
        return 0
    fi
    echo "==> release build for the container tests: DESTDIR=$stage Scripts/install"
    rm -rf "$stage"
    DESTDIR=$stage Scripts/install >/dev/null
    export CACHEFS_CONTAINER_BASE=$CONTAINER_BASE CACHEFS_INSTALL_STAGE=$stage
}

# Stops the containers of tests that died before their own cleanup, and deletes their roots.
stop_test_containers() {
    local pidfile
    for pidfile in /tmp/cachefs-test-container-*/nspawn.pid; do
        [ -e "$pidfile" ] || continue
        container_stop "$(cat "$pidfile")"
        rm -rf "$(dirname "$pidfile")"
    done
}

# Closes every descriptor above 2 that this shell inherited. A test runner may wait for one
# to close (Foundation's Process does) before it sees the shell exit, and a container or a
# daemon started from here would hold it open for as long as it lives.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# container_boot ROOT LOG [NSPAWN_OPTION...]: boots ROOT in the background (console to LOG;
# extra systemd-nspawn options such as --bind=HOST:INSIDE) and waits until systemd inside
# reports the boot finished. Prints "NSPAWN_PID INIT_PID".
container_boot() {
    local root=$1 log=$2 nspawn init="" _
    shift 2
    # setsid: the container outlives the shell that started it; it is stopped by PID.
    (
        close_inherited_fds
        exec setsid systemd-nspawn -D "$root" --keep-unit --register=no --bind=/dev/fuse \
            --capability=CAP_SYS_ADMIN --console=pipe "$@" -b </dev/null >>"$log" 2>&1
    ) &
    nspawn=$!
    # The container's init is the child of systemd-nspawn that has become systemd (earlier
    # children are still in the host's namespaces, where nsenter would find no systemd).
    for _ in $(seq 300); do
        init=$(pgrep -P "$nspawn" -x systemd || true)
        [ -n "$init" ] && break
        kill -0 "$nspawn" 2>/dev/null || { echo "systemd-nspawn exited: $(tail -n 3 "$log")" >&2; return 1; }
        sleep 0.1
    done
    [ -n "$init" ] || { echo "no init process under systemd-nspawn $nspawn" >&2; container_stop "$nspawn"; return 1; }
    # Until systemd has its bus, systemctl fails at once; "degraded" (a unit failed) still means booted.
    local state="" deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        state=$(timeout 120 nsenter -t "$init" -a systemctl is-system-running --wait 2>&1 || true)
        case "$state" in running|degraded) break ;; esac
        sleep 0.2
    done
    case "$state" in
        running|degraded) ;;
        *) echo "container did not finish booting: $state" >&2; container_stop "$nspawn"; return 1 ;;
    esac
    echo "$nspawn $init"
}

# container_exec INIT_PID COMMAND...: runs COMMAND in every namespace of the container, with a clean environment.
container_exec() {
    local init=$1
    shift
    (
        close_inherited_fds
        exec nsenter -t "$init" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
    )
}

# container_stop NSPAWN_PID: powers the container off (systemd-nspawn turns SIGTERM into a
# clean shutdown), and kills it if it has not gone within 30 s. Its mounts go with it.
container_stop() {
    local nspawn=$1 init _
    kill -0 "$nspawn" 2>/dev/null || return 0
    kill -TERM "$nspawn" 2>/dev/null || true
    for _ in $(seq 300); do
        kill -0 "$nspawn" 2>/dev/null || return 0
        sleep 0.1
    done
    init=$(pgrep -P "$nspawn" | head -n 1 || true)
    [ -z "$init" ] || kill -KILL "$init" 2>/dev/null || true
    kill -KILL "$nspawn" 2>/dev/null || true
}
