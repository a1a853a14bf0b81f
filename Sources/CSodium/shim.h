// libsodium: X25519, ChaCha20-Poly1305 (IETF) and XChaCha20-Poly1305. Imported only by TunnelCrypto.
#include <sodium.h>
