#!/usr/bin/env bash
# Full tunnels (AllowedIPs = 0.0.0.0/0, ::/0), fwmark and UAPI parity:
#
#   C (ns $NS_C) client  veA 198.18.0.1/30 2001:db8::1/64 ==== veB 198.18.0.2/30 2001:db8::2/64  S (ns $NS_S)
#   default routes via S's underlay address                         tunctl up (server), forwards nothing
#   tunnel 198.18.1.1/24 2001:db8:1::1/64                           tunnel 198.18.1.2/24 2001:db8:1::2/64
#                                                                   lo: 203.0.113.7/32 2001:db8:ffff::7/128
#
# The "remote" addresses on S's loopback are reachable from C over the underlay as well (C's
# default route points at S): that the ping's packets are on C's tunnel and the underlay carries
# nothing but UDP to S's port is what shows the traffic went through the tunnel, and that the
# tunnel's own UDP (marked) did not loop into it.
#
# - fulltunnel-tunctl-up: `tunctl up` does wg-quick's policy routing itself (Table = auto): fwmark
#   51820 on its socket, the /0 routes in table 51820, `not fwmark 51820 table 51820` and
#   `table main suppress_prefixlength 0` per family, src_valid_mark; after exit, rules and routes
#   of every table and src_valid_mark are as before.
# - fulltunnel-wgquick: wg-quick with tunctl as its userspace implementation (wireguard-go as the
#   control first): the same reachability; after `wg-quick down`, rules and routes as before.
# - fulltunnel-crash-restart: kill -9 of `tunctl up` leaves its rules; the next start removes them
#   (no duplicate), and a clean stop leaves none.
# - uapi-fwmark-allowedip-parity: raw UAPI writes (socat): fwmark set/get/off, update_only,
#   allowed_ip=-PREFIX; `wg show dump` equal to wireguard-go's after the same writes where the
#   installed wireguard-go (0.0.20220316) knows the key; allowed_ip=-PREFIX (wireguard-go
#   0.0.20250522) and a scoped link-local endpoint are checked against what they must give.
# - table-number-and-off: `Table = 1234` routes everything in table 1234 with no rule or mark;
#   `Table = off` adds no route.
# - fwmark-config-and-reload: `FwMark` marks the socket; SIGHUP applies a changed or removed FwMark.
# - link-local-endpoint: a tunnel whose peer is `[fe80::…%veA]:port` carries traffic.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

PORT_C=51820
PORT_S=51821
REMOTE4=203.0.113.7
REMOTE6=2001:db8:ffff::7

# ft_setup: namespaces, keys, the server (tunctl up), the client's underlay default routes and
# config (not started). Sets NS_C NS_S IF_C IF_S CONF_C KEYS WRAPPER.
ft_setup() {
  underlay_pair 0 || return 1
  NS_C=$NS_A NS_S=$NS_B IF_C=$IF_A IF_S=$IF_B
  tt_register_iface "$IF_C"
  nsx "$NS_S" ip addr add "$REMOTE4/32" dev lo || return 1
  nsx "$NS_S" ip addr add "$REMOTE6/128" dev lo || return 1
  nsx "$NS_C" ip route add default via 198.18.0.2 || return 1
  nsx "$NS_C" ip -6 route add default via 2001:db8::2 || return 1
  local conf_s="$TT_TEST_DIR/$IF_S.conf"
  write_conf "$conf_s" --key "$KEYS/b.key" --address 198.18.1.2/24,2001:db8:1::2/64 --port "$PORT_S" \
    --peer "$KEYS/a.pub" --psk "$KEYS/ab.psk" --allowed 198.18.1.1/32,2001:db8:1::1/128 || return 1
  start_tunctl "$NS_S" "$conf_s" || return 1
  CONF_C="$TT_TEST_DIR/$IF_C.conf"
  write_conf "$CONF_C" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port "$PORT_C" \
    --peer "$KEYS/b.pub" --psk "$KEYS/ab.psk" --endpoint "198.18.0.2:$PORT_S" \
    --allowed 0.0.0.0/0,::/0 || return 1
  WRAPPER="$TT_TEST_DIR/tunctl-userspace"
  printf '#!/bin/sh\nexec %q userspace "$@"\n' "$TUNCTL" >"$WRAPPER"
  chmod 755 "$WRAPPER"
}

# snapshot NS: the namespace's policy rules and routes of every table, both families, minus the
# kernel's own per-link entries that come and go with the tunnel link's existence.
snapshot() {
  local ns=$1
  {
    nsx "$ns" ip -4 rule show
    nsx "$ns" ip -6 rule show
    nsx "$ns" ip -4 route show table all
    nsx "$ns" ip -6 route show table all
  } 2>&1 | grep -v "dev $IF_C "
}

# capture NS IFACE FILE: tcpdump on IFACE in the background (immediate mode: without it packets
# wait in the kernel ring for a block timeout and are lost when tcpdump is stopped), registered for
# cleanup. Sets CAP_PID.
capture() {
  ip netns exec "$1" tcpdump --immediate-mode -U -n -i "$2" -w "$3" >/dev/null 2>&1 &
  CAP_PID=$!
  tt_register_pid "$CAP_PID"
}

# count FILE FILTER: packets in FILE matching the pcap FILTER.
count() { tcpdump -n -r "$1" "$2" 2>/dev/null | wc -l; }

# reaches_only_through_tunnel: C pings both remote addresses; their packets are on C's tunnel and
# the underlay carries no packet but UDP to S's port (and the neighbour discovery it needs).
reaches_only_through_tunnel() {
  local tag=$1
  local tun_pcap="$TT_TEST_DIR/$tag-tun.pcap" under_pcap="$TT_TEST_DIR/$tag-underlay.pcap" tun_cap
  capture "$NS_C" "$IF_C" "$tun_pcap"
  tun_cap=$CAP_PID
  capture "$NS_C" veA "$under_pcap"
  # Capturing once each file has its header, plus a moment for the filters to attach.
  wait_for 5 test -s "$tun_pcap" && wait_for 5 test -s "$under_pcap" || fail "$tag: tcpdump did not start" || return 1
  sleep 0.3
  ping_until "$NS_C" "$REMOTE4" 10 || fail "$tag: no reply from $REMOTE4" || return 1
  ping_ok "$NS_C" "$REMOTE4" 3 || fail "$tag: $REMOTE4 lost replies" || return 1
  ping_ok "$NS_C" "$REMOTE6" 3 || fail "$tag: no reply from $REMOTE6" || return 1
  sleep 0.5
  tt_stop_pid "$tun_cap"
  tt_stop_pid "$CAP_PID"
  local on_tun4 on_tun6 leaked udp
  on_tun4=$(count "$tun_pcap" "icmp and host $REMOTE4")
  on_tun6=$(count "$tun_pcap" "icmp6 and host $REMOTE6")
  # Anything on the underlay that is not the tunnel's UDP, ARP, IPv6 multicast (MLD, solicitations)
  # or ICMPv6 neighbour discovery (types 133-137).
  leaked=$(count "$under_pcap" "not arp and not (udp port $PORT_S) and not ip6 multicast and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)")
  udp=$(count "$under_pcap" "udp port $PORT_S")
  tt_log "$tag: ICMP on the tunnel: $on_tun4 (v4) $on_tun6 (v6); underlay: $udp UDP to :$PORT_S, $leaked other"
  ((on_tun4 >= 8)) || fail "$tag: only $on_tun4 ICMP packets to/from $REMOTE4 on $IF_C (want >= 8)" || return 1
  ((on_tun6 >= 6)) || fail "$tag: only $on_tun6 ICMPv6 packets to/from $REMOTE6 on $IF_C (want >= 6)" || return 1
  ((udp >= 14)) || fail "$tag: only $udp UDP packets to/from :$PORT_S on the underlay" || return 1
  ((leaked == 0)) || fail "$tag: $leaked packets on the underlay outside the tunnel:"$'\n'"$(tcpdump -n -r "$under_pcap" "not arp and not (udp port $PORT_S)" 2>/dev/null | head -5)" || return 1
}

rules_of() { nsx "$NS_C" ip "$1" rule show | grep -c "$2"; }

test_fulltunnel_tunctl_up() {
  ft_setup || return 1
  local before valid_before after
  before=$(snapshot "$NS_C")
  valid_before=$(nsx "$NS_C" cat /proc/sys/net/ipv4/conf/all/src_valid_mark)
  start_tunctl "$NS_C" "$CONF_C" || return 1
  local pid=$TT_LAST_PID
  nsx "$NS_C" wg show "$IF_C" fwmark | has -x "0xca6c" || fail "fwmark: $(nsx "$NS_C" wg show "$IF_C" fwmark)" || return 1
  nsx "$NS_C" ip -4 route show table 51820 | has "^default dev $IF_C" || fail "no IPv4 default in table 51820" || return 1
  nsx "$NS_C" ip -6 route show table 51820 | has "^default dev $IF_C" || fail "no IPv6 default in table 51820" || return 1
  for fam in -4 -6; do
    (($(rules_of $fam "not from all fwmark 0xca6c lookup 51820") == 1)) || fail "ip $fam rule: $(nsx "$NS_C" ip $fam rule)" || return 1
    (($(rules_of $fam "lookup main suppress_prefixlength 0") == 1)) || fail "ip $fam rule: $(nsx "$NS_C" ip $fam rule)" || return 1
  done
  [[ $(nsx "$NS_C" cat /proc/sys/net/ipv4/conf/all/src_valid_mark) == 1 ]] || fail "src_valid_mark not set" || return 1
  reaches_only_through_tunnel tunctl-up || return 1
  kill -TERM "$pid"
  wait_exit "$pid" 10 || fail "tunctl up did not exit on SIGTERM" || return 1
  after=$(snapshot "$NS_C")
  [[ "$after" == "$before" ]] || fail "rules/routes differ after exit:"$'\n'"$(diff <(echo "$before") <(echo "$after"))" || return 1
  [[ $(nsx "$NS_C" cat /proc/sys/net/ipv4/conf/all/src_valid_mark) == "$valid_before" ]] ||
    fail "src_valid_mark not restored to $valid_before" || return 1
}

# wq IMPL up|down: wg-quick in C, output to a log, bounded (30 s).
wq() {
  WQ_LOG="$TT_TEST_DIR/wg-quick-$1-$2.log"
  WQ_LOG=${WQ_LOG//\//_}
  WQ_LOG="$TT_TEST_DIR/$(basename "$WQ_LOG")"
  ip netns exec "$NS_C" env WG_QUICK_USERSPACE_IMPLEMENTATION="$1" timeout 30 wg-quick "$2" "$CONF_C" \
    </dev/null >"$WQ_LOG" 2>&1
}

wq_round() {
  local impl=$1 tag=$2 before after
  before=$(snapshot "$NS_C")
  wq "$impl" up || fail "$tag: wg-quick up failed: $(tail -5 "$WQ_LOG")" || return 1
  has "fwmark 51820" "$WQ_LOG" || fail "$tag: wg-quick did not take the full-tunnel path" || return 1
  nsx "$NS_C" wg show "$IF_C" fwmark | has -x "0xca6c" || fail "$tag: wg show fwmark" || return 1
  reaches_only_through_tunnel "$tag" || return 1
  wq "$impl" down || fail "$tag: wg-quick down failed: $(tail -5 "$WQ_LOG")" || return 1
  wait_for 10 sh -c "[ -z \"\$(ip netns pids '$NS_C')\" ]" || fail "$tag: daemon left after down" || return 1
  after=$(snapshot "$NS_C")
  [[ "$after" == "$before" ]] || fail "$tag: rules/routes differ after down:"$'\n'"$(diff <(echo "$before") <(echo "$after"))" || return 1
}

test_fulltunnel_wgquick() {
  ft_setup || return 1
  wq_round wireguard-go wg-quick-wireguard-go || fail "control failed: wireguard-go" || return 1
  wq_round "$WRAPPER" wg-quick-tunctl
}

test_fulltunnel_crash_restart() {
  ft_setup || return 1
  local before after fam
  # Someone else's rule, the same as one of ours but without our tag: never ours to delete.
  nsx "$NS_C" ip -4 rule add table main suppress_prefixlength 0 pref 100 || return 1
  before=$(snapshot "$NS_C")
  start_tunctl "$NS_C" "$CONF_C" || return 1
  kill -KILL "$TT_LAST_PID"
  wait_exit "$TT_LAST_PID" 5 || fail "tunctl up survived kill -9" || return 1
  wait_for 5 sh -c "! ip -n '$NS_C' link show '$IF_C' >/dev/null 2>&1" || fail "link left after kill -9" || return 1
  (($(rules_of -4 "lookup 51820") == 1)) || fail "expected the crashed run's rule left: $(nsx "$NS_C" ip -4 rule)" || return 1
  start_tunctl "$NS_C" "$CONF_C" || return 1
  local pid=$TT_LAST_PID
  (($(grep -c "removed 2 stale rule" "$TT_LAST_LOG") == 2)) || fail "restart did not report 2 stale rules per family" || return 1
  for fam in -4 -6; do
    (($(rules_of $fam "lookup 51820") == 1)) || fail "ip $fam rule after restart: $(nsx "$NS_C" ip $fam rule)" || return 1
    (($(rules_of $fam "suppress_prefixlength 0") == (fam == -4 ? 2 : 1))) || fail "ip $fam rule after restart: $(nsx "$NS_C" ip $fam rule)" || return 1
  done
  ping_until "$NS_C" "$REMOTE4" 10 || fail "no traffic after the restart" || return 1
  kill -TERM "$pid"
  wait_exit "$pid" 10 || fail "tunctl up did not exit" || return 1
  after=$(snapshot "$NS_C")
  [[ "$after" == "$before" ]] || fail "rules/routes differ after a clean stop:"$'\n'"$(diff <(echo "$before") <(echo "$after"))" || return 1
}

# uapi IFACE BODY: one raw `set=1` request; prints the errno line.
uapi() {
  printf 'set=1\n%s\n\n' "$2" | timeout 5 socat -t 2 - "UNIX-CONNECT:$TT_SOCK_DIR/$1.sock" | grep '^errno='
}

# dump NS IFACE: `wg show dump` without the handshake/transfer columns, which differ by timing.
dump() { nsx "$1" wg show "$2" dump | awk -F'\t' -v OFS='\t' 'NF == 8 { $6 = $7 = "-" } { print }'; }

test_uapi_parity() {
  underlay_pair 0 || return 1
  local ref ours
  ref=$(if_name r)
  ours=$(if_name t)
  tt_register_iface "$ours"
  start_wggo "$NS_A" "$ref" || return 1
  ip netns exec "$NS_B" "$TUNCTL" userspace "$ours" >"$TT_TEST_DIR/userspace.log" 2>&1 ||
    fail "tunctl userspace failed" || return 1
  local pid
  pid=$(ip netns pids "$NS_B" | head -1)
  tt_register_pid "$pid"
  local key a c r
  key=$(base64 -d <"$KEYS/a.key" | od -An -tx1 | tr -d ' \n')
  tt_keypair "$KEYS" c || return 1
  a=$(base64 -d <"$KEYS/b.pub" | od -An -tx1 | tr -d ' \n')
  c=$(base64 -d <"$KEYS/c.pub" | od -An -tx1 | tr -d ' \n')
  # A link with the same name in both namespaces, for a scoped link-local endpoint.
  nsx "$NS_A" ip link add ftzone type veth peer name ftzone2 && nsx "$NS_B" ip link add ftzone type veth peer name ftzone2 || return 1
  local writes=(
    "private_key=$key"$'\n'"listen_port=51830"$'\n'"fwmark=4660"
    "public_key=$a"$'\n'"endpoint=198.18.0.9:51820"$'\n'"allowed_ip=198.18.5.0/24"$'\n'"allowed_ip=198.18.6.0/24"$'\n'"allowed_ip=2001:db8:5::/48"
    "public_key=$c"$'\n'"update_only=true"$'\n'"allowed_ip=198.18.7.0/24"
    "public_key=$a"$'\n'"update_only=true"$'\n'"persistent_keepalive_interval=25"
  )
  local w n=0
  for w in "${writes[@]}"; do
    n=$((n + 1))
    r=$(uapi "$ref" "$w")
    [[ $r == errno=0 ]] || fail "wireguard-go refused write $n: $r" || return 1
    r=$(uapi "$ours" "$w")
    [[ $r == errno=0 ]] || fail "tunctl refused write $n: $r" || return 1
  done
  local want got
  want=$(dump "$NS_A" "$ref")
  got=$(dump "$NS_B" "$ours")
  tt_log "dump after fwmark/update_only writes:"$'\n'"$got"
  [[ "$got" == "$want" ]] || fail "dump differs from wireguard-go's:"$'\n'"$(diff <(echo "$want") <(echo "$got"))" || return 1
  has $'\t0x1234$' <<<"$(head -1 <<<"$got")" || fail "fwmark 0x1234 not in the dump" || return 1
  # fwmark=0 turns it off: both report "off".
  [[ $(uapi "$ref" "fwmark=0") == errno=0 && $(uapi "$ours" "fwmark=0") == errno=0 ]] || fail "fwmark=0 refused" || return 1
  [[ $(dump "$NS_B" "$ours") == $(dump "$NS_A" "$ref") ]] || fail "dump differs after fwmark=0" || return 1
  nsx "$NS_B" wg show "$ours" fwmark | has -x off || fail "fwmark not off after fwmark=0" || return 1
  # Bad values are refused as wireguard-go refuses them (-EINVAL).
  for w in "fwmark=" "fwmark=-1" "fwmark=4294967296"; do
    [[ $(uapi "$ours" "$w") == "$(uapi "$ref" "$w")" ]] || fail "'$w': tunctl and wireguard-go answer differently" || return 1
  done
  # A scoped link-local endpoint keeps its scope (wireguard-go 0.0.20250522 keeps the zone; the
  # installed 0.0.20220316 drops it, so no comparison): `wg` shows the interface's name.
  r=$(uapi "$ours" "public_key=$c"$'\n'"endpoint=[fe80::1%ftzone]:51822")
  [[ $r == errno=0 ]] || fail "scoped endpoint refused: $r" || return 1
  nsx "$NS_B" wg show "$ours" endpoints | has $'\t\\[fe80::1%ftzone\\]:51822$' ||
    fail "scoped endpoint: $(nsx "$NS_B" wg show "$ours" endpoints)" || return 1
  r=$(uapi "$ours" "public_key=$c"$'\n'"endpoint=[fe80::1%nosuchlink]:51822")
  [[ $r == errno=-22 ]] || fail "endpoint on a missing link: $r (want errno=-22)" || return 1
  r=$(uapi "$ours" "public_key=$c"$'\n'"remove=true")
  # allowed_ip=-PREFIX (wireguard-go 0.0.20250522): removes that prefix of that peer only; a
  # prefix the peer does not have changes nothing.
  r=$(uapi "$ours" "public_key=$a"$'\n'"allowed_ip=-198.18.6.0/24"$'\n'"allowed_ip=-198.18.99.0/24"$'\n'"allowed_ip=-2001:db8:5::/48")
  [[ $r == errno=0 ]] || fail "allowed_ip=-PREFIX refused: $r" || return 1
  got=$(nsx "$NS_B" wg show "$ours" allowed-ips | cut -f2)
  [[ $got == "198.18.5.0/24" ]] || fail "allowed-ips after removals: '$got' (want 198.18.5.0/24)" || return 1
  # A wireguard-go that knows the syntax (0.0.20250522 does) must agree; an older one refuses it.
  r=$(uapi "$ref" "public_key=$a"$'\n'"allowed_ip=-198.18.6.0/24"$'\n'"allowed_ip=-198.18.99.0/24"$'\n'"allowed_ip=-2001:db8:5::/48")
  if [[ $r == errno=0 ]]; then
    [[ $(nsx "$NS_A" wg show "$ref" allowed-ips | cut -f2) == "$got" ]] || fail "allowed_ip=-: wireguard-go disagrees" || return 1
  else
    tt_log "the installed wireguard-go refuses allowed_ip=-PREFIX ($r): no comparison"
  fi
  r=$(uapi "$ours" "public_key=$a"$'\n'"allowed_ip=-nonsense")
  [[ $r == errno=-22 ]] || fail "allowed_ip=-nonsense: $r (want errno=-22)" || return 1
}

# A peer reached at a link-local address (`Endpoint = [fe80::…%veA]:port`): the scope id must
# reach sendto, or the kernel has no route for it (EINVAL/ENETUNREACH) and no handshake completes.
test_link_local_endpoint() {
  two_nodes_setup --no-start || return 1
  local ll
  ll=$(nsx "$NS_B" ip -6 -o addr show dev veB scope link | awk '{print $4}' | cut -d/ -f1)
  [[ $ll == fe80:* ]] || fail "no link-local address on veB: '$ll'" || return 1
  sed -i "s|^Endpoint = .*|Endpoint = [$ll%veA]:$PORT_B|" "$CONF_A"
  sed -i '/^Endpoint = /d' "$CONF_B"
  start_tunctl "$NS_A" "$CONF_A" || return 1
  start_tunctl "$NS_B" "$CONF_B" || return 1
  nsx "$NS_A" wg show "$IF_A" endpoints | has "\\[$ll%veA\\]:$PORT_B" ||
    fail "endpoint shown as: $(nsx "$NS_A" wg show "$IF_A" endpoints)" || return 1
  ping_until "$NS_A" 198.18.1.2 10 || fail "no traffic to a link-local endpoint" || return 1
  # B learned A's scoped address from the handshake and answers to it.
  nsx "$NS_B" wg show "$IF_B" endpoints | has "%veB\\]:$PORT_A" ||
    fail "B's view of A: $(nsx "$NS_B" wg show "$IF_B" endpoints)" || return 1
}

# `Table = 1234`: every route (the /0 too) in table 1234, no rule, no mark; `Table = off`: no
# route at all but the kernel's own for the addresses. Rules and routes as before after exit.
test_table_number_and_off() {
  ft_setup || return 1
  local before after routes
  before=$(snapshot "$NS_C")
  sed -i '/^\[Interface\]$/a Table = 1234' "$CONF_C"
  sed -i 's|^AllowedIPs = .*|AllowedIPs = 0.0.0.0/0, ::/0, 198.18.9.0/24|' "$CONF_C"
  start_tunctl "$NS_C" "$CONF_C" || return 1
  routes=$(nsx "$NS_C" ip route show table 1234; nsx "$NS_C" ip -6 route show table 1234)
  has "^default dev $IF_C" <<<"$routes" || fail "Table = 1234: no IPv4 default in table 1234: $routes" || return 1
  has "^198.18.9.0/24 dev $IF_C" <<<"$routes" || fail "Table = 1234: 198.18.9.0/24 not in table 1234" || return 1
  (($(grep -c "^default dev $IF_C" <<<"$routes") == 2)) || fail "Table = 1234: want both defaults: $routes" || return 1
  nsx "$NS_C" ip route show table main | has "dev $IF_C proto boot" && { fail "Table = 1234: a route in main"; return 1; }
  [[ $(snapshot "$NS_C" | grep -c "lookup 1234\|suppress") == 0 ]] || fail "Table = 1234 added rules" || return 1
  nsx "$NS_C" wg show "$IF_C" fwmark | has -x off || fail "Table = 1234 set a fwmark" || return 1
  kill -TERM "$TT_LAST_PID"
  wait_exit "$TT_LAST_PID" 10 || fail "tunctl up did not exit" || return 1
  sed -i 's|^Table = 1234|Table = off|' "$CONF_C"
  start_tunctl "$NS_C" "$CONF_C" || return 1
  routes=$(nsx "$NS_C" ip route show table all dev "$IF_C"; nsx "$NS_C" ip -6 route show table all dev "$IF_C")
  has -v "proto kernel\|^multicast\|^local\|^fe80::/64\|^ff00::/8" <<<"$routes" &&
    { fail "Table = off, yet routes on $IF_C:"$'\n'"$routes"; return 1; }
  kill -TERM "$TT_LAST_PID"
  wait_exit "$TT_LAST_PID" 10 || fail "tunctl up did not exit" || return 1
  after=$(snapshot "$NS_C")
  [[ "$after" == "$before" ]] || fail "rules/routes differ after exit:"$'\n'"$(diff <(echo "$before") <(echo "$after"))" || return 1
}

# `FwMark` marks the socket at start and a SIGHUP with a changed FwMark re-marks it (off: unmarked);
# the tunnel keeps working across the changes.
test_fwmark_reload() {
  ft_setup || return 1
  sed -i '/^\[Interface\]$/a FwMark = 0x10' "$CONF_C"
  sed -i 's|^AllowedIPs = .*|AllowedIPs = 198.18.1.2/32|' "$CONF_C"
  start_tunctl "$NS_C" "$CONF_C" || return 1
  local pid=$TT_LAST_PID
  nsx "$NS_C" wg show "$IF_C" fwmark | has -x 0x10 || fail "FwMark = 0x10 at start: $(nsx "$NS_C" wg show "$IF_C" fwmark)" || return 1
  ping_until "$NS_C" 198.18.1.2 10 || fail "no traffic with FwMark = 0x10" || return 1
  sed -i 's|^FwMark = 0x10|FwMark = 4660|' "$CONF_C"
  kill -HUP "$pid"
  wait_for 5 sh -c "ip netns exec '$NS_C' wg show '$IF_C' fwmark | grep -qx 0x1234" ||
    fail "FwMark = 4660 after SIGHUP: $(nsx "$NS_C" wg show "$IF_C" fwmark)" || return 1
  has "fwmark 16→4660" "$TT_LAST_LOG" || fail "the reload line does not name the fwmark change" || return 1
  sed -i '/^FwMark = /d' "$CONF_C"
  kill -HUP "$pid"
  wait_for 5 sh -c "ip netns exec '$NS_C' wg show '$IF_C' fwmark | grep -qx off" ||
    fail "no FwMark after SIGHUP: $(nsx "$NS_C" wg show "$IF_C" fwmark)" || return 1
  ping_ok "$NS_C" 198.18.1.2 || fail "no traffic after the reloads" || return 1
}

tt_require --tunctl wg wg-quick wireguard-go socat tcpdump python3 ping nft sysctl
[[ -e /sys/module/wireguard ]] && tt_missing "the wireguard kernel module is loaded: wg-quick would not use tunctl"
tt_init
run_test fulltunnel-tunctl-up test_fulltunnel_tunctl_up
run_test fulltunnel-wgquick test_fulltunnel_wgquick
run_test fulltunnel-crash-restart test_fulltunnel_crash_restart
run_test uapi-fwmark-allowedip-parity test_uapi_parity
run_test link-local-endpoint test_link_local_endpoint
run_test table-number-and-off test_table_number_and_off
run_test fwmark-config-and-reload test_fwmark_reload
tt_summary
