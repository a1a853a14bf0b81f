#!/usr/bin/env bash
# A multi-homed server (issue 15): the server's veth has two addresses of one subnet, the
# kernel's own choice of source being the first; the client's config names the SECOND as the
# endpoint. Replies must come from the second (a sticky source, as wireguard-go's IP_PKTINFO /
# IPV6_PKTINFO), seen on the client's wire with tcpdump, for an IPv4 and an IPv6 underlay.
# wireguard-go as the server is the control for that part.
# Then the second address is removed from the server while the client pings: the server's
# sends from it fail, it falls back to the kernel's choice (its persistent keepalive, resent
# from the first address, makes the client roam there), and traffic recovers.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

SERVER_PORT=51820
CLIENT_PORT=51821

# multihome_setup V6: namespaces C (client) and S (server) on one veth. S has FIRST and SECOND;
# SECOND is added after FIRST (IPv4: a secondary address; IPv6: deprecated), so the kernel
# sources from FIRST unless told otherwise. Writes the configs (the client's endpoint is
# SECOND; the server's peer has no endpoint and a 1 s persistent keepalive) and starts tcpdump
# on the client's veth. Sets NS_C NS_S IF_C IF_S CONF_C CONF_S KEYS FIRST SECOND CLIENT PCAP.
multihome_setup() {
  local v6=$1 plen=24 bracket_l="" bracket_r=""
  NS_C=$(ns_name c)
  NS_S=$(ns_name s)
  IF_C=$(if_name c)
  IF_S=$(if_name s)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  if ((v6)); then
    CLIENT=2001:db8::1 FIRST=2001:db8::2 SECOND=2001:db8::3 plen=64 bracket_l="[" bracket_r="]"
  else
    CLIENT=198.18.0.1 FIRST=198.18.0.2 SECOND=198.18.0.3
  fi
  ns_create "$NS_C" && ns_create "$NS_S" || return 1
  veth_create "$NS_C" veC "$NS_S" veS || return 1
  addr_add "$NS_C" veC "$CLIENT/$plen" || return 1
  addr_add "$NS_S" veS "$FIRST/$plen" || return 1
  if ((v6)); then
    ip -n "$NS_S" addr add "$SECOND/$plen" dev veS nodad preferred_lft 0 || return 1
  else
    addr_add "$NS_S" veS "$SECOND/$plen" || return 1
  fi
  # The test means something only if the kernel, left to itself, would answer from FIRST.
  local src
  src=$(nsx "$NS_S" ip route get "$CLIENT" | sed -n 's/.* src \([^ ]*\).*/\1/p')
  [[ "$src" == "$FIRST" ]] || fail "the server's default source towards $CLIENT is '$src', expected $FIRST" || return 1

  tt_keypair "$KEYS" c && tt_keypair "$KEYS" s || return 1
  CONF_C="$TT_TEST_DIR/$IF_C.conf"
  CONF_S="$TT_TEST_DIR/$IF_S.conf"
  write_conf "$CONF_S" --key "$KEYS/s.key" --address 198.18.1.1/24 --port "$SERVER_PORT" \
    --peer "$KEYS/c.pub" --allowed 198.18.1.2/32 --keepalive 1 || return 1
  write_conf "$CONF_C" --key "$KEYS/c.key" --address 198.18.1.2/24 --port "$CLIENT_PORT" \
    --peer "$KEYS/s.pub" --endpoint "$bracket_l$SECOND$bracket_r:$SERVER_PORT" --allowed 198.18.1.1/32 || return 1

  PCAP="$TT_TEST_DIR/client.pcap"
  ip netns exec "$NS_C" tcpdump -i veC -n -U --immediate-mode -w "$PCAP" "udp port $SERVER_PORT" 2>"$TT_TEST_DIR/tcpdump.log" &
  tt_register_pid $!
  wait_for 10 grep -q "listening on" "$TT_TEST_DIR/tcpdump.log" || fail "tcpdump did not start" || return 1
}

# from_server ADDR: datagrams in the capture that the server sent from ADDR.
from_server() {
  tcpdump -r "$PCAP" -n "src host $1 and udp src port $SERVER_PORT" 2>/dev/null | wc -l
}

# replies_from_second: pings through the tunnel; every server datagram on the client's wire
# came from SECOND, none from FIRST.
replies_from_second() {
  ping_ok "$NS_C" 198.18.1.1 5 || fail "no tunnel to the server's second address" || return 1
  local second first
  sleep 0.5 # the last reply reaches the capture file
  second=$(from_server "$SECOND")
  first=$(from_server "$FIRST")
  tt_log "server datagrams seen by the client: $second from $SECOND (second), $first from $FIRST (first)"
  ((second > 0)) || fail "no datagram from the server's second address $SECOND" || return 1
  ((first == 0)) || fail "$first datagram(s) came from the server's first address $FIRST, not the one the client talks to" || return 1
}

# answers_within SECONDS: one ping through the tunnel answered before SECONDS of wall-clock time
# pass (ping_until counts attempts, each up to a second, so a failure would take far longer).
answers_within() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    nsx "$NS_C" ping -n -q -c 1 -W 1 198.18.1.1 >/dev/null 2>&1 && return 0
  done
  return 1
}

# test_tunctl V6: tunctl as the server.
test_tunctl() {
  multihome_setup "$1" || return 1
  start_tunctl "$NS_S" "$CONF_S" || return 1
  local server_log=$TT_LAST_LOG
  start_tunctl "$NS_C" "$CONF_C" || return 1
  replies_from_second || return 1

  # The second address goes away while the client pings.
  ip netns exec "$NS_C" ping -n -q -i 0.2 -w 25 198.18.1.1 >/dev/null 2>&1 &
  tt_register_pid $!
  sleep 1
  local before t0 t1
  before=$(from_server "$FIRST")
  t0=$(date +%s.%N)
  ip -n "$NS_S" addr del "$SECOND/$([[ $SECOND == *:* ]] && echo 64 || echo 24)" dev veS ||
    fail "could not remove $SECOND" || return 1
  answers_within 15 || fail "traffic did not recover within 15 s of removing $SECOND" || return 1
  t1=$(date +%s.%N)
  tt_log "traffic recovered $(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$t0" "$t1") s after $SECOND was removed"
  ping_ok "$NS_C" 198.18.1.1 3 || fail "pings after the recovery" || return 1
  local after
  after=$(from_server "$FIRST")
  tt_log "server datagrams from $FIRST: $before before the removal, $after after the recovery"
  ((after > before)) || fail "the server did not fall back to its first address" || return 1
  has -F "source address $SECOND is gone" "$server_log" ||
    fail "the server did not log that it forgot $SECOND as a source" || return 1
  local ep
  ep=$(tunctl_peer_field "$NS_C" "$IF_C" "$KEYS/s.pub" endpoint)
  [[ "$ep" == *"$FIRST"*":$SERVER_PORT" ]] || fail "the client's endpoint is $ep, expected the server's $FIRST" || return 1
}

# The control: wireguard-go as the server answers from the second address as well.
test_wggo() {
  multihome_setup "$1" || return 1
  start_wggo "$NS_S" "$IF_S" || return 1
  wggo_configure "$NS_S" "$IF_S" "$CONF_S" || return 1
  start_tunctl "$NS_C" "$CONF_C" || return 1
  replies_from_second
}

test_tunctl_v4() { test_tunctl 0; }
test_tunctl_v6() { test_tunctl 1; }
test_wggo_v4() { test_wggo 0; }
test_wggo_v6() { test_wggo 1; }

tt_require --tunctl wg wireguard-go tcpdump python3 ping
tt_init
run_test "multihome-ipv4-replies-from-second-address-then-recovers" test_tunctl_v4
run_test "multihome-ipv6-replies-from-second-address-then-recovers" test_tunctl_v6
run_test "multihome-ipv4-wireguard-go-control" test_wggo_v4
run_test "multihome-ipv6-wireguard-go-control" test_wggo_v6
tt_summary
