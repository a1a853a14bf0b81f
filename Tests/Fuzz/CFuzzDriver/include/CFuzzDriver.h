#ifndef TUNCTL_CFUZZDRIVER_H
#define TUNCTL_CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry for programs that keep their own main (SwiftPM names each executable's entry
// point itself, so libFuzzer's main is never linked): runs the fuzzer with argv's options.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

// The RFC 1071 ones' complement sum of `count` bytes as big-endian 16-bit words (an odd last byte
// padded with zero), plus `initial`, folded to 16 bits. The targets' reference, not tunctl's.
uint32_t fuzz_ones_sum(const uint8_t *bytes, size_t count, uint32_t initial);

// 1 when the `count` bytes at `a` and `b` are equal, else 0.
int fuzz_same_bytes(const uint8_t *a, const uint8_t *b, size_t count);

#endif
