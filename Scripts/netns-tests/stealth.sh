#!/usr/bin/env bash
# Stealth: a WireGuard port answers nothing it cannot authenticate. 10,000 random datagrams and
# 1,000 truncated or corrupted copies of real captured tunnel packets are sent to A's listen port
# from B's namespace (another socket than B's daemon). Nothing may come back (counted both by the
# sending socket and by tcpdump on B's veth), A must stay up, the tunnel must keep working, and
# A's drop counters must account for the garbage (every drop is a counted reason).
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

test_stealth() {
  two_nodes_setup --no-start || return 1
  # Capture real tunnel packets from the very first handshake on.
  local cap="$TT_TEST_DIR/real.pcap" pcap_pid
  ip netns exec "$NS_A" timeout 60 tcpdump -i veA -n -U -w "$cap" "udp port $PORT_A" 2>"$TT_TEST_DIR/tcpdump-real.log" &
  pcap_pid=$!
  tt_register_pid "$pcap_pid"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump-real.log" || fail "tcpdump did not start" || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  start_tunctl "$NS_B" "$CONF_B" || return 1
  ping_ok "$NS_B" 198.18.1.1 10 || fail "tunnel not up" || return 1
  sleep 0.3
  kill -INT "$pcap_pid"
  wait_exit "$pcap_pid" 5
  local real
  real=$(tcpdump -r "$cap" -n 2>/dev/null | grep -c .)
  ((real >= 6)) || fail "captured only $real real tunnel packets" || return 1

  local drops_before
  drops_before=$(tunctl_drops "$NS_A" "$IF_A") || fail "show --json drops" || return 1

  # Watch for anything A sends to B that is not for B's daemon port.
  local watch="$TT_TEST_DIR/replies.pcap" watch_pid
  ip netns exec "$NS_B" timeout 120 tcpdump -i veB -n -U -w "$watch" \
    "udp and src host 198.18.0.1 and not dst port $PORT_B" 2>"$TT_TEST_DIR/tcpdump-watch.log" &
  watch_pid=$!
  tt_register_pid "$watch_pid"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump-watch.log" || fail "tcpdump (watch) did not start" || return 1

  local out
  out=$(nsx "$NS_B" timeout 120 python3 "$TT_ROOT/Scripts/lib/stealth-fuzz.py" 198.18.0.1 "$PORT_A" "$cap" \
    --random 10000 --mutated 1000 --seed "$RANDOM") || fail "fuzzer failed: $out" || return 1
  tt_log "fuzzer: $out"
  sleep 0.5
  kill -INT "$watch_pid"
  wait_exit "$watch_pid" 5

  local sent replies seen
  sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sent"])' "$out")
  replies=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["replies"])' "$out")
  seen=$(tcpdump -r "$watch" -n 2>/dev/null | grep -c .)
  ((sent >= 10900)) || fail "only $sent garbage datagrams sent" || return 1
  ((replies == 0)) || fail "A answered $replies garbage datagrams" || return 1
  ((seen == 0)) || fail "tcpdump saw $seen packets from A to the fuzzer: $(tcpdump -r "$watch" -n 2>/dev/null | head -3)" || return 1
  pid_alive "$PID_A" || fail "A died under garbage" || return 1
  ping_ok "$NS_B" 198.18.1.1 3 || fail "tunnel broken after the garbage" || return 1
  ping_ok "$NS_A" 198.18.1.2 3 || fail "tunnel broken after the garbage (A -> B)" || return 1

  local drops_after
  drops_after=$(tunctl_drops "$NS_A" "$IF_A")
  tt_log "A's drops: $(tunctl_json "$NS_A" "$IF_A" drops)"
  # Every garbage datagram is a counted drop; allow 10% for datagrams the kernel itself dropped
  # (socket buffer) before the daemon could see them.
  ((drops_after - drops_before >= sent * 9 / 10)) ||
    fail "drops rose by $((drops_after - drops_before)) for $sent garbage datagrams" || return 1
}

tt_require --tunctl wg tcpdump python3 ping
tt_init
run_test stealth-no-reply-to-garbage test_stealth
tt_summary
