#!/usr/bin/env bash
# Any MTU from 1280 to 65535 (issue 14, item 1): set in the config, or changed at run time with
# `ip link set mtu` on both ends while traffic runs. Jumbo packets cross whole (ping -M do), a TCP
# transfer keeps its hash, and a packet too large for any UDP datagram is dropped and counted as
# packet_too_large: the daemon never dies. Run by Scripts/test with offloads on and off.
# Topology: two_nodes_setup's (Scripts/lib/netns.sh), with the veth's MTU raised to fit.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# mtu_pair TUNNEL_MTU UNDERLAY_MTU: A and B joined by a veth of UNDERLAY_MTU, tunctl up on both
# with MTU = TUNNEL_MTU in the config (none when TUNNEL_MTU is "default"). Sets what
# two_nodes_setup sets.
mtu_pair() {
  local mtu=$1 underlay=$2 opt=()
  [[ "$mtu" == default ]] || opt=(--mtu "$mtu")
  underlay_pair 0 || return 1
  nsx "$NS_A" ip link set veA mtu "$underlay" && nsx "$NS_B" ip link set veB mtu "$underlay" ||
    fail "cannot set the veth MTU to $underlay" || return 1
  PORT_A=51820
  PORT_B=51821
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port "$PORT_A" "${opt[@]}" \
    --peer "$KEYS/b.pub" --endpoint "$U_B:$PORT_B" --allowed 198.18.1.2/32,2001:db8:1::2/128 || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24,2001:db8:1::2/64 --port "$PORT_B" "${opt[@]}" \
    --peer "$KEYS/a.pub" --endpoint "$U_A:$PORT_A" --allowed 198.18.1.1/32,2001:db8:1::1/128 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  LOG_A=$TT_LAST_LOG
  start_tunctl "$NS_B" "$CONF_B" || return 1
  PID_B=$TT_LAST_PID
  LOG_B=$TT_LAST_LOG
  ping_until "$NS_A" 198.18.1.2 10 || fail "tunnel not up" || return 1
}

# big_ping NS DEST SIZE COUNT: COUNT echo requests of SIZE payload bytes, never fragmented by the
# sender (-M do); succeeds when all are answered.
big_ping() {
  local fam=-4
  [[ "$2" == *:* ]] && fam=-6
  nsx "$1" ping "$fam" -n -q -M "do" -s "$3" -c "$4" -i 0.2 -W 2 -w $(($4 + 5)) "$2" >/dev/null 2>&1
}

# link_mtu NS IFACE: the MTU the kernel reports for IFACE.
link_mtu() { nsx "$1" ip -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\) .*/\1/p'; }

# both_alive: both daemons still run (a trap on a large packet kills one with SIGILL).
both_alive() {
  pid_alive "$PID_A" || fail "tunctl A died (log: $LOG_A)" || return 1
  pid_alive "$PID_B" || fail "tunctl B died (log: $LOG_B)" || return 1
}

# MTU 9000 in the config: 8000-byte pings both ways and both families, and a TCP transfer.
test_config_jumbo() {
  mtu_pair 9000 9100 || return 1
  local m
  m=$(link_mtu "$NS_A" "$IF_A")
  [[ "$m" == 9000 ]] || fail "link MTU is $m, the config says 9000" || return 1
  m=$(tunctl_json "$NS_A" "$IF_A" mtu)
  [[ "$m" == 9000 ]] || fail "show --json says mtu $m, expected 9000" || return 1
  big_ping "$NS_A" 198.18.1.2 8000 3 || fail "8000-byte IPv4 ping A -> B at MTU 9000" || return 1
  big_ping "$NS_B" 198.18.1.1 8000 3 || fail "8000-byte IPv4 ping B -> A at MTU 9000" || return 1
  big_ping "$NS_A" 2001:db8:1::2 8000 3 || fail "8000-byte IPv6 ping A -> B at MTU 9000" || return 1
  # The largest packet the MTU allows: 9000 bytes on the TUN (IPv4 20 + ICMP 8 + 8972).
  big_ping "$NS_A" 198.18.1.2 8972 2 || fail "9000-byte IPv4 packet A -> B at MTU 9000" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" 32 || fail "could not make the payload" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" 120 || fail "TCP A -> B at MTU 9000" || return 1
  tcp_transfer "$NS_B" "$NS_A" 2001:db8:1::1 5002 "$f" 120 || fail "TCP B -> A (IPv6) at MTU 9000" || return 1
  rm -f "$f"
  local d
  d=$(($(tunctl_drops "$NS_A" "$IF_A" packet_too_large) + $(tunctl_drops "$NS_B" "$IF_B" packet_too_large)))
  ((d == 0)) || fail "$d packet_too_large drops at MTU 9000, where every packet fits" || return 1
  both_alive
}

# Default MTU, then `ip link set mtu 9000` on both TUNs while pings run both ways (B's are 8000
# bytes, so some arrive before the slots are re-sized), then back to 1420.
test_runtime_change() {
  mtu_pair default 9100 || return 1
  local small="$TT_TEST_DIR/small-ping.txt" large="$TT_TEST_DIR/large-ping.txt" ps pl
  ip netns exec "$NS_A" ping -4 -n -q -i 0.01 -c 500 -s 1200 -W 2 198.18.1.2 >"$small" 2>&1 &
  ps=$!
  tt_register_pid "$ps"
  ip netns exec "$NS_B" ping -4 -n -q -i 0.02 -c 200 -s 8000 -W 2 198.18.1.1 >"$large" 2>&1 &
  pl=$!
  tt_register_pid "$pl"
  sleep 1
  local t0 t1
  t0=$(date +%s.%N)
  nsx "$NS_A" ip link set dev "$IF_A" mtu 9000 && nsx "$NS_B" ip link set dev "$IF_B" mtu 9000 ||
    fail "ip link set mtu 9000" || return 1
  # The daemons notice (exact text: other tests grep it) within a few seconds.
  wait_for 5 grep -q "$IF_A: link MTU changed to 9000" "$LOG_A" || fail "A did not log the new MTU" || return 1
  wait_for 5 grep -q "$IF_B: link MTU changed to 9000" "$LOG_B" || fail "B did not log the new MTU" || return 1
  t1=$(date +%s.%N)
  tt_log "both daemons logged the new MTU $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1") s after ip link set"
  both_alive || return 1
  big_ping "$NS_A" 198.18.1.2 8000 3 || fail "8000-byte ping A -> B after the change" || return 1
  big_ping "$NS_B" 198.18.1.1 8000 3 || fail "8000-byte ping B -> A after the change" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" mtu) == 9000 ]] || fail "show --json does not report MTU 9000" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" 16 || fail "could not make the payload" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" 120 || fail "TCP A -> B after the change" || return 1
  rm -f "$f"
  wait_exit "$ps" 30 || fail "background 1200-byte ping did not finish" || return 1
  wait_exit "$pl" 30 || fail "background 8000-byte ping did not finish" || return 1
  tt_log "during the change, 1200-byte pings: $(grep transmitted "$small")"
  tt_log "during the change, 8000-byte pings: $(grep transmitted "$large")"
  local drop_a drop_b
  drop_a=$(tunctl_drops "$NS_A" "$IF_A" packet_too_large)
  drop_b=$(tunctl_drops "$NS_B" "$IF_B" packet_too_large)
  tt_log "packet_too_large: A $drop_a, B $drop_b"
  # The first packet too long for the old slots makes the daemon re-read the MTU at once: about
  # one 8000-byte packet is lost per end (not the ten a 500 ms link check alone would lose).
  ((drop_a <= 3 && drop_b <= 3)) || fail "too many packets dropped while the slots grew: A $drop_a, B $drop_b" ||
    return 1
  # The small pings never needed the new slots: at most a handful lost to scheduling.
  local sent got
  sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' "$small")
  got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$small")
  ((sent > 0 && got * 10 >= sent * 9)) || fail "1200-byte pings across the change: $got of $sent answered" || return 1
  both_alive || return 1

  # And down again: the slots shrink, full-size packets at 1420 still cross.
  nsx "$NS_A" ip link set dev "$IF_A" mtu 1420 && nsx "$NS_B" ip link set dev "$IF_B" mtu 1420 ||
    fail "ip link set mtu 1420" || return 1
  wait_for 5 grep -q "$IF_A: link MTU changed to 1420" "$LOG_A" || fail "A did not log MTU 1420" || return 1
  wait_for 5 grep -q "$IF_B: link MTU changed to 1420" "$LOG_B" || fail "B did not log MTU 1420" || return 1
  big_ping "$NS_A" 198.18.1.2 1392 3 || fail "1420-byte ping after lowering the MTU" || return 1
  both_alive
}

# MTU 65535 on a 65535-byte veth: a 65028-byte packet crosses whole; a 65528-byte one, which
# would need a 65567-byte datagram (UDP over IPv4 carries 65507), is dropped and counted.
test_maximum_mtu() {
  mtu_pair 65535 65535 || return 1
  [[ $(link_mtu "$NS_A" "$IF_A") == 65535 ]] || fail "link MTU is not 65535" || return 1
  big_ping "$NS_A" 198.18.1.2 65000 2 || fail "65028-byte ping A -> B at MTU 65535" || return 1
  big_ping "$NS_B" 198.18.1.1 65000 2 || fail "65028-byte ping B -> A at MTU 65535" || return 1
  # 65472 bytes in all: the largest packet an IPv4 underlay can carry at this MTU.
  big_ping "$NS_A" 198.18.1.2 65444 2 || fail "65472-byte ping A -> B (the largest carriable)" || return 1
  local before after out sent
  before=$(tunctl_drops "$NS_A" "$IF_A" packet_too_large)
  out=$(nsx "$NS_A" ping -4 -n -q -M "do" -s 65500 -c 3 -i 0.2 -W 1 198.18.1.2 2>&1)
  sent=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' <<<"$out")
  has " 0 received" <<<"$out" || fail "a 65528-byte packet was answered: $out" || return 1
  after=$(tunctl_drops "$NS_A" "$IF_A" packet_too_large)
  tt_log "65528-byte pings: $sent sent, packet_too_large $before -> $after"
  ((sent == 3 && after - before == sent)) ||
    fail "expected each of the $sent uncarriable packets counted once as packet_too_large, got $((after - before))" ||
    return 1
  both_alive || return 1
  big_ping "$NS_A" 198.18.1.2 65000 1 || fail "65028-byte ping after the drops" || return 1
}

tt_require --tunctl wg socat python3 ss ping
tt_init
run_test mtu-9000-config test_config_jumbo
run_test mtu-raised-at-run-time test_runtime_change
run_test mtu-65535 test_maximum_mtu
tt_summary
