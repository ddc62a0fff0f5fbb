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
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
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

// Atomic byte operations on memory shared with other processes (a cache ledger's bitmap):
// a bit set or cleared is never torn, whatever happens to the process around it.
static inline void cachefs_atomic_or_u8(uint8_t *byte, uint8_t bits) { __atomic_fetch_or(byte, bits, __ATOMIC_RELEASE); }
static inline void cachefs_atomic_and_u8(uint8_t *byte, uint8_t bits) { __atomic_fetch_and(byte, bits, __ATOMIC_RELEASE); }
static inline uint8_t cachefs_atomic_load_u8(const uint8_t *byte) { return __atomic_load_n(byte, __ATOMIC_ACQUIRE); }
static inline void cachefs_atomic_store_u32(uint32_t *word, uint32_t value) { __atomic_store_n(word, value, __ATOMIC_RELEASE); }
static inline uint32_t cachefs_atomic_load_u32(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static inline void cachefs_atomic_store_u64(uint64_t *word, uint64_t value) { __atomic_store_n(word, value, __ATOMIC_RELEASE); }
static inline uint64_t cachefs_atomic_load_u64(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static inline int64_t cachefs_atomic_add_i64(int64_t *word, int64_t delta) { return __atomic_add_fetch(word, delta, __ATOMIC_ACQ_REL); }

/// The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD, not in the UAPI headers).
enum { CACHEFS_SCM_MAX_FD = 253 };
/// The most descriptors one message carries, under that limit.
static const int CACHEFS_MAX_FDS_PER_MESSAGE = 250;

/// sendmsg(2) of `length` bytes with `count` descriptors attached (SCM_RIGHTS), to `address` if given
/// (a datagram socket such as systemd's notification socket). Returns the bytes sent, or -1 with errno.
static inline ssize_t cachefs_send_with_fds(int sock, const void *address, socklen_t address_length,
                                            const void *bytes, size_t length, const int *fds, int count) {
    struct iovec vector = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_name = (void *)address;
    message.msg_namelen = address_length;
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    char control[CMSG_SPACE(sizeof(int) * CACHEFS_SCM_MAX_FD)];
    if (count > 0) {
        if (count > CACHEFS_SCM_MAX_FD) { errno = EINVAL; return -1; }
        memset(control, 0, sizeof control);
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
    }
    ssize_t sent;
    do { sent = sendmsg(sock, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent;
}

/// recvmsg(2) into `bytes`, taking up to `capacity` descriptors (close-on-exec) into `fds` and their
/// number into `*count`. Returns the bytes received (0 at end of stream), or -1 with errno.
static inline ssize_t cachefs_receive_with_fds(int sock, void *bytes, size_t length, int *fds, int capacity, int *count) {
    struct iovec vector = { .iov_base = bytes, .iov_len = length };
    struct msghdr message;
    char control[CMSG_SPACE(sizeof(int) * CACHEFS_SCM_MAX_FD)];
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    ssize_t received;
    do { received = recvmsg(sock, &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    *count = 0;
    if (received < 0) return received;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header != NULL; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        int carried = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *carriedFDs = (int *)CMSG_DATA(header);
        for (int i = 0; i < carried; i++) {
            if (*count < capacity) fds[(*count)++] = carriedFDs[i]; else close(carriedFDs[i]);
        }
    }
    if (message.msg_flags & MSG_CTRUNC) { errno = EMSGSIZE; return -1; }
    return received;
}

/// prctl(PR_SET_PDEATHSIG): the signal this process gets when its parent dies.
static inline void cachefs_set_parent_death_signal(int signal) { prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0); }

/// SOCK_CLOEXEC and SOCK_SEQPACKET for socketpair(2)/socket(2) (Glibc's Swift overlay types them awkwardly).
static const int CACHEFS_SOCK_STREAM_CLOEXEC = SOCK_STREAM | SOCK_CLOEXEC;
static const int CACHEFS_SOCK_DGRAM_CLOEXEC = SOCK_DGRAM | SOCK_CLOEXEC;

#endif
