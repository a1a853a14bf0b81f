#!/usr/bin/env bash
# Bulk data: 200 MB each way through the tunnel, SHA-256 compared at the far end.
# A -> B over the tunnel's IPv4 address, B -> A over its IPv6 address (both families carry bulk).
# TT_TRANSFER_MB overrides the size (default 200).
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

MB=${TT_TRANSFER_MB:-200}

test_transfer_both_ways() {
  two_nodes_setup || return 1
  ping_ok "$NS_A" 198.18.1.2 1 || fail "tunnel not up" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" "$MB" || fail "could not make a ${MB} MiB file" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" 300 || fail "A -> B (IPv4 inside)" || return 1
  tcp_transfer "$NS_B" "$NS_A" 2001:db8:1::1 5002 "$f" 300 || fail "B -> A (IPv6 inside)" || return 1
  local rx
  rx=$(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" rx_bytes)
  ((rx >= MB * 1024 * 1024)) || fail "B's rx_bytes ($rx) is less than the ${MB} MiB it received" || return 1
  rm -f "$f"
}

tt_require --tunctl wg socat python3 ss
tt_init
run_test transfer-200MB-each-way test_transfer_both_ways
tt_summary
