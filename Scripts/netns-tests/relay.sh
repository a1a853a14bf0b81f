#!/usr/bin/env bash
# udprelay on its own (no tunctl needed): it must pass traffic through unchanged when told to do
# nothing, and visibly lose, duplicate and reorder when told to, reproducibly for one seed —
# otherwise the impairment tests would prove nothing.
#
#   C (client)  veC 198.18.0.1/30 ── veM1 198.18.0.2/30  M (udprelay)  veM2 198.18.0.5/30 ── veS 198.18.0.6/30  S (UDP echo)
#   (and 2001:db8::/64, 2001:db8:1::/64 for the IPv6 case). M does not forward: only the relay links C and S.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

relay_topology() {
  NS_C=$(ns_name c)
  NS_M=$(ns_name m)
  NS_S=$(ns_name s)
  ns_create "$NS_C" && ns_create "$NS_M" && ns_create "$NS_S" || return 1
  veth_create "$NS_C" veC "$NS_M" veM1 && veth_create "$NS_M" veM2 "$NS_S" veS || return 1
  addr_add "$NS_C" veC 198.18.0.1/30 2001:db8::1/64 && addr_add "$NS_M" veM1 198.18.0.2/30 2001:db8::2/64 &&
    addr_add "$NS_M" veM2 198.18.0.5/30 2001:db8:1::5/64 && addr_add "$NS_S" veS 198.18.0.6/30 2001:db8:1::6/64 || return 1
  # The echo answers every datagram to its sender (socat's UDP-LISTEN would stick to the first
  # peer, and UDP-RECVFROM,fork reorders by itself).
  local echo=$TT_ROOT/Scripts/lib/udp-probe.py
  ip netns exec "$NS_S" python3 "$echo" --echo 2001:db8:1::6 7000 120 2>>"$TT_TEST_DIR/echo.log" &
  tt_register_pid $!
  ip netns exec "$NS_S" python3 "$echo" --echo 198.18.0.6 7000 120 2>>"$TT_TEST_DIR/echo.log" &
  tt_register_pid $!
  wait_for 5 sh -c "ip netns exec '$NS_S' ss -Huln 'sport = :7000' | grep -c . | grep -qx 2" ||
    fail "echo servers did not come up" || return 1
}

# start_relay LISTEN TO [ARGS...]: sets RELAY_PID RELAY_LOG.
start_relay() {
  RELAY_LOG="$TT_TEST_DIR/relay.$RANDOM.log"
  ip netns exec "$NS_M" "$UDPRELAY" --listen "$1" --to "$2" "${@:3}" 2>"$RELAY_LOG" &
  RELAY_PID=$!
  tt_register_pid "$RELAY_PID"
  local port=${1##*:}
  wait_for 5 sh -c "ip netns exec '$NS_M' ss -Huln 'sport = :$port' | grep -q ." ||
    fail "udprelay did not bind $1" || return 1
}

stop_relay() {
  kill -TERM "$RELAY_PID"
  wait_exit "$RELAY_PID" 5 || fail "udprelay did not exit within 5 s of SIGTERM" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "udprelay exited $TT_EXIT_CODE" || return 1
  grep -q "to-server: received" "$RELAY_LOG" || fail "udprelay printed no counters" || return 1
}

# probe HOST PORT COUNT: sets PROBE (the JSON) from the client namespace.
probe() {
  PROBE=$(nsx "$NS_C" python3 "$TT_ROOT/Scripts/lib/udp-probe.py" "$1" "$2" "$3") || fail "probe failed" || return 1
  tt_log "probe: ${PROBE:0:120}"
}
jf() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$PROBE" "$1"; }

test_passthrough() {
  relay_topology || return 1
  start_relay 198.18.0.2:6000 198.18.0.6:7000 || return 1
  probe 198.18.0.2 6000 2000 || return 1
  [[ $(jf received) == 2000 && $(jf duplicates) == 0 && $(jf out_of_order) == 0 ]] ||
    fail "a relay with no impairment changed the traffic: $PROBE" || return 1
  stop_relay
}

test_ipv6() {
  relay_topology || return 1
  start_relay '[2001:db8::2]:6000' '[2001:db8:1::6]:7000' || return 1
  probe 2001:db8::2 6000 500 || return 1
  [[ $(jf received) == 500 ]] || fail "IPv6 relay lost packets without being asked to: $PROBE" || return 1
  stop_relay
}

test_loss() {
  relay_topology || return 1
  start_relay 198.18.0.2:6000 198.18.0.6:7000 --loss 0.1 --seed 7 || return 1
  probe 198.18.0.2 6000 2000 || return 1
  # Each echo crosses the relay twice: expect 2000 * 0.9^2 = 1620.
  local r
  r=$(jf received)
  ((r >= 1450 && r <= 1780)) || fail "loss 0.1 both ways: expected ~1620 of 2000 back, got $r" || return 1
  [[ $(jf duplicates) == 0 ]] || fail "loss alone produced duplicates" || return 1
  stop_relay || return 1
  grep -Eq "to-server: received 2000 .* dropped [1-9]" "$RELAY_LOG" ||
    fail "relay counters do not show the drops: $(cat "$RELAY_LOG")"
}

test_duplicate() {
  relay_topology || return 1
  start_relay 198.18.0.2:6000 198.18.0.6:7000 --duplicate 0.1 --seed 7 || return 1
  probe 198.18.0.2 6000 2000 || return 1
  # Expect 2000 * 1.1^2 = 2420 copies of 2000 distinct datagrams.
  local r
  r=$(jf received)
  ((r >= 2250 && r <= 2600)) || fail "duplicate 0.1 both ways: expected ~2420 back, got $r" || return 1
  [[ $(jf unique) == 2000 ]] || fail "duplication lost packets: $PROBE" || return 1
  stop_relay
}

test_reorder() {
  relay_topology || return 1
  start_relay 198.18.0.2:6000 198.18.0.6:7000 --reorder 0.1 --seed 7 || return 1
  probe 198.18.0.2 6000 2000 || return 1
  [[ $(jf received) == 2000 && $(jf unique) == 2000 ]] || fail "reordering lost or duplicated packets: $PROBE" || return 1
  (($(jf out_of_order) >= 50)) || fail "reorder 0.1: expected some hundred inversions, got $(jf out_of_order)" || return 1
  stop_relay
}

test_seed_reproducible() {
  relay_topology || return 1
  local a b c
  start_relay 198.18.0.2:6000 198.18.0.6:7000 --loss 0.2 --duplicate 0.2 --seed 42 || return 1
  probe 198.18.0.2 6000 300 && a=$(jf sequence) && stop_relay || return 1
  start_relay 198.18.0.2:6001 198.18.0.6:7000 --loss 0.2 --duplicate 0.2 --seed 42 || return 1
  probe 198.18.0.2 6001 300 && b=$(jf sequence) && stop_relay || return 1
  start_relay 198.18.0.2:6002 198.18.0.6:7000 --loss 0.2 --duplicate 0.2 --seed 43 || return 1
  probe 198.18.0.2 6002 300 && c=$(jf sequence) && stop_relay || return 1
  [[ "$a" == "$b" ]] || fail "same seed, different outcome: $a vs $b" || return 1
  [[ "$a" != "$c" ]] || fail "different seeds, same outcome: the seed is ignored" || return 1
}

test_bad_arguments() {
  relay_topology || return 1
  local out
  for args in "--listen 198.18.0.2:6000" "--listen 198.18.0.2 --to 198.18.0.6:7000" \
    "--listen 198.18.0.2:6000 --to 198.18.0.6:7000 --loss 1.5" "--listen [2001:db8::2:6000 --to 198.18.0.6:7000"; do
    # shellcheck disable=SC2086 # the argument list is split on purpose
    if out=$(nsx "$NS_M" timeout 5 "$UDPRELAY" $args 2>&1); then
      fail "udprelay $args succeeded" || return 1
    fi
    [[ "$out" == *udprelay:* ]] || fail "udprelay $args: no error message" || return 1
  done
}

tt_require --relay python3 ss
tt_init
run_test relay-passthrough test_passthrough
run_test relay-ipv6 test_ipv6
run_test relay-loss test_loss
run_test relay-duplicate test_duplicate
run_test relay-reorder test_reorder
run_test relay-seed-reproducible test_seed_reproducible
run_test relay-bad-arguments test_bad_arguments
tt_summary
