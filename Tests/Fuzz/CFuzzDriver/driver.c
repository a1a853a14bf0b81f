// The declaration in include/CFuzzDriver.h is libFuzzer's (linked by -sanitize=fuzzer); SwiftPM
// wants a source file in every C target.
#include "CFuzzDriver.h"
