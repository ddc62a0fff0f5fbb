#ifndef CACHEFS_CLINUX_SHIM_H
#define CACHEFS_CLINUX_SHIM_H

// Linux interfaces the Glibc module does not export to Swift.
#include <sys/xattr.h>

#endif
