// Tests for TunnelCore.
