#!/usr/bin/env bash
# Path MTU discovery inside the tunnel (issue 17, part 2). An underlay hop with a smaller MTU
# that drops ICMP and IP fragments black-holes every full-size tunnel packet; tunctl must find
# the path MTU by itself (padded probes), tell the inner TCP with a synthetic "fragmentation
# needed" written into its TUN, and clamp the MSS of connections it carries, so that bulk TCP
# completes both ways with no MTU configured anywhere. Run by Scripts/test with offloads on and off.
#
#   A (ns $NS_A) veA 198.18.0.1/30 ==== vrA .2 | R (router) | vrB 198.18.0.5/30 ==== veB .6  B (ns $NS_B)
#   tunnel 198.18.1.1/24                      nftables: no ICMP,   MTU 1280 (both ends)   tunnel 198.18.1.2/24
#                                             no fragments, nothing longer than the hop MTU towards B
#
# - tunctl on both ends, default MTU 1420: 5 MiB A -> B and B -> A, each intact (SHA-256) within
#   30 s; show --json reports the path MTU as at most 1280; then the hop is raised to 1500 and
#   the probing must report 1480 (the interface MTU's packets) within 40 s.
# - a connection made at 1500 whose hop drops to 1280 mid-transfer: the black hole is noticed and
#   the sender told with a packet-too-big; the transfer completes intact within 30 s.
# - wireguard-go as B (it knows nothing of probes): the same two transfers within 30 s each, and
#   the raised hop found again (confirmed by wireguard-go's passive keepalive, so slower).
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

MB=5
PORT_A=51820
PORT_B=51821
DEADLINE=30

# chain_setup B_KIND: A, R and B as drawn above; the R–B hop at MTU 1280, and R's nftables
# dropping every ICMP message and every IP fragment (at priority -500, before any reassembly).
# B_KIND is tunctl or wggo. Sets NS_A NS_R NS_B IF_A IF_B KEYS CONF_A CONF_B PID_A PID_B.
chain_setup() {
  local kind=$1
  NS_A=$(ns_name a)
  NS_R=$(ns_name r)
  NS_B=$(ns_name b)
  IF_A=$(if_name a)
  IF_B=$(if_name b)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && ns_create "$NS_R" && ns_create "$NS_B" || return 1
  veth_create "$NS_A" veA "$NS_R" vrA && veth_create "$NS_R" vrB "$NS_B" veB || return 1
  addr_add "$NS_A" veA 198.18.0.1/30 && addr_add "$NS_R" vrA 198.18.0.2/30 || return 1
  addr_add "$NS_R" vrB 198.18.0.5/30 && addr_add "$NS_B" veB 198.18.0.6/30 || return 1
  nsx "$NS_A" ip route add default via 198.18.0.2 && nsx "$NS_B" ip route add default via 198.18.0.5 || return 1
  nsx "$NS_R" sysctl -qw net.ipv4.ip_forward=1 || return 1
  # A real hop never carries a UDP GSO super-packet: the veths cut them up before R sees them,
  # so the length rule below judges each datagram as a router would.
  nsx "$NS_A" ip link set veA gso_max_segs 1 && nsx "$NS_R" ip link set vrA gso_max_segs 1 || return 1
  nsx "$NS_R" ip link set vrB gso_max_segs 1 && nsx "$NS_B" ip link set veB gso_max_segs 1 || return 1
  nsx "$NS_R" nft -f - <<'EOF' || fail "nft rules on the router" || return 1
table inet blackhole {
  chain pre {
    type filter hook prerouting priority -500; policy accept;
    ip frag-off & 0x3fff != 0 counter drop
    meta l4proto { icmp, ipv6-icmp } counter drop
  }
  chain hop {
    type filter hook forward priority -500; policy accept;
  }
  chain out {
    type filter hook output priority -500; policy accept;
    meta l4proto { icmp, ipv6-icmp } counter drop
  }
}
EOF
  hop_mtu 1280 || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port "$PORT_A" \
    --peer "$KEYS/b.pub" --endpoint "198.18.0.6:$PORT_B" --allowed 198.18.1.2/32 || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24 --port "$PORT_B" \
    --peer "$KEYS/a.pub" --endpoint "198.18.0.1:$PORT_A" --allowed 198.18.1.1/32 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  if [[ "$kind" == wggo ]]; then
    start_wggo "$NS_B" "$IF_B" || return 1
    PID_B=$TT_LAST_PID
    wggo_configure "$NS_B" "$IF_B" "$CONF_B" || return 1
  else
    start_tunctl "$NS_B" "$CONF_B" || return 1
    PID_B=$TT_LAST_PID
  fi
  ping_until "$NS_A" 198.18.1.2 10 || fail "tunnel not up (small packets do not cross either)" || return 1
}

# hop_mtu M: the R–B link's MTU, on both of its ends. R would fragment a packet longer than M
# (one without DF) on its way out, after any hook could drop the fragments: the forward chain
# drops such a packet whole instead, which is what the fragments' fate would be.
hop_mtu() {
  nsx "$NS_R" ip link set vrB mtu "$1" || fail "cannot set the hop MTU to $1" || return 1
  nsx "$NS_B" ip link set veB mtu "$1" || fail "cannot set B's MTU to $1" || return 1
  nsx "$NS_R" nft flush chain inet blackhole hop || return 1
  nsx "$NS_R" nft add rule inet blackhole hop oifname vrB ip length "> $1" counter drop ||
    fail "nft rule for the hop MTU" || return 1
}

# dropped_by_router: what the router's nftables dropped (ICMP and fragments), for the log.
dropped_by_router() {
  nsx "$NS_R" nft list table inet blackhole | sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | paste -sd+ | bc
}

# A's path MTU to B as show --json reports it.
path_mtu_a() { tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" path_mtu; }
path_mtu_above() { local m; m=$(path_mtu_a) && [[ "$m" =~ ^[0-9]+$ ]] && ((m > $1)); }
path_mtu_is() { [[ "$(path_mtu_a)" == "$1" ]]; }

# told_too_big: a 1400-byte ping from A with DF set is refused, and A's kernel has learned the
# tunnel's 1216 bytes for B from tunctl's synthetic ICMP (the router's own ICMP is dropped).
told_too_big() {
  nsx "$NS_A" ping -4 -n -q -c 1 -W 1 -M "do" -s 1372 198.18.1.2 >/dev/null 2>&1
  nsx "$NS_A" ip -4 route get 198.18.1.2 | has "mtu 1216"
}

# both_ways: 5 MiB A -> B and B -> A, each intact within DEADLINE seconds.
both_ways() {
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" "$MB" || fail "could not make the payload" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" "$DEADLINE" ||
    fail "$MB MiB A -> B over the 1280 hop did not complete intact within ${DEADLINE}s" || return 1
  tcp_transfer "$NS_B" "$NS_A" 198.18.1.1 5002 "$f" "$DEADLINE" ||
    fail "$MB MiB B -> A over the 1280 hop did not complete intact within ${DEADLINE}s" || return 1
  rm -f "$f"
  tt_log "the router dropped $(dropped_by_router) ICMP messages and fragments"
}

test_tunctl_both_ends() {
  chain_setup tunctl || return 1
  both_ways || return 1
  local m
  m=$(path_mtu_a) || fail "show --json has no path_mtu for the peer" || return 1
  tt_log "A's path MTU to B over the 1280 hop: $m"
  [[ "$m" =~ ^[0-9]+$ ]] && ((m <= 1280 && m >= 1200)) ||
    fail "show --json path_mtu is '$m' over a 1280 hop, expected 1200..1280" || return 1
  wait_for 15 told_too_big || fail "no packet-too-big reached A's kernel for a 1400-byte packet: $(nsx "$NS_A" ip -4 route get 198.18.1.2)" || return 1
  (($(tunctl_drops "$NS_A" "$IF_A" path_mtu_exceeded) > 0)) || fail "path_mtu_exceeded not counted" || return 1
  # Raised: the re-probing finds the larger path, up to the interface MTU (1420 + 60 bytes).
  hop_mtu 1500 || return 1
  wait_for 40 path_mtu_is 1480 || fail "path_mtu $(path_mtu_a) 40 s after the hop went to 1500, expected 1480" || return 1
  tt_log "A's path MTU to B after the hop went to 1500: $(path_mtu_a)"
  pid_alive "$PID_A" || fail "tunctl A died" || return 1
  pid_alive "$PID_B" || fail "tunctl B died"
}

# A connection made while the hop carried 1500 bytes, with the search done at 1480: the hop drops
# to 1280 mid-transfer. tunctl notices the silence (large packets out, nothing back), checks the
# confirmed size with a probe, drops to the base and answers the next full-size segment with a
# packet-too-big; the sender's TCP lowers its MSS and the transfer completes intact.
test_black_hole_mid_connection() {
  chain_setup tunctl || return 1
  hop_mtu 1500 || return 1
  # A large ping begins the search; the connection after it is made at the full MSS.
  nsx "$NS_A" ping -4 -n -q -c 1 -W 1 -s 1300 198.18.1.2 >/dev/null 2>&1
  wait_for 10 path_mtu_is 1480 || fail "path_mtu $(path_mtu_a) with the hop at 1500, expected 1480" || return 1
  local f="$TT_TEST_DIR/payload" out="$TT_TEST_DIR/payload.received" flag="$TT_TEST_DIR/go" lpid spid
  make_random_file "$f" "$MB" || fail "could not make the payload" || return 1
  ip netns exec "$NS_B" timeout "$DEADLINE" socat -u TCP4-LISTEN:5003,bind=198.18.1.2,reuseaddr "CREATE:$out" &
  lpid=$!
  tt_register_pid "$lpid"
  wait_for 5 sh -c "ip netns exec '$NS_B' ss -Htln 'sport = :5003' | grep -q ." || fail "no listener" || return 1
  # The first MiB, then a wait for the flag, then the rest, on one connection.
  ip netns exec "$NS_A" timeout "$DEADLINE" python3 - "$f" "$flag" <<'PY' &
import os, socket, sys, time
data = open(sys.argv[1], "rb").read()
s = socket.create_connection(("198.18.1.2", 5003), timeout=30)
s.sendall(data[:1 << 20])
for _ in range(300):
    if os.path.exists(sys.argv[2]):
        break
    time.sleep(0.1)
s.sendall(data[1 << 20:])
s.close()
PY
  spid=$!
  tt_register_pid "$spid"
  local mss=""
  wait_for 10 sh -c "ip netns exec '$NS_A' ss -Htni dst 198.18.1.2 | grep -q ' mss:'" || fail "no connection" || return 1
  mss=$(nsx "$NS_A" ss -Htni dst 198.18.1.2 | sed -n 's/.* mss:\([0-9]*\).*/\1/p' | head -1)
  tt_log "the connection's MSS before the hop shrinks: $mss"
  [[ "$mss" =~ ^[0-9]+$ ]] && ((mss > 1300)) || fail "MSS '$mss': the connection is not full-size" || return 1
  hop_mtu 1280 || return 1
  touch "$flag"
  local t0=$SECONDS
  wait_exit "$spid" "$DEADLINE" || fail "the sender did not finish within ${DEADLINE}s of the hop shrinking" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "the sender exited $TT_EXIT_CODE" || return 1
  wait_exit "$lpid" 10 || fail "the receiver did not finish" || return 1
  [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$(sha256sum <"$out" | cut -d' ' -f1)" ]] ||
    fail "the data arrived altered ($(stat -c %s "$out") bytes)" || return 1
  tt_log "the rest crossed the shrunken hop in $((SECONDS - t0)) s; path MTU now $(path_mtu_a)"
  (($(tunctl_drops "$NS_A" "$IF_A" path_mtu_exceeded) > 0)) ||
    fail "no full-size segment was refused with a packet-too-big" || return 1
}

test_wggo_far_end() {
  chain_setup wggo || return 1
  both_ways || return 1
  local m
  m=$(path_mtu_a)
  tt_log "A's path MTU to wireguard-go over the 1280 hop: $m"
  [[ "$m" =~ ^[0-9]+$ ]] && ((m <= 1280)) || fail "show --json path_mtu is '$m' over a 1280 hop" || return 1
  # Raised: wireguard-go answers no probe, only its passive keepalive 10 s after a probe sent on
  # a quiet link (21 s without data of ours) tells that the probe arrived.
  hop_mtu 1500 || return 1
  wait_for 50 path_mtu_is 1480 || fail "path_mtu $(path_mtu_a) 50 s after the hop went to 1500, expected 1480" || return 1
  tt_log "A's path MTU to wireguard-go after the hop went to 1500: $(path_mtu_a)"
  pid_alive "$PID_A" || fail "tunctl died"
}

tt_require --tunctl wg wireguard-go socat python3 ping ss nft bc
tt_init
run_test pmtu-tunctl-both-ends test_tunctl_both_ends
run_test pmtu-black-hole-mid-connection test_black_hole_mid_connection
run_test pmtu-wireguard-go-far-end test_wggo_far_end
tt_summary
