#!/usr/bin/env bash
# Persistent keepalive: with no traffic, B (PersistentKeepalive = 3) sends a 32-byte keepalive
# to A every 3 s; A (no PersistentKeepalive) sends none of its own. Counted with tcpdump on the
# veth over a bounded window.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

INTERVAL=3
WINDOW=15

# count_keepalives PCAP SRC: UDP packets from SRC whose payload is exactly 32 bytes (UDP length 40).
count_keepalives() {
  tcpdump -r "$1" -n "src host $2 and udp[4:2] = 40" 2>/dev/null | grep -c .
}

test_persistent_keepalive() {
  two_nodes_setup --keepalive-b "$INTERVAL" || return 1
  [[ $(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" persistent_keepalive) == "$INTERVAL" ]] ||
    fail "show --json does not report persistent_keepalive=$INTERVAL" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" persistent_keepalive) == 0 ]] ||
    fail "A's persistent_keepalive should be 0" || return 1
  ping_ok "$NS_A" 198.18.1.2 2 || fail "tunnel not up" || return 1
  # Let the passive keepalive that answers the ping traffic (KEEPALIVE_TIMEOUT 10 s) go by.
  sleep 11
  local cap="$TT_TEST_DIR/idle.pcap" pid
  ip netns exec "$NS_A" timeout "$WINDOW" tcpdump -i veA -n -U --immediate-mode -w "$cap" udp 2>"$TT_TEST_DIR/tcpdump.log" &
  pid=$!
  tt_register_pid "$pid"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump.log" || fail "tcpdump did not start" || return 1
  wait_exit "$pid" $((WINDOW + 5)) || fail "tcpdump window did not end" || return 1
  local from_b from_a all
  from_b=$(count_keepalives "$cap" 198.18.0.2)
  from_a=$(count_keepalives "$cap" 198.18.0.1)
  all=$(tcpdump -r "$cap" -n 2>/dev/null | grep -c .)
  tt_log "in ${WINDOW}s idle: $from_b keepalives from B, $from_a from A, $all UDP packets in all"
  tt_log "keepalive intervals from B: $(tcpdump -r "$cap" -n -tt "src host 198.18.0.2 and udp[4:2] = 40" 2>/dev/null |
    awk 'NR > 1 { printf "%.2fs ", $1 - t } { t = $1 }')"
  # A ${WINDOW}s window holds ${WINDOW}/${INTERVAL} = 5 intervals; allow one either way for phase.
  local expect=$((WINDOW / INTERVAL))
  ((from_b >= expect - 1 && from_b <= expect + 1)) ||
    fail "expected $((expect - 1))..$((expect + 1)) keepalives from B, saw $from_b" || return 1
  ((from_a == 0)) || fail "A has no PersistentKeepalive but sent $from_a keepalives while idle" || return 1
  # The spacing itself: every gap within [interval - 0.5 s, interval + 1 s].
  local bad
  bad=$(tcpdump -r "$cap" -n -tt "src host 198.18.0.2 and udp[4:2] = 40" 2>/dev/null |
    awk -v i="$INTERVAL" 'NR > 1 { g = $1 - t; if (g < i - 0.5 || g > i + 1) n++ } { t = $1 } END { print n + 0 }')
  ((bad == 0)) || fail "$bad keepalive gaps outside ${INTERVAL}s -0.5/+1" || return 1
  # And the tunnel still works after idling.
  ping_ok "$NS_B" 198.18.1.1 1 || fail "tunnel dead after idle" || return 1
}

tt_require --tunctl wg tcpdump python3 ping
tt_init
run_test persistent-keepalive test_persistent_keepalive
tt_summary
