/* Scenario 18's reader: reads MOUNTED in 1 MiB reads from start to end, over and over, comparing every read with
 * the same bytes of SOURCE, until STOPFILE exists. "held" keeps one descriptor open for all its passes; "reopen"
 * opens the file afresh for every read (open, pread, close), so that every read asks the daemon (an open answered
 * by whichever daemon serves the mount, then a passthrough or FUSE read).
 *
 * Prints one JSON object: reads, bytes, failures (the first one's text), maxGap (the longest time between two
 * consecutive read completions, the first counted from the start) and every gap over 1 ms as [start, end] in
 * CLOCK_MONOTONIC seconds (the clock time.monotonic() reads, the same inside a container).
 *
 *     continuity_reader MOUNTED SOURCE STOPFILE held|reopen [MAX_SECONDS]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define MAX_GAPS 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MOUNTED SOURCE STOPFILE held|reopen [MAX_SECONDS]\n", argv[0]);
        return 2;
    }
    const char *mounted = argv[1], *stopfile = argv[3];
    int reopen = strcmp(argv[4], "reopen") == 0;
    double limit = argc > 5 ? atof(argv[5]) : 600;
    int source = open(argv[2], O_RDONLY);
    if (source < 0) {
        perror(argv[2]);
        return 2;
    }
    off_t size = lseek(source, 0, SEEK_END);
    char *got = malloc(CHUNK), *want = malloc(CHUNK);
    static double gaps[MAX_GAPS][2];
    int ngaps = 0, held = -1;
    long reads = 0, failures = 0;
    long long bytes = 0;
    char failure[256] = "";
    double start = now(), last = start, max_gap = 0;
    off_t offset = 0;
    while (access(stopfile, F_OK) != 0 && last - start < limit) {
        int fd = held;
        if (fd < 0) fd = open(mounted, O_RDONLY);
        ssize_t n = fd < 0 ? -1 : pread(fd, got, CHUNK, offset);
        int error = errno;
        if (reopen && fd >= 0) close(fd);
        else if (!reopen) held = fd;
        double done = now();
        ssize_t expected = pread(source, want, CHUNK, offset);
        if (n != expected || memcmp(got, want, n > 0 ? n : 0) != 0) {
            if (failures++ == 0)
                snprintf(failure, sizeof failure, n < 0 ? "read at %lld failed: %s" : "wrong bytes at %lld%s",
                         (long long)offset, n < 0 ? strerror(error) : "");
            if (fd < 0) usleep(1000);
        } else {
            bytes += n;
        }
        reads++;
        double gap = done - last;
        if (gap > max_gap) max_gap = gap;
        if (gap > 0.001 && ngaps < MAX_GAPS) {
            gaps[ngaps][0] = last;
            gaps[ngaps++][1] = done;
        }
        last = done;
        offset = n > 0 && offset + n < size ? offset + n : 0;
    }
    printf("{\"reads\": %ld, \"bytes\": %lld, \"failures\": %ld, \"failure\": \"%s\", \"maxGap\": %.6f, "
           "\"start\": %.6f, \"end\": %.6f, \"gaps\": [", reads, bytes, failures, failure, max_gap, start, last);
    for (int i = 0; i < ngaps; i++) printf("%s[%.6f, %.6f]", i ? ", " : "", gaps[i][0], gaps[i][1]);
    printf("]}\n");
    return 0;
}
