#!/usr/bin/env bash
# Three nodes, one hub: A has two [Peer]s and must send each subnet to the right one; and a packet
# whose inner source is not in the sending peer's AllowedIPs is dropped (cryptokey routing).
#
#   B 198.18.0.2/30 ── veAB/veBA ── A 198.18.0.1/30, 198.18.0.5/30 ── veAC/veCA ── C 198.18.0.6/30
#   tunnel: A 198.18.1.1, B 198.18.1.2, C 198.18.1.3 (/24)
#   subnets behind the nodes (one host each, on lo): B 198.18.20.1, C 198.18.30.1
#   A: peer B AllowedIPs 198.18.1.2/32,198.18.20.0/24; peer C 198.18.1.3/32,198.18.30.0/24
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

three_nodes() {
  NS_A=$(ns_name a)
  NS_B=$(ns_name b)
  NS_C=$(ns_name c)
  IF_A=$(if_name a)
  IF_B=$(if_name b)
  IF_C=$(if_name c)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && ns_create "$NS_B" && ns_create "$NS_C" || return 1
  veth_create "$NS_A" veAB "$NS_B" veBA && veth_create "$NS_A" veAC "$NS_C" veCA || return 1
  addr_add "$NS_A" veAB 198.18.0.1/30 && addr_add "$NS_B" veBA 198.18.0.2/30 &&
    addr_add "$NS_A" veAC 198.18.0.5/30 && addr_add "$NS_C" veCA 198.18.0.6/30 || return 1
  # A host in each subnet, as an address on lo (no dummy module in containers).
  addr_add "$NS_B" lo 198.18.20.1/32 && addr_add "$NS_C" lo 198.18.30.1/32 || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b && tt_keypair "$KEYS" c || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  CONF_C="$TT_TEST_DIR/$IF_C.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --endpoint 198.18.0.2:51820 --allowed 198.18.1.2/32,198.18.20.0/24 \
    --peer "$KEYS/c.pub" --endpoint 198.18.0.6:51820 --allowed 198.18.1.3/32,198.18.30.0/24 || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24 --port 51820 \
    --peer "$KEYS/a.pub" --endpoint 198.18.0.1:51820 --allowed 198.18.1.1/32 || return 1
  write_conf "$CONF_C" --key "$KEYS/c.key" --address 198.18.1.3/24 --port 51820 \
    --peer "$KEYS/a.pub" --endpoint 198.18.0.5:51820 --allowed 198.18.1.1/32 || return 1
  start_tunctl "$NS_A" "$CONF_A" && start_tunctl "$NS_B" "$CONF_B" && start_tunctl "$NS_C" "$CONF_C" || return 1
}

tx() { tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/$1.pub" tx_bytes; }

test_routes_each_subnet_to_its_peer() {
  three_nodes || return 1
  ping_ok "$NS_A" 198.18.1.2 1 && ping_ok "$NS_A" 198.18.1.3 1 || fail "tunnels to B and C not up" || return 1
  local b0 c0 b1 c1 b2 c2
  b0=$(tx b) c0=$(tx c)
  ping_ok "$NS_A" 198.18.20.1 10 || fail "A -> B's subnet 198.18.20.1" || return 1
  b1=$(tx b) c1=$(tx c)
  ping_ok "$NS_A" 198.18.30.1 10 || fail "A -> C's subnet 198.18.30.1" || return 1
  b2=$(tx b) c2=$(tx c)
  tt_log "tx to B: $b0 -> $b1 -> $b2; tx to C: $c0 -> $c1 -> $c2"
  # Ten 84-byte pings are > 1000 bytes on the wire; stray keepalives are 32 bytes each.
  ((b1 - b0 >= 1000 && c1 - c0 < 200)) || fail "pings to 198.18.20.1 were not sent to B alone" || return 1
  ((c2 - c1 >= 1000 && b2 - b1 < 200)) || fail "pings to 198.18.30.1 were not sent to C alone" || return 1
}

test_source_not_in_allowed_ips_dropped() {
  three_nodes || return 1
  ping_ok "$NS_B" 198.18.1.1 2 || fail "tunnel B <-> A not up" || return 1
  # B owns 198.18.20.1 but A lists only 198.18.1.2/32 and 198.18.20.0/24 for B: give B an
  # address outside that (198.18.99.1) and send from it. B's own config routes 198.18.1.1 into
  # its tunnel whatever the source, so B encrypts and sends; A must drop after decrypting.
  addr_add "$NS_B" lo 198.18.99.1/32 || return 1
  local cap="$TT_TEST_DIR/a-tun.pcap" pid
  ip netns exec "$NS_A" timeout 30 tcpdump -i "$IF_A" -n -U -w "$cap" 2>"$TT_TEST_DIR/tcpdump.log" &
  pid=$!
  tt_register_pid "$pid"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump.log" || fail "tcpdump did not start" || return 1

  local d0 tx0 d1 tx1
  # The control first: from an allowed source (198.18.20.1) the same ping works.
  nsx "$NS_B" ping -n -q -c 3 -i 0.2 -W 2 -I 198.18.20.1 198.18.1.1 >/dev/null 2>&1 ||
    fail "control: ping from the allowed source 198.18.20.1 failed" || return 1
  d0=$(tunctl_drops "$NS_A" "$IF_A")
  tx0=$(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" tx_bytes)
  if nsx "$NS_B" ping -n -q -c 5 -i 0.2 -W 1 -I 198.18.99.1 198.18.1.1 >/dev/null 2>&1; then
    fail "a ping from 198.18.99.1 (not in B's AllowedIPs at A) got answered"
    return 1
  fi
  sleep 0.5
  d1=$(tunctl_drops "$NS_A" "$IF_A")
  tx1=$(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" tx_bytes)
  kill -INT "$pid"
  wait_exit "$pid" 5
  tt_log "A's drops: $(tunctl_json "$NS_A" "$IF_A" drops); B's tx to A: $tx0 -> $tx1"
  # Five 84-byte pings are 5 * (32 + 96) = 640 bytes on the wire.
  ((tx1 - tx0 >= 5 * 100)) || fail "B did not send the spoofed pings into the tunnel (tx $tx0 -> $tx1)" || return 1
  local leaked allowed
  leaked=$(tcpdump -r "$cap" -n "src host 198.18.99.1" 2>/dev/null | grep -c .)
  allowed=$(tcpdump -r "$cap" -n "src host 198.18.20.1" 2>/dev/null | grep -c .)
  ((allowed >= 3)) || fail "control: A's TUN did not see the allowed pings ($allowed)" || return 1
  ((leaked == 0)) || fail "$leaked packets from 198.18.99.1 reached A's TUN" || return 1
  ((d1 - d0 >= 5)) || fail "A's drop counters rose by $((d1 - d0)) for 5 spoofed packets" || return 1
}

tt_require --tunctl wg tcpdump python3 ping
tt_init
run_test three-nodes-route-per-peer test_routes_each_subnet_to_its_peer
run_test three-nodes-source-check test_source_not_in_allowed_ips_dropped
tt_summary
