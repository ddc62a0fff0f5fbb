// Writes MIB mebibytes into fresh block memory the way cachefs fills new blocks: a memory
// file (memfd) written with pwrite(2) at each block's offset from one reused 1 MiB staging
// buffer. Prints the CPU seconds it took: the cost a cold instance pays for every byte it
// caches, which a memory hit does not pay.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long mebibytes = argc > 1 ? atol(argv[1]) : 2048;
    int memory = memfd_create("floor-block-memory", MFD_CLOEXEC);
    if (memory < 0 || ftruncate(memory, (off_t)mebibytes << 20) != 0) { perror("memfd"); return 1; }
    static char staging[1 << 20];
    memset(staging, 1, sizeof staging);
    for (long i = 0; i < mebibytes; i++) {
        if (pwrite(memory, staging, sizeof staging, (off_t)i << 20) != sizeof staging) { perror("pwrite"); return 1; }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("%.3f\n", usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6);
    return 0;
}
