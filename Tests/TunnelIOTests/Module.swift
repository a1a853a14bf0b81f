// Tests for TunnelIO.
