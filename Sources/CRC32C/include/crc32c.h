#ifndef CACHEFS_CRC32C_H
#define CACHEFS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Extends a CRC-32C (Castagnoli, as in iSCSI and ext4) over `length` bytes.
/// Start with 0; pass the previous result to continue over the next bytes.
/// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
uint32_t cachefs_crc32c(uint32_t crc, const void *bytes, size_t length);

/// The same with the table only: the reference the hardware path is tested against.
uint32_t cachefs_crc32c_portable(uint32_t crc, const void *bytes, size_t length);

#endif
