#ifndef CACHEFS_CLINUX_SHIM_H
#define CACHEFS_CLINUX_SHIM_H

// Linux interfaces the Glibc module does not export to Swift.
#include <sys/xattr.h>
#include <sys/vfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdint.h>
#include <linux/openat2.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/prctl.h>

/// openat2(2), which glibc 2.36 does not wrap: opens `path` below `dirfd` under `resolve` rules.
/// Returns the descriptor, or -1 with errno set.
static inline int cachefs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t resolve) {
    struct open_how how = { .flags = flags, .mode = 0, .resolve = resolve };
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/// getxattrat(2) and listxattrat(2) (Linux 6.13; the same numbers on every architecture),
/// which glibc 2.36 does not wrap. -1 with errno set (ENOSYS on older kernels).
struct cachefs_xattr_args {
    uint64_t value;
    uint32_t size;
    uint32_t flags;
};

static inline ssize_t cachefs_getxattrat(int dirfd, const char *path, unsigned int at_flags,
                                         const char *name, void *value, size_t size) {
    struct cachefs_xattr_args args = {
        .value = (uint64_t)(uintptr_t)value, .size = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size, .flags = 0
    };
    return syscall(464, dirfd, path, at_flags, name, &args, sizeof args);
}

static inline ssize_t cachefs_listxattrat(int dirfd, const char *path, unsigned int at_flags, char *list, size_t size) {
    return syscall(465, dirfd, path, at_flags, list, size);
}

/// memfd_create(2): an anonymous file in memory, the storage of a file version's cached blocks.
static inline int cachefs_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

static const unsigned int CACHEFS_MFD_CLOEXEC = 0x0001U;

/// Frees a range of a memory file's pages (fallocate PUNCH_HOLE, size kept). 0 or -1 with errno.
static inline int cachefs_punch_hole(int fd, off_t offset, off_t length) {
    return (int)syscall(SYS_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}

/// O_DIRECT, which glibc defines only under _GNU_SOURCE (its value differs by architecture).
static const int CACHEFS_O_DIRECT = __O_DIRECT;

/// splice(2), which glibc declares only under _GNU_SOURCE: moves bytes between a pipe and a
/// socket or file without passing them through user memory. Returns the bytes moved, or -1 with errno.
static inline ssize_t cachefs_splice(int in, int64_t *in_offset, int out, int64_t *out_offset, size_t length, unsigned int flags) {
    return syscall(SYS_splice, in, in_offset, out, out_offset, length, flags);
}

static const unsigned int CACHEFS_SPLICE_F_MOVE = 1;
static const unsigned int CACHEFS_SPLICE_F_MORE = 4;

/// fcntl(F_SETPIPE_SZ) and fcntl(F_GETPIPE_SZ) (_GNU_SOURCE): a pipe's capacity in bytes, or -1 with errno.
static inline int cachefs_set_pipe_size(int fd, int size) { return fcntl(fd, 1031, size); }
static inline int cachefs_pipe_size(int fd) { return fcntl(fd, 1032); }

/// madvise's page-table population (Linux 5.14): maps every page of a range in one call, where
/// touching them would fault once per page. EINVAL on older kernels.
static const int CACHEFS_MADV_POPULATE_READ = 22;
static const int CACHEFS_MADV_POPULATE_WRITE = 23;

static const uint64_t CACHEFS_RESOLVE_BENEATH = RESOLVE_BENEATH;
static const uint64_t CACHEFS_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
static const uint64_t CACHEFS_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;

/// Names the calling thread (prctl PR_SET_NAME; the kernel keeps 15 bytes), as ps -L and /proc show it.
static inline void cachefs_set_thread_name(const char *name) {
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}

#endif
