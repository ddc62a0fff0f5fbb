// Populates MIB mebibytes of fresh anonymous memory in 1 MiB mappings, the way
// cachefs maps new blocks (mmap with MAP_POPULATE), and prints the CPU seconds it took.
// The cost a cold instance pays for every byte it caches; a memory hit pays none.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>

int main(int argc, char **argv) {
    long mebibytes = argc > 1 ? atol(argv[1]) : 2048;
    for (long i = 0; i < mebibytes; i++) {
        void *block = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (block == MAP_FAILED) { perror("mmap"); return 1; }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("%.3f\n", usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6);
    return 0;
}
