// Tests for tunctl.
