#ifndef CACHEFS_CFUSE_SHIM_H
#define CACHEFS_CFUSE_SHIM_H

// The libfuse 3 low-level API, at the 3.12 level (fuse_loop_config objects).
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

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

#endif
