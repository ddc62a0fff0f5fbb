#include "crc32c.h"
#include <string.h>

// Reflected Castagnoli polynomial.
#define POLY 0x82F63B78u

static uint32_t table[256];

__attribute__((constructor)) static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1u)));
        table[i] = c;
    }
}

static uint32_t crc32c_table(uint32_t crc, const unsigned char *p, size_t n) {
    while (n--) crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

// One crc32 instruction has a latency of 3 cycles but a throughput of 1 a
// cycle, so one dependent chain runs at a third of the instruction's speed.
// Long buffers are therefore cut into three adjacent lanes of LANE bytes whose
// CRCs run interleaved and are joined afterwards: the CRC of A followed by B is
// the CRC of A shifted over |B| zero bytes, xor the CRC of B from zero.
#define LANE 4096

// shift_by_lane[k][b]: the register value (b << 8k) advanced over LANE zero bytes.
// The shift is linear, so a whole register shifts as the xor of its four bytes' entries.
static uint32_t shift_by_lane[4][256];

__attribute__((target("sse4.2")))
static uint32_t advance_over_zeros(uint32_t crc, size_t n) {
    uint64_t c = crc;
    for (size_t i = 0; i < n / 8; i++) c = _mm_crc32_u64(c, 0);
    return (uint32_t)c;
}

__attribute__((constructor)) static void build_shift_tables(void) {
    if (!__builtin_cpu_supports("sse4.2")) return;
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) shift_by_lane[k][b] = advance_over_zeros(b << (8 * k), LANE);
}

static inline uint32_t shift_over_lane(uint32_t crc) {
    return shift_by_lane[0][crc & 0xFF] ^ shift_by_lane[1][(crc >> 8) & 0xFF] ^
           shift_by_lane[2][(crc >> 16) & 0xFF] ^ shift_by_lane[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); n--; }
    while (n >= 3 * LANE) {
        uint64_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < LANE; i += 8) {
            uint64_t v0, v1, v2;
            memcpy(&v0, p + i, 8); memcpy(&v1, p + LANE + i, 8); memcpy(&v2, p + 2 * LANE + i, 8);
            c = _mm_crc32_u64(c, v0); c1 = _mm_crc32_u64(c1, v1); c2 = _mm_crc32_u64(c2, v2);
        }
        c = shift_over_lane(shift_over_lane((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * LANE; n -= 3 * LANE;
    }
    while (n >= 8) { uint64_t v; memcpy(&v, p, 8); c = _mm_crc32_u64(c, v); p += 8; n -= 8; }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t cachefs_crc32c_portable(uint32_t crc, const void *bytes, size_t length) {
    return ~crc32c_table(~crc, bytes, length);
}

uint32_t cachefs_crc32c(uint32_t crc, const void *bytes, size_t length) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_sse42(crc, bytes, length);
#endif
    return ~crc32c_table(crc, bytes, length);
}
