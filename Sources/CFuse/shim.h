#ifndef CACHEFS_CFUSE_SHIM_H
#define CACHEFS_CFUSE_SHIM_H

// The libfuse 3 low-level API, at the 3.12 level (fuse_loop_config objects).
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <stddef.h>
#include <stdint.h>

// Swift cannot import function-like macros or set C bitfields reliably: these
// wrappers are all the C between the project and libfuse (the other C in the
// tree is the CRC-32C of peer transfers, Sources/CRC32C).

static inline int cachefs_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) {
    return fuse_session_loop_mt(se, config);
}

static inline void cachefs_file_info_set_keep_cache(struct fuse_file_info *fi, int keep) {
    fi->keep_cache = keep ? 1 : 0;
}

static inline void cachefs_file_info_set_direct_io(struct fuse_file_info *fi) {
    fi->direct_io = 1;
}

static inline void cachefs_file_info_set_noflush(struct fuse_file_info *fi) {
    fi->noflush = 1;
}

static inline int cachefs_file_info_flags(const struct fuse_file_info *fi) {
    return fi->flags;
}

static inline uint64_t cachefs_file_info_handle(const struct fuse_file_info *fi) {
    return fi->fh;
}

static inline void cachefs_file_info_set_handle(struct fuse_file_info *fi, uint64_t handle) {
    fi->fh = handle;
}

// FUSE passthrough (kernel protocol 7.40) and mmap of direct-I/O opens (7.39), which libfuse 3.14 and its headers predate.
// The daemon negotiates it itself through fuse_session_custom_io: it reads the kernel's
// INIT request and amends libfuse's INIT reply. Layouts from the kernel's uapi/linux/fuse.h.

static const uint32_t CACHEFS_FUSE_INIT = 26;
/// In fuse_init_in.flags: flags2 is meaningful.
static const uint32_t CACHEFS_FUSE_INIT_EXT = 1U << 30;
/// FUSE_PASSTHROUGH (1 << 37) as a bit of flags2.
static const uint32_t CACHEFS_FUSE_PASSTHROUGH_FLAGS2 = 1U << 5;
/// FUSE_DIRECT_IO_ALLOW_MMAP (1 << 36) as a bit of flags2: a direct-I/O open may be mapped (protocol 7.39).
static const uint32_t CACHEFS_FUSE_DIRECT_IO_ALLOW_MMAP_FLAGS2 = 1U << 4;
static const uint32_t CACHEFS_FOPEN_NOFLUSH = 1U << 5;
static const uint32_t CACHEFS_FOPEN_PASSTHROUGH = 1U << 7;

struct cachefs_fuse_in_header {
    uint32_t len;
    uint32_t opcode;
    uint64_t unique;
    uint64_t nodeid;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint16_t total_extlen;
    uint16_t padding;
};

/// The start of fuse_init_in, as far as the flags.
struct cachefs_fuse_init_in {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint32_t flags2;
};

struct cachefs_fuse_out_header {
    uint32_t len;
    int32_t error;
    uint64_t unique;
};

/// The start of fuse_init_out, as far as max_stack_depth (unused[0] in libfuse 3.14's copy).
struct cachefs_fuse_init_out {
    uint32_t major;
    uint32_t minor;
    uint32_t max_readahead;
    uint32_t flags;
    uint16_t max_background;
    uint16_t congestion_threshold;
    uint32_t max_write;
    uint32_t time_gran;
    uint16_t max_pages;
    uint16_t map_alignment;
    uint32_t flags2;
    uint32_t max_stack_depth;
};
_Static_assert(sizeof(struct cachefs_fuse_in_header) == 40, "fuse_in_header");
_Static_assert(offsetof(struct cachefs_fuse_init_out, flags2) == 32, "fuse_init_out.flags2");
_Static_assert(offsetof(struct cachefs_fuse_init_out, max_stack_depth) == 36, "fuse_init_out.max_stack_depth");

struct cachefs_fuse_open_out {
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
};
_Static_assert(sizeof(struct cachefs_fuse_open_out) == 16, "fuse_open_out");

struct cachefs_fuse_backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};

/// FUSE_DEV_IOC_BACKING_OPEN: registers `fd` as a backing file; returns its id, or -1 with errno.
static inline int cachefs_backing_open(int session_fd, int fd) {
    struct cachefs_fuse_backing_map map = { .fd = fd, .flags = 0, .padding = 0 };
    return ioctl(session_fd, _IOW(229, 1, struct cachefs_fuse_backing_map), &map);
}

/// FUSE_DEV_IOC_BACKING_CLOSE: releases a backing id (open passthrough files keep their file).
static inline int cachefs_backing_close(int session_fd, int backing_id) {
    uint32_t id = (uint32_t)backing_id;
    return ioctl(session_fd, _IOW(229, 2, uint32_t), &id);
}

/// Answers an OPEN with FOPEN_PASSTHROUGH and a backing id: the kernel reads the backing file itself.
static inline int cachefs_reply_open_passthrough(fuse_req_t req, uint64_t fh, int32_t backing_id) {
    struct cachefs_fuse_open_out out = {
        .fh = fh, .open_flags = CACHEFS_FOPEN_PASSTHROUGH | CACHEFS_FOPEN_NOFLUSH, .backing_id = backing_id
    };
    struct iovec iov = { .iov_base = &out, .iov_len = sizeof out };
    return fuse_reply_iov(req, &iov, 1);
}

// Taking over a live connection (a new daemon reading an existing /dev/fuse descriptor).
/// FUSE_HAS_RESEND (1 << 39) as a bit of flags2: the kernel can send again the requests a dead daemon had read (Linux 6.9+).
static const uint32_t CACHEFS_FUSE_HAS_RESEND_FLAGS2 = 1U << 7;
/// The notification that asks for it: every request read but not answered goes back to the queue.
static const int32_t CACHEFS_FUSE_NOTIFY_RESEND = 7;
/// The bit the kernel sets in the unique ID of a request it sends again.
static const uint64_t CACHEFS_FUSE_UNIQUE_RESEND = 1ULL << 63;
static const uint32_t CACHEFS_FUSE_FORGET = 2;
static const uint32_t CACHEFS_FUSE_INTERRUPT = 36;
static const uint32_t CACHEFS_FUSE_BATCH_FORGET = 42;
_Static_assert(sizeof(struct cachefs_fuse_out_header) == 16, "fuse_out_header");

#endif
