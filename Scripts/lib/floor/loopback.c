// Sends MIB mebibytes over a loopback TCP connection in 1 MiB writes and reads
// (one buffer reused on each side: no allocation, no checksum, no HTTP), and
// prints the CPU seconds both ends used: the least any peer transfer costs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    long mebibytes = argc > 1 ? atol(argv[1]) : 2048;
    const size_t chunk = 1 << 20;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, length) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&address, &length)) { perror("listen"); return 1; }
    char *buffer = malloc(chunk);
    memset(buffer, 1, chunk);
    pid_t sender = fork();
    if (sender == 0) {
        int connection = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(connection, (struct sockaddr *)&address, length)) { perror("connect"); _exit(1); }
        for (long i = 0; i < mebibytes; i++)
            for (size_t sent = 0; sent < chunk;) {
                ssize_t n = write(connection, buffer + sent, chunk - sent);
                if (n <= 0) { perror("write"); _exit(1); }
                sent += n;
            }
        _exit(0);
    }
    int connection = accept(listener, NULL, NULL);
    long received = 0;
    ssize_t n;
    while ((n = read(connection, buffer, chunk)) > 0) received += n;
    int status;
    waitpid(sender, &status, 0);
    if (received != mebibytes * (long)chunk) { fprintf(stderr, "received %ld bytes\n", received); return 1; }
    struct rusage self, child;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &child);
    printf("%.3f\n", seconds(self.ru_utime) + seconds(self.ru_stime) + seconds(child.ru_utime) + seconds(child.ru_stime));
    return 0;
}
