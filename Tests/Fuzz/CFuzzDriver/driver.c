// The declaration of LLVMFuzzerRunDriver in include/CFuzzDriver.h is libFuzzer's (linked by
// -sanitize=fuzzer). The helpers below are the targets' own reference arithmetic, in C because the
// fuzzer's flags reach only Swift: left out of the coverage instrumentation, the checks cost a
// fraction of what they did (a third of fuzz-tun's time was comparison callbacks in its checks).
#include "CFuzzDriver.h"

uint32_t fuzz_ones_sum(const uint8_t *bytes, size_t count, uint32_t initial) {
    uint64_t sum = initial;
    size_t index = 0;
    for (; index + 1 < count; index += 2) sum += (uint32_t)bytes[index] << 8 | bytes[index + 1];
    if (index < count) sum += (uint32_t)bytes[index] << 8;
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}

int fuzz_same_bytes(const uint8_t *a, const uint8_t *b, size_t count) {
    for (size_t index = 0; index < count; index++) {
        if (a[index] != b[index]) return 0;
    }
    return 1;
}
