#!/usr/bin/env bash
# wg-quick with tunctl as its userspace implementation, inside a namespace:
#
#   W (ns $NS_W) wg-quick + tunctl  198.18.0.1 / 2001:db8::1  ====  198.18.0.2  P (ns $NS_P) wireguard-go
#   tunnel 198.18.1.1/24 2001:db8:1::1/64                           tunnel 198.18.1.2/24 2001:db8:1::2/64,
#                                                                          198.18.3.1/24
#
# What the installed wg-quick (wireguard-tools 1.0.20210914) does, read from its source:
# - `ip link add IFACE type wireguard` fails (no kernel module: /sys/module/wireguard absent), so it
#   runs "${WG_QUICK_USERSPACE_IMPLEMENTATION:-wireguard-go}" IFACE -- QUOTED: the variable is one
#   word, a program path. "tunctl userspace" (two words) is looked up as one command name and fails;
#   a one-line wrapper script is the recipe (test wgquick-two-word-variable records what happens).
# - then `wg setconf IFACE <(config without Address/DNS/MTU/Table/…)`, addresses, MTU (unset: the
#   route MTU to the endpoints minus 80, so 1420 over a 1500 veth), link up, one route per
#   AllowedIPs prefix not already routed on the link, in the main table (no Table key). No DNS key:
#   resolvconf is never called. No /0 prefix: no fwmark, no policy rules, no sysctl.
# - `wg-quick down` deletes the link; the daemon must notice and exit, removing its socket.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

PORT_W=51820
PORT_P=51821

# wq_setup: namespaces, keys, the wrapper, wg-quick's config for W (named after the interface),
# and the peer P (wireguard-go configured with `wg`). Sets NS_W NS_P IF_W IF_P KEYS CONF_W WRAPPER.
wq_setup() {
  # The harness's two-namespace underlay: W is its A side, P its B side (keys a, b, PSK ab).
  underlay_pair 0 || return 1
  NS_W=$NS_A NS_P=$NS_B IF_W=$IF_A IF_P=$IF_B
  tt_register_iface "$IF_W"
  tt_register_iface "$IF_P"

  # The recipe: WG_QUICK_USERSPACE_IMPLEMENTATION names one executable.
  WRAPPER="$TT_TEST_DIR/tunctl-userspace"
  printf '#!/bin/sh\nexec %q userspace "$@"\n' "$TUNCTL" >"$WRAPPER"
  chmod 755 "$WRAPPER"

  # Minimal wg-quick config: no DNS, no Table, no MTU, no /0.
  CONF_W="$TT_TEST_DIR/$IF_W.conf"
  write_conf "$CONF_W" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port "$PORT_W" \
    --peer "$KEYS/b.pub" --psk "$KEYS/ab.psk" --endpoint "198.18.0.2:$PORT_P" \
    --allowed 198.18.1.2/32,198.18.3.0/24,2001:db8:1::2/128 || return 1

  # P: wireguard-go, configured with wg (it learns W's endpoint from W's handshake).
  local log="$TT_TEST_DIR/wireguard-go.log" i
  ip netns exec "$NS_P" env LOG_LEVEL=debug WG_PROCESS_FOREGROUND=1 wireguard-go -f "$IF_P" >"$log" 2>&1 &
  tt_register_pid $!
  for ((i = 0; i < 100; i++)); do
    [[ -S "$TT_SOCK_DIR/$IF_P.sock" ]] && nsx "$NS_P" wg show "$IF_P" >/dev/null 2>&1 && break
    sleep 0.1
  done
  ((i < 100)) || fail "wireguard-go did not come up" || return 1
  nsx "$NS_P" wg set "$IF_P" private-key "$KEYS/b.key" listen-port "$PORT_P" \
    peer "$(cat "$KEYS/a.pub")" preshared-key "$KEYS/ab.psk" allowed-ips 198.18.1.1/32,2001:db8:1::1/128 ||
    fail "wg set on wireguard-go" || return 1
  addr_add "$NS_P" "$IF_P" 198.18.1.2/24 198.18.3.1/24 2001:db8:1::2/64 || return 1
  nsx "$NS_P" ip link set "$IF_P" mtu 1420 up
}

# wq IMPL up|down: wg-quick in W with WG_QUICK_USERSPACE_IMPLEMENTATION=IMPL, output to a log
# (never captured with $(…): the daemon inherits wg-quick's stdout/stderr, as wireguard-go does,
# and a pipe would stay open for the daemon's lifetime). Bounded: 30 s.
wq() {
  local impl=$1 verb=$2
  WQ_LOG="$TT_TEST_DIR/wg-quick-$verb.$((++WQ_N)).log"
  ip netns exec "$NS_W" env WG_QUICK_USERSPACE_IMPLEMENTATION="$impl" timeout 30 wg-quick "$verb" "$CONF_W" \
    </dev/null >"$WQ_LOG" 2>&1
}
WQ_N=0

# The daemon's processes in W (wg-quick has exited by now; anything left is the daemon).
w_pids() { ip netns pids "$NS_W" 2>/dev/null; }

# assert_up: what `wg-quick up` must have made, and traffic both ways.
assert_up() {
  nsx "$NS_W" ip -o link show "$IF_W" | has "UP" || fail "$IF_W is not up" || return 1
  nsx "$NS_W" ip -o link show "$IF_W" | has "mtu 1420" ||
    fail "MTU: wg-quick should set 1500 - 80 = 1420: $(nsx "$NS_W" ip -o link show "$IF_W")" || return 1
  nsx "$NS_W" ip -o addr show dev "$IF_W" | has "198.18.1.1/24" || fail "no 198.18.1.1/24 on $IF_W" || return 1
  nsx "$NS_W" ip -o addr show dev "$IF_W" | has "2001:db8:1::1/64" || fail "no 2001:db8:1::1/64 on $IF_W" || return 1
  # wg-quick added a route for the prefix its Address does not cover, in the main table.
  nsx "$NS_W" ip route show table main dev "$IF_W" | has "^198.18.3.0/24" ||
    fail "wg-quick did not add 198.18.3.0/24 dev $IF_W: $(nsx "$NS_W" ip route show dev "$IF_W")" || return 1
  [[ -S "$TT_SOCK_DIR/$IF_W.sock" ]] || fail "no $TT_SOCK_DIR/$IF_W.sock" || return 1
  [[ -n $(w_pids) ]] || fail "no daemon process in $NS_W" || return 1
  ps -o args= -p "$(w_pids | head -1)" | has "userspace" || fail "the process in W is not tunctl userspace: $(ps -o args= -p "$(w_pids)")" || return 1
  has "resolvconf" "$WQ_LOG" && { fail "wg-quick called resolvconf without a DNS key"; return 1; }
  # The config reached the daemon: wg showconf agrees with the file (keys, port, peer).
  local show
  show=$(nsx "$NS_W" wg showconf "$IF_W") || fail "wg showconf $IF_W" || return 1
  has -x "ListenPort = $PORT_W" <<<"$show" || fail "showconf: ListenPort" || return 1
  has -x "PrivateKey = $(cat "$KEYS/a.key")" <<<"$show" || fail "showconf: PrivateKey" || return 1
  has -x "PublicKey = $(cat "$KEYS/b.pub")" <<<"$show" || fail "showconf: peer" || return 1
  has -x "Endpoint = 198.18.0.2:$PORT_P" <<<"$show" || fail "showconf: Endpoint" || return 1

  ping_until "$NS_W" 198.18.1.2 10 || fail "W -> P: no reply within 10 s" || return 1
  ping_ok "$NS_P" 198.18.1.1 || fail "P -> W (IPv4)" || return 1
  ping_ok "$NS_W" 2001:db8:1::2 || fail "W -> P (IPv6)" || return 1
  ping_ok "$NS_P" 2001:db8:1::1 || fail "P -> W (IPv6)" || return 1
  ping_ok "$NS_W" 198.18.3.1 || fail "W -> 198.18.3.1 over the route wg-quick added" || return 1
  local hs
  hs=$(nsx "$NS_W" wg show "$IF_W" latest-handshakes | cut -f2)
  ((hs > $(date +%s) - 30)) || fail "wg show latest-handshakes: '$hs'" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" 20 && tcp_transfer "$NS_P" "$NS_W" 198.18.1.1 5001 "$f" 60 || fail "20 MiB P -> W" || return 1
  rm -f "$f"
}

# assert_down: no link, no socket file, no daemon, no route (bounded: 10 s for the daemon to go).
assert_down() {
  wait_for 10 sh -c "[ -z \"\$(ip netns pids '$NS_W')\" ]" ||
    fail "processes left in $NS_W after wg-quick down: $(w_pids | xargs -r ps -o pid=,args= -p)" || return 1
  nsx "$NS_W" ip link show "$IF_W" >/dev/null 2>&1 && { fail "link $IF_W left after wg-quick down"; return 1; }
  [[ ! -e "$TT_SOCK_DIR/$IF_W.sock" ]] || fail "socket $TT_SOCK_DIR/$IF_W.sock left after wg-quick down" || return 1
  [[ -z $(nsx "$NS_W" ip route show 198.18.3.0/24) ]] || fail "route 198.18.3.0/24 left behind" || return 1
  nsx "$NS_W" ss -Huln "sport = :$PORT_W" | has . && { fail "UDP $PORT_W still bound"; return 1; }
  return 0
}

# Two full cycles: the second `up` must not trip over anything the first `down` left.
test_wgquick_cycle() {
  wq_setup || return 1
  local round
  for round in 1 2; do
    wq "$WRAPPER" up || fail "wg-quick up (round $round) failed: $(tail -5 "$WQ_LOG")" || return 1
    tt_log "wg-quick up (round $round):"$'\n'"$(cat "$WQ_LOG")"
    has "Falling back to slow userspace implementation" "$WQ_LOG" ||
      fail "wg-quick did not take the userspace path (kernel module present?)" || return 1
    assert_up || return 1
    wq "$WRAPPER" down || fail "wg-quick down (round $round) failed: $(tail -5 "$WQ_LOG")" || return 1
    tt_log "wg-quick down (round $round):"$'\n'"$(cat "$WQ_LOG")"
    assert_down || return 1
  done
}

# The literal two-word value. This wg-quick quotes the variable, so it must fail -- cleanly: a
# non-zero exit, nothing left behind. If a future wg-quick word-splits it, the full cycle must work.
test_wgquick_two_words() {
  wq_setup || return 1
  local rc=0
  wq "$TUNCTL userspace" up || rc=$?
  tt_log "WG_QUICK_USERSPACE_IMPLEMENTATION=\"$TUNCTL userspace\" wg-quick up -> exit $rc:"$'\n'"$(cat "$WQ_LOG")"
  if ((rc == 0)); then
    tt_log "this wg-quick word-splits the variable: checking the full cycle"
    assert_up || return 1
    wq "$TUNCTL userspace" down || fail "wg-quick down failed" || return 1
    assert_down
    return
  fi
  ((rc != 124)) || fail "wg-quick up hung (30 s)" || return 1
  has "Falling back" "$WQ_LOG" && { fail "wg-quick claims to have run the two-word command"; return 1; }
  assert_down
}

# `Table = off`: wg-quick adds no routes, and the userspace implementation must not add any
# either (wireguard-go never touches routes: they are wg-quick's, and `Table = N` or the /0
# policy routing depend on that). Control run with wireguard-go first, same config.
# impl_routes IMPL: wg-quick up with IMPL, prints the routes of every table on the link that are
# not the kernel's own (proto kernel / link-local multicast), then wg-quick down.
impl_routes() {
  wq "$1" up || fail "wg-quick up ($1) failed: $(tail -5 "$WQ_LOG")" || return 1
  nsx "$NS_W" wg set "$IF_W" peer "$(cat "$KEYS/b.pub")" allowed-ips 198.18.1.2/32,198.18.3.0/24,198.18.4.0/24,2001:db8:1::2/128 ||
    fail "wg set allowed-ips ($1)" || return 1
  sleep 0.5
  { nsx "$NS_W" ip -4 route show table all dev "$IF_W"; nsx "$NS_W" ip -6 route show table all dev "$IF_W"; } |
    grep -v "proto kernel" | grep -Ev "^(local|multicast|ff00::/8|fe80::/64)" || true
  wq "$1" down || fail "wg-quick down ($1) failed: $(tail -5 "$WQ_LOG")" || return 1
  assert_down
}

test_wgquick_table_off() {
  wq_setup || return 1
  sed -i '/^\[Interface\]$/a Table = off' "$CONF_W"
  local ref got
  ref=$(impl_routes wireguard-go) || return 1
  [[ -z "$ref" ]] || fail "control failed: with wireguard-go and Table = off there are routes: $ref" || return 1
  got=$(impl_routes "$WRAPPER") || return 1
  [[ -z "$got" ]] || fail "Table = off, yet routes appeared on the link (wireguard-go adds none):"$'\n'"$got" || return 1
}

# A namespace whose loopback is down (fresh `ip netns add`, or systemd PrivateNetwork before lo is
# configured): wireguard-go starts there; the drop-in must too. Control with wireguard-go first.
test_userspace_lo_down() {
  wq_setup || return 1
  nsx "$NS_W" ip link set lo down
  wq wireguard-go up || fail "control failed: wg-quick up with wireguard-go, lo down: $(tail -5 "$WQ_LOG")" || return 1
  wq wireguard-go down || return 1
  assert_down || return 1
  local rc=0
  wq "$WRAPPER" up || rc=$?
  ((rc == 0)) || fail "wg-quick up with tunctl in a namespace whose lo is down: exit $rc:"$'\n'"$(cat "$WQ_LOG")" || return 1
  ping_until "$NS_W" 198.18.1.2 10 || fail "no traffic (lo down)" || return 1
  wq "$WRAPPER" down || return 1
  assert_down
}

# `wg-quick up CONF 2>&1 | tee log` (or `out=$(wg-quick up CONF 2>&1)`) must return when wg-quick
# does. wireguard-go's daemon keeps the caller's stdout/stderr only when LOG_LEVEL is set
# (main.go), so the pipe closes; a daemon that keeps stderr holds it open for its whole life.
# Control with wireguard-go first.
piped_up() {
  local impl=$1 t0 rc=0
  t0=$(date +%s)
  # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
  ip netns exec "$NS_W" env -u LOG_LEVEL WG_QUICK_USERSPACE_IMPLEMENTATION="$impl" \
    timeout 15 sh -c 'wg-quick up "$1" 2>&1 </dev/null | cat >"$2"' sh "$CONF_W" "$TT_TEST_DIR/piped.log" || rc=$?
  tt_log "wg-quick up ($impl) through a pipe: exit $rc after $(($(date +%s) - t0)) s"
  ((rc == 0)) || fail "wg-quick up ($impl) | cat did not return within 15 s (exit $rc): the daemon holds the pipe" || return 1
  ping_until "$NS_W" 198.18.1.2 10 || fail "no traffic after piped up ($impl)" || return 1
  wq "$impl" down || return 1
  assert_down
}

test_wgquick_piped() {
  wq_setup || return 1
  piped_up wireguard-go || fail "control failed: wireguard-go" || return 1
  piped_up "$WRAPPER"
}

tt_require --tunctl wg wg-quick wireguard-go socat python3 ping ss
[[ -e /sys/module/wireguard ]] && tt_missing "the wireguard kernel module is loaded: wg-quick would not use tunctl"
tt_init
run_test wgquick-up-down-cycle test_wgquick_cycle
run_test wgquick-two-word-variable test_wgquick_two_words
run_test wgquick-table-off-no-routes test_wgquick_table_off
run_test wgquick-userspace-lo-down test_userspace_lo_down
run_test wgquick-output-through-pipe test_wgquick_piped
tt_summary
