#ifndef CACHEFS_CLINUX_SHIM_H
#define CACHEFS_CLINUX_SHIM_H

// Linux interfaces the Glibc module does not export to Swift.
#include <sys/xattr.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <linux/openat2.h>

/// openat2(2), which glibc 2.36 does not wrap: opens `path` below `dirfd` under `resolve` rules.
/// Returns the descriptor, or -1 with errno set.
static inline int cachefs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t resolve) {
    struct open_how how = { .flags = flags, .mode = 0, .resolve = resolve };
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

static const uint64_t CACHEFS_RESOLVE_BENEATH = RESOLVE_BENEATH;
static const uint64_t CACHEFS_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
static const uint64_t CACHEFS_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;

#endif
