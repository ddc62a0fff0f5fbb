// Reads the first MIB mebibytes of FILE the way cachefs's prefetch lanes read a source:
// LANES threads, each with its own O_DIRECT descriptor, taking 4 MiB chunks in turn (lane i
// reads chunks i, i + LANES, ...) with one pread each. It keeps nothing: what it costs is
// the source delivering the bytes.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

enum { CHUNK = 4 << 20 };
static const char *path;
static long lanes, chunks;

static void *lane(void *argument) {
    long index = (long)argument;
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    void *buffer;
    if (fd < 0 || posix_memalign(&buffer, 4096, CHUNK) != 0) { perror(path); exit(1); }
    for (long chunk = index; chunk < chunks; chunk += lanes) {
        if (pread(fd, buffer, CHUNK, (off_t)chunk * CHUNK) <= 0) { perror("pread"); exit(1); }
    }
    free(buffer);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: lanes FILE MIB LANES\n"); return 2; }
    path = argv[1];
    lanes = atol(argv[3]);
    chunks = (atol(argv[2]) << 20) / CHUNK;
    pthread_t threads[64];
    if (lanes < 1 || lanes > 64) { fprintf(stderr, "lanes: 1 to 64 lanes\n"); return 2; }
    for (long i = 0; i < lanes; i++) pthread_create(&threads[i], NULL, lane, (void *)i);
    for (long i = 0; i < lanes; i++) pthread_join(threads[i], NULL);
    return 0;
}
