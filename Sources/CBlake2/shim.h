// libb2 (Debian libb2-dev): BLAKE2s, which libsodium lacks (its generichash is BLAKE2b).
#include <blake2.h>
