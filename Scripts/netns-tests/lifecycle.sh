#!/usr/bin/env bash
# The daemon's life: it cleans up after itself (SIGTERM, SIGINT, `tunctl down`, its link deleted
# from outside), reloads peers on SIGHUP, refuses a bad config with one line and touches nothing;
# and the key commands produce keys the reference `wg` tool agrees with.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# one_node: namespace A with tunctl up, one peer (no endpoint) with AllowedIPs 198.18.2.0/24.
one_node() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port 51820 --mtu 1380 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24,2001:db8:2::/64 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
}

# What a running daemon must have made.
assert_present() {
  nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "no link $IF_A" || return 1
  nsx "$NS_A" ip -o link show "$IF_A" | has "mtu 1380" || fail "MTU 1380 not applied" || return 1
  nsx "$NS_A" ip -o link show "$IF_A" | has "UP" || fail "$IF_A is not up" || return 1
  [[ -n $(nsx "$NS_A" ip route show 198.18.2.0/24 dev "$IF_A") ]] || fail "no route 198.18.2.0/24 dev $IF_A" || return 1
  [[ -n $(nsx "$NS_A" ip -6 route show 2001:db8:2::/64 dev "$IF_A") ]] || fail "no route 2001:db8:2::/64 dev $IF_A" || return 1
  [[ -S "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "no control socket" || return 1
  local mode
  mode=$(stat -c %a "$TT_SOCK_DIR/$IF_A.sock")
  [[ "$mode" =~ ^[0-7]00$ ]] || fail "control socket mode $mode is not owner-only" || return 1
  nsx "$NS_A" ss -Huln "sport = :51820" | has . || fail "not listening on UDP 51820" || return 1
}

# Nothing may be left: link, routes, socket file, UDP port, process.
assert_gone() {
  nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 && { fail "link $IF_A left behind"; return 1; }
  [[ -z $(nsx "$NS_A" ip route show 198.18.2.0/24) ]] || fail "route 198.18.2.0/24 left behind" || return 1
  [[ -z $(nsx "$NS_A" ip -6 route show 2001:db8:2::/64) ]] || fail "route 2001:db8:2::/64 left behind" || return 1
  [[ ! -e "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "socket file $TT_SOCK_DIR/$IF_A.sock left behind" || return 1
  nsx "$NS_A" ss -Huln "sport = :51820" | has . && { fail "UDP 51820 still bound"; return 1; }
  pid_dead "$PID_A" || fail "process $PID_A still running" || return 1
  [[ -z $(ip netns pids "$NS_A") ]] || fail "processes left in the namespace: $(ip netns pids "$NS_A")" || return 1
}

test_signal() {
  local sig=$1
  one_node && assert_present || return 1
  kill "-$sig" "$PID_A"
  wait_exit "$PID_A" 10 || fail "still running 10 s after SIG$sig" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "exit status $TT_EXIT_CODE after SIG$sig, expected 0" || return 1
  assert_gone
}
test_sigterm() { test_signal TERM; }
test_sigint() { test_signal INT; }

test_down() {
  one_node && assert_present || return 1
  nsx "$NS_A" timeout 10 "$TUNCTL" down "$IF_A" || fail "tunctl down $IF_A failed" || return 1
  wait_exit "$PID_A" 10 || fail "daemon still running 10 s after tunctl down" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "daemon exit status $TT_EXIT_CODE after down" || return 1
  assert_gone
}

test_link_deleted() {
  one_node && assert_present || return 1
  nsx "$NS_A" ip link del "$IF_A" || fail "could not delete $IF_A" || return 1
  wait_exit "$PID_A" 10 || fail "daemon still running 10 s after its link was deleted" || return 1
  tt_log "exit status after link deletion: $TT_EXIT_CODE"
  assert_gone
}

test_sighup_reload() {
  one_node || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 1 ]] ||
    fail "expected 1 peer before reload" || return 1
  tt_keypair "$KEYS" c || return 1
  printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.18.3.0/24\nPersistentKeepalive = 7\n' "$(cat "$KEYS/c.pub")" >>"$CONF_A"
  kill -HUP "$PID_A"
  wait_for 10 sh -c "ip netns exec '$NS_A' '$TUNCTL' show '$IF_A' --json | grep -q '$(cat "$KEYS/c.pub")'" ||
    fail "new peer not present 10 s after SIGHUP" || return 1
  pid_alive "$PID_A" || fail "daemon died on SIGHUP" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/c.pub" persistent_keepalive) == 7 ]] || fail "reloaded peer's keepalive" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips) == "198.18.2.0/24,2001:db8:2::/64" ]] ||
    fail "old peer changed by reload" || return 1
  # And removing it again.
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port 51820 --mtu 1380 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24,2001:db8:2::/64 || return 1
  kill -HUP "$PID_A"
  wait_for 10 sh -c "! ip netns exec '$NS_A' '$TUNCTL' show '$IF_A' --json | grep -q '$(cat "$KEYS/c.pub")'" ||
    fail "removed peer still present 10 s after SIGHUP" || return 1
  pid_alive "$PID_A" || fail "daemon died on the second SIGHUP" || return 1
}

# bad_config NAME CONTENT: tunctl up must exit non-zero with exactly one line on stderr and
# create no link, route or socket.
bad_config() {
  local name=$1 content=$2 iface conf err rc=0
  BAD_N=$((${BAD_N:-0} + 1))
  iface="$(if_name x)$BAD_N"
  conf="$TT_TEST_DIR/$iface.conf"
  printf '%s\n' "$content" >"$conf"
  chmod 600 "$conf"
  err="$TT_TEST_DIR/$name.stderr"
  nsx "$NS_A" timeout 10 "$TUNCTL" up "$conf" >"$TT_TEST_DIR/$name.stdout" 2>"$err" || rc=$?
  ((rc != 0 && rc != 124)) || fail "bad config '$name': exit status $rc (0 = accepted, 124 = hung)" || return 1
  local lines
  lines=$(grep -c . "$err")
  [[ "$lines" == 1 ]] || fail "bad config '$name': $lines lines on stderr, expected 1: $(head -c 600 "$err")" || return 1
  tt_log "bad config '$name' -> exit $rc: $(cat "$err")"
  nsx "$NS_A" ip link show "$iface" >/dev/null 2>&1 && { fail "bad config '$name' created link $iface"; return 1; }
  [[ ! -e "$TT_SOCK_DIR/$iface.sock" ]] || fail "bad config '$name' created a socket" || return 1
  [[ -z $(nsx "$NS_A" ip route show 198.18.9.0/24) ]] || fail "bad config '$name' added a route" || return 1
  return 0
}

test_bad_config() {
  NS_A=$(ns_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  local k p links_before
  k=$(cat "$KEYS/a.key")
  p=$(cat "$KEYS/b.pub")
  links_before=$(nsx "$NS_A" ip -o link show | wc -l)
  bad_config nokey "$(printf '[Interface]\nAddress = 198.18.1.1/24\nListenPort = 51820\n')" &&
    bad_config badkey "$(printf '[Interface]\nPrivateKey = not-base64!!\nAddress = 198.18.1.1/24\n')" &&
    bad_config shortkey "$(printf '[Interface]\nPrivateKey = AAAA\nAddress = 198.18.1.1/24\n')" &&
    bad_config badaddr "$(printf '[Interface]\nPrivateKey = %s\nAddress = 198.18.1.300/24\n' "$k")" &&
    bad_config badport "$(printf '[Interface]\nPrivateKey = %s\nListenPort = 70000\n' "$k")" &&
    bad_config badallowed "$(printf '[Interface]\nPrivateKey = %s\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.18.9.0/33\n' "$k" "$p")" &&
    bad_config badpeerkey "$(printf '[Interface]\nPrivateKey = %s\n[Peer]\nPublicKey = xyz\nAllowedIPs = 198.18.9.0/24\n' "$k")" &&
    bad_config badendpoint "$(printf '[Interface]\nPrivateKey = %s\n[Peer]\nPublicKey = %s\nEndpoint = 198.18.0.2\nAllowedIPs = 198.18.9.0/24\n' "$k" "$p")" || return 1
  local rc=0
  nsx "$NS_A" timeout 10 "$TUNCTL" up "$TT_TEST_DIR/does-not-exist.conf" 2>"$TT_TEST_DIR/missing.stderr" || rc=$?
  ((rc != 0 && rc != 124)) || fail "missing config file: exit $rc" || return 1
  [[ $(grep -c . "$TT_TEST_DIR/missing.stderr") == 1 ]] || fail "missing config: not one line on stderr" || return 1
  [[ $(nsx "$NS_A" ip -o link show | wc -l) == "$links_before" ]] || fail "links were created by bad configs" || return 1
}

test_keys() {
  local d="$TT_TEST_DIR/k" priv pub psk
  mkdir -p "$d"
  priv=$("$TUNCTL" genkey) || fail "tunctl genkey" || return 1
  [[ $(printf '%s' "$priv" | base64 -d 2>/dev/null | wc -c) == 32 ]] || fail "genkey is not base64 of 32 bytes: $priv" || return 1
  pub=$(printf '%s\n' "$priv" | "$TUNCTL" pubkey) || fail "tunctl pubkey" || return 1
  [[ "$pub" == "$(printf '%s\n' "$priv" | wg pubkey)" ]] || fail "tunctl pubkey disagrees with wg pubkey" || return 1
  # And for a key made by wg.
  priv=$(wg genkey)
  [[ $(printf '%s\n' "$priv" | "$TUNCTL" pubkey) == "$(printf '%s\n' "$priv" | wg pubkey)" ]] ||
    fail "tunctl pubkey disagrees with wg pubkey on a wg key" || return 1
  psk=$("$TUNCTL" genpsk) || fail "tunctl genpsk" || return 1
  [[ $(printf '%s' "$psk" | base64 -d 2>/dev/null | wc -c) == 32 ]] || fail "genpsk is not base64 of 32 bytes" || return 1
  [[ "$("$TUNCTL" genkey)" != "$("$TUNCTL" genkey)" ]] || fail "two genkey calls gave the same key" || return 1
  "$TUNCTL" keygen --dir "$d" node1 || fail "tunctl keygen --dir" || return 1
  [[ $(stat -c %a "$d/node1.key") == 600 ]] || fail "node1.key mode is $(stat -c %a "$d/node1.key"), expected 600" || return 1
  [[ $(wg pubkey <"$d/node1.key") == "$(cat "$d/node1.pub")" ]] || fail "keygen's .pub does not match its .key" || return 1
  local rc=0
  echo "garbage" | "$TUNCTL" pubkey >/dev/null 2>&1 || rc=$?
  ((rc != 0)) || fail "pubkey accepted garbage" || return 1
}

tt_require --tunctl wg python3 ss
tt_init
run_test sigterm-cleans-up test_sigterm
run_test sigint-cleans-up test_sigint
run_test down-cleans-up test_down
run_test link-deleted-daemon-exits test_link_deleted
run_test sighup-reloads-peers test_sighup_reload
run_test bad-config-touches-nothing test_bad_config
run_test key-commands test_keys
tt_summary
