// Tests for TunnelCrypto.
