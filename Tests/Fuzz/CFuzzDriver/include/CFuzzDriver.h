#ifndef TUNCTL_CFUZZDRIVER_H
#define TUNCTL_CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry for programs that keep their own main (SwiftPM names each executable's entry
// point itself, so libFuzzer's main is never linked): runs the fuzzer with argv's options.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
