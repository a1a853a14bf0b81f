#!/usr/bin/env bash
# Two nodes, one tunnel: IPv4 and IPv6 inside the tunnel, over an IPv4 and over an IPv6 underlay,
# ping both ways; `tunctl show --json` reports what happened. Topology: two_nodes_setup in
# Scripts/lib/netns.sh.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# pings every tunnel address both ways, then checks the JSON view of A.
check_tunnel() {
  local underlay=$1
  # The tunnel exists with the configured addresses and MTU, and routes into it.
  nsx "$NS_A" ip -o addr show dev "$IF_A" | has "198.18.1.1/24" || fail "$IF_A lacks 198.18.1.1/24" || return 1
  nsx "$NS_A" ip -o addr show dev "$IF_A" | has "2001:db8:1::1/64" || fail "$IF_A lacks 2001:db8:1::1/64" || return 1
  nsx "$NS_A" ip route get 198.18.1.2 | has "dev $IF_A" || fail "no IPv4 route to the peer via $IF_A" || return 1
  nsx "$NS_A" ip -6 route get 2001:db8:1::2 | has "dev $IF_A" || fail "no IPv6 route to the peer via $IF_A" || return 1

  ping_ok "$NS_A" 198.18.1.2 || fail "IPv4 ping A -> B through the tunnel ($underlay underlay)" || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "IPv4 ping B -> A through the tunnel ($underlay underlay)" || return 1
  ping_ok "$NS_A" 2001:db8:1::2 || fail "IPv6 ping A -> B through the tunnel ($underlay underlay)" || return 1
  ping_ok "$NS_B" 2001:db8:1::1 || fail "IPv6 ping B -> A through the tunnel ($underlay underlay)" || return 1
  # Large packets: a full-MTU ping must cross (padding and MTU handling), v4 and v6.
  nsx "$NS_A" ping -4 -n -q -c 2 -W 2 -M "do" -s $((1420 - 28)) 198.18.1.2 >/dev/null ||
    fail "1420-byte IPv4 packet did not cross" || return 1
  nsx "$NS_A" ping -6 -n -q -c 2 -W 2 -M "do" -s $((1420 - 48)) 2001:db8:1::2 >/dev/null ||
    fail "1420-byte IPv6 packet did not cross" || return 1

  # The packets really went through the tunnel: the underlay carried only UDP between the ports.
  local json hs rx tx ep mtu
  json=$(tunctl_json "$NS_A" "$IF_A") || fail "show --json failed" || return 1
  tt_log "show --json: $json"
  [[ $(tunctl_json "$NS_A" "$IF_A" interface) == "$IF_A" ]] || fail "interface name in JSON" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" public_key) == "$(cat "$KEYS/a.pub")" ]] || fail "public_key in JSON is not A's" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" listen_port) == "$PORT_A" ]] || fail "listen_port in JSON" || return 1
  mtu=$(tunctl_json "$NS_A" "$IF_A" mtu)
  [[ "$mtu" == 1420 ]] || fail "default MTU should be 1420, JSON says $mtu" || return 1
  nsx "$NS_A" ip -o link show dev "$IF_A" | has "mtu 1420" || fail "link MTU is not 1420" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" preshared_key) == true ]] || fail "preshared_key should be true" || return 1
  hs=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  ((hs > $(date +%s) - 60)) || fail "latest_handshake $hs is not recent" || return 1
  rx=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" rx_bytes)
  tx=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" tx_bytes)
  ((rx > 1000 && tx > 1000)) || fail "rx_bytes=$rx tx_bytes=$tx after a dozen pings" || return 1
  ep=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint)
  [[ "$ep" == "$U_B:$PORT_B" ]] || fail "endpoint is $ep, expected $U_B:$PORT_B" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips) == "198.18.1.2/32,2001:db8:1::2/128" ]] ||
    fail "allowed_ips: $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips)" || return 1
  # The human view names the interface and the peer.
  nsx "$NS_A" "$TUNCTL" show "$IF_A" | has "$(cat "$KEYS/b.pub")" || fail "tunctl show (human) does not list the peer" || return 1
}

# Encrypted, not just forwarded: a marker in the inner payload is visible on the TUN (the
# control: the check can see it) and never on the veth. --immediate-mode: without it libpcap hands
# packets over in blocks, up to a second late, and those still held when tcpdump is stopped are lost.
check_encrypted() {
  local cap_u="$TT_TEST_DIR/underlay.pcap" cap_t="$TT_TEST_DIR/tun.pcap" pu pt
  ip netns exec "$NS_A" timeout 15 tcpdump -i veA -n -U --immediate-mode -w "$cap_u" udp 2>"$TT_TEST_DIR/tcpdump-u.log" &
  pu=$!
  tt_register_pid "$pu"
  ip netns exec "$NS_A" timeout 15 tcpdump -i "$IF_A" -n -U --immediate-mode -w "$cap_t" 2>"$TT_TEST_DIR/tcpdump-t.log" &
  pt=$!
  tt_register_pid "$pt"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump-u.log" || fail "tcpdump on veA did not start" || return 1
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump-t.log" || fail "tcpdump on $IF_A did not start" || return 1
  # ping fills its payload with this 16-byte pattern: "tunctlmarker!!!!".
  nsx "$NS_A" ping -n -q -c 3 -i 0.2 -W 2 -p 74756e63746c6d61726b657221212121 198.18.1.2 >/dev/null ||
    fail "patterned ping" || return 1
  sleep 0.5
  kill -INT "$pu" "$pt"
  wait_exit "$pu" 5
  wait_exit "$pt" 5
  local n
  n=$(tcpdump -r "$cap_u" -n 2>/dev/null | grep -c .)
  ((n >= 6)) || fail "expected >= 6 UDP packets on the underlay, saw $n" || return 1
  grep -aq "tunctlmarker" "$cap_t" || fail "control failed: marker not seen on the TUN itself" || return 1
  if grep -aq "tunctlmarker" "$cap_u"; then
    fail "the inner payload appears in clear on the underlay"
    return 1
  fi
}

test_v4_underlay() {
  two_nodes_setup || return 1
  check_tunnel IPv4 && check_encrypted
}

test_v6_underlay() {
  two_nodes_setup --v6-underlay || return 1
  check_tunnel IPv6 || return 1
  # The underlay really was IPv6: no IPv4 UDP between the nodes while pinging.
  local cap="$TT_TEST_DIR/v6.pcap" pid n4 n6
  ip netns exec "$NS_A" timeout 10 tcpdump -i veA -n -U --immediate-mode -w "$cap" udp 2>"$TT_TEST_DIR/tcpdump.log" &
  pid=$!
  tt_register_pid "$pid"
  wait_for 5 grep -q "listening" "$TT_TEST_DIR/tcpdump.log" || fail "tcpdump did not start" || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "ping during capture" || return 1
  sleep 0.5
  kill -INT "$pid"
  wait_exit "$pid" 5
  n4=$(tcpdump -r "$cap" -n ip 2>/dev/null | grep -c .)
  n6=$(tcpdump -r "$cap" -n ip6 2>/dev/null | grep -c .)
  ((n4 == 0 && n6 >= 6)) || fail "IPv6 underlay: saw $n4 IPv4 and $n6 IPv6 UDP packets" || return 1
}

# A firewall in A that drops tunctl's datagrams to B (its sends fail with EPERM): the pings are
# lost, each counted as udp_send_refused (they once vanished uncounted with the rest of the
# batch); the daemon keeps running and traffic flows again once the rule goes.
test_send_refused_counted() {
  two_nodes_setup || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "tunnel not up" || return 1
  nsx "$NS_A" nft -f - <<EOF || fail "nft rule in A" || return 1
table inet tt_block {
  chain out { type filter hook output priority 0; udp dport $PORT_B counter drop; }
}
EOF
  nsx "$NS_A" ping -4 -n -q -c 20 -i 0.05 -W 1 198.18.1.2 >/dev/null 2>&1 && {
    fail "pings crossed with A's datagrams to B dropped"
    return 1
  }
  local refused
  refused=$(tunctl_drops "$NS_A" "$IF_A" '^udp_send_refused$')
  tt_log "20 pings with A's sends refused: udp_send_refused=$refused"
  ((refused >= 20)) || fail "udp_send_refused=$refused after 20 refused pings (expected >= 20)" || return 1
  pid_alive "$PID_A" || fail "tunctl in A died" || return 1
  nsx "$NS_A" nft delete table inet tt_block || fail "removing the rule" || return 1
  ping_ok "$NS_A" 198.18.1.2 5 || fail "no ping once the rule was gone" || return 1
}

tt_require --tunctl wg tcpdump python3 ping nft
tt_init
run_test basic-v4-underlay test_v4_underlay
run_test basic-v6-underlay test_v6_underlay
run_test udp-send-refused-counted test_send_refused_counted
tt_summary
