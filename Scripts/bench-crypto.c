/*
 * bench-crypto: single-core ChaCha20-Poly1305 (IETF, 96-bit nonce) seal throughput through
 * libsodium, the same AEAD a WireGuard data packet uses. It is the ceiling for any userspace
 * tunnel on this CPU: a tunnel that seals every byte on one core cannot move more than this.
 *
 * Built by Scripts/bench at bench time (cc -O2 bench-crypto.c -lsodium), not part of the package.
 * Usage: bench-crypto SIZE SECONDS
 * Prints one JSON object on stdout. bytes_per_second is plaintext sealed per second of this
 * thread's CPU time: what one core can do, even when other work shares the machine (the bench
 * runs next to compilers). wall_bytes_per_second is per elapsed second, for comparison. The loop
 * stops after SECONDS of CPU time, or 5 x SECONDS + 1 of wall time if the CPU is that contended.
 * The nonce counts up per packet as in the protocol; the buffers are allocated once.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE SECONDS (e.g. %s 1420 2)\n", argv[0], argv[0]);
        return 2;
    }
    char *end = NULL;
    long size = strtol(argv[1], &end, 10);
    if (*end != '\0' || size < 1 || size > 16 * 1024 * 1024) {
        fprintf(stderr, "SIZE must be a byte count from 1 to 16777216, got '%s'\n", argv[1]);
        return 2;
    }
    double seconds = strtod(argv[2], &end);
    if (*end != '\0' || !(seconds > 0.0 && seconds <= 600.0)) {
        fprintf(stderr, "SECONDS must be a number above 0 and at most 600, got '%s'\n", argv[2]);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "sodium_init failed\n");
        return 1;
    }

    unsigned char key[crypto_aead_chacha20poly1305_ietf_KEYBYTES];
    unsigned char nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    crypto_aead_chacha20poly1305_ietf_keygen(key);
    unsigned char *plain = malloc((size_t)size);
    unsigned char *sealed = malloc((size_t)size + crypto_aead_chacha20poly1305_ietf_ABYTES);
    if (plain == NULL || sealed == NULL) {
        fprintf(stderr, "out of memory for %ld-byte buffers\n", size);
        return 1;
    }
    randombytes_buf(plain, (size_t)size);

    /* Check the clock every batch, sized so a batch is far below a millisecond at 64 KB. */
    const uint64_t batch = size >= 16384 ? 8 : 256;
    uint64_t counter = 0, packets = 0;
    unsigned long long sealed_len = 0;
    double wall_start = clock_seconds(CLOCK_MONOTONIC), cpu_start = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    double wall = 0.0, cpu = 0.0;
    do {
        for (uint64_t i = 0; i < batch; i++) {
            counter++;
            /* WireGuard puts the 64-bit little-endian counter after 4 zero bytes. */
            for (int b = 0; b < 8; b++) nonce[4 + b] = (unsigned char)(counter >> (8 * b));
            crypto_aead_chacha20poly1305_ietf_encrypt(sealed, &sealed_len, plain, (unsigned long long)size,
                                                      NULL, 0, NULL, nonce, key);
        }
        packets += batch;
        wall = clock_seconds(CLOCK_MONOTONIC) - wall_start;
        cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    } while (cpu < seconds && wall < 5.0 * seconds + 1.0);

    /* Read the output so the compiler cannot drop the work. */
    unsigned check = 0;
    for (unsigned long long i = 0; i < sealed_len; i += 64) check ^= sealed[i];

    double bytes = (double)packets * (double)size;
    printf("{\"implementation\": \"libsodium %s crypto_aead_chacha20poly1305_ietf_encrypt\", "
           "\"size\": %ld, \"packets\": %llu, \"cpu_seconds\": %.6f, \"wall_seconds\": %.6f, "
           "\"bytes_per_second\": %.0f, \"wall_bytes_per_second\": %.0f, \"check\": %u}\n",
           sodium_version_string(), size, (unsigned long long)packets, cpu, wall, bytes / cpu, bytes / wall, check);
    free(plain);
    free(sealed);
    return 0;
}
