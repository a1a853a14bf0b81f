// flood-send HOST PORT RATE SECONDS < POOL: sends the 148-byte messages of POOL (made by
// `flood.py --pool-only`) round-robin to HOST:PORT over UDP, RATE per second for SECONDS, paced in
// 5 ms steps with one sendmmsg per step (a late step is made up over the next ones), so the generator costs little CPU beside the kernel's
// own per-datagram work (a Python sendto loop could not reach 50,000/s on a loaded 2-core machine).
// Prints {"sent": N, "seconds": S, "rate": R} on stdout. Exit 2 on bad arguments or input.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MESSAGE = 148, MAX_POOL = 65536, MAX_STEP = 1024 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: flood-send HOST PORT RATE SECONDS < POOL\n");
        return 2;
    }
    static unsigned char pool[MAX_POOL][MESSAGE];
    size_t count = fread(pool, MESSAGE, MAX_POOL, stdin);
    if (count == 0) {
        fprintf(stderr, "flood-send: no messages on stdin\n");
        return 2;
    }
    struct sockaddr_storage address;
    socklen_t length;
    memset(&address, 0, sizeof address);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
    int port = atoi(argv[2]);
    if (inet_pton(AF_INET, argv[1], &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        length = sizeof *v4;
    } else if (inet_pton(AF_INET6, argv[1], &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        length = sizeof *v6;
    } else {
        fprintf(stderr, "flood-send: %s is not an IP address\n", argv[1]);
        return 2;
    }
    long rate = atol(argv[3]);
    double seconds = atof(argv[4]);
    const double step = 0.005;
    int perStep = (int)(rate * step + 0.5);
    if (perStep < 1 || perStep > MAX_STEP / 4 || seconds <= 0 || seconds > 3600) {
        fprintf(stderr, "flood-send: RATE must be 200..51200 and SECONDS 0..3600\n");
        return 2;
    }
    int fd = socket(address.ss_family, SOCK_DGRAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, length) != 0) {
        perror("flood-send: socket");
        return 2;
    }
    static struct mmsghdr headers[MAX_STEP];
    static struct iovec vectors[MAX_STEP];
    double start = now(), deadline = start + seconds, next = start;
    long sent = 0, lost = 0;
    size_t index = 0;
    for (;;) {
        double t = now();
        if (t >= deadline) break;
        if (t < next) {
            double wait = next - t;
            struct timespec sleep = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
            nanosleep(&sleep, NULL);
            continue;
        }
        // What the rate calls for by now, at most MAX_STEP at once: a late wake-up is made up
        // in the next few steps, never in one long burst.
        next += step;
        long due = (long)((t - start) * (double)rate) + perStep - sent - lost;
        int batch = due > MAX_STEP ? MAX_STEP : (int)due;
        if (batch <= 0) continue;
        for (int i = 0; i < batch; i++) {
            vectors[i].iov_base = pool[index];
            vectors[i].iov_len = MESSAGE;
            memset(&headers[i], 0, sizeof headers[i]);
            headers[i].msg_hdr.msg_iov = &vectors[i];
            headers[i].msg_hdr.msg_iovlen = 1;
            index = (index + 1) % count;
        }
        // Datagrams the socket buffer will not take are lost, as on a congested link.
        int done = sendmmsg(fd, headers, (unsigned)batch, 0);
        if (done > 0) sent += done;
        lost += batch - (done > 0 ? done : 0);
    }
    double elapsed = now() - start;
    printf("{\"sent\": %ld, \"refused\": %ld, \"seconds\": %.2f, \"rate\": %.0f}\n", sent, lost, elapsed,
        (double)sent / elapsed);
    return 0;
}
