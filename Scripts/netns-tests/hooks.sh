#!/usr/bin/env bash
# wg-quick's own keys under `tunctl up` (issue 15): PreUp/PostUp/PreDown/PostDown run in
# wg-quick's order with %i replaced, a failing PostUp stops the start with its exit status and
# leaves no link; SaveConfig writes the running peers back (0600, no fe80:: address) and the
# file comes up again; DNS goes through resolvconf (a stub on PATH records its arguments: the
# system's resolv.conf is never touched) or fails in one line naming it; SIGHUP applies a changed
# Address, MTU and ListenPort, and a reload that fails keeps everything.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# server_conf FILE [EXTRA_INTERFACE_LINE...]: A's config (198.18.1.1/24, port 51820, peer b
# without endpoint), with the extra [Interface] lines given.
server_conf() {
  local file=$1 line
  shift
  {
    echo "[Interface]"
    echo "PrivateKey = $(cat "$KEYS/a.key")"
    echo "Address = 198.18.1.1/24, 2001:db8:1::1/64"
    echo "ListenPort = 51820"
    for line in "$@"; do echo "$line"; done
    echo
    echo "[Peer]"
    echo "PublicKey = $(cat "$KEYS/b.pub")"
    echo "AllowedIPs = 198.18.1.2/32"
  } >"$file"
  chmod 600 "$file"
}

one_ns() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b && tt_keypair "$KEYS" c || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
}

link_state() { if nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1; then echo link; else echo nolink; fi; }

# (a) The four hooks, in order, with %i, each seeing the link as wg-quick's order says. PostUp
# and PreDown ask the daemon itself (`wg show`): a hook run on the queue that serves the control
# socket would wait for its own answer.
test_hook_order() {
  one_ns || return 1
  local m="$TT_TEST_DIR/markers" t0 t1
  local here="ip link show %i >/dev/null 2>&1 && echo link || echo nolink"
  server_conf "$CONF_A" \
    "PreUp = echo \"preup %i \$($here)\" >> $m" \
    "PostUp = echo \"postup %i \$($here) \$(ip -o addr show dev %i | grep -c 198.18.1.1/24) \$(wg show %i listen-port)\" >> $m" \
    "PostUp = echo postup2 %i >> $m" \
    "PreDown = echo \"predown %i \$($here) \$(timeout 5 wg show %i listen-port)\" >> $m" \
    "PostDown = echo \"postdown %i \$($here)\" >> $m" || return 1
  t0=$(date +%s%N)
  start_tunctl "$NS_A" "$CONF_A" || return 1
  t1=$(date +%s%N)
  tt_log "tunctl up with 3 start-up hooks ready after $(((t1 - t0) / 1000000)) ms"
  PID_A=$TT_LAST_PID
  # Ready for `wg` before PostUp ends; a stop before then undoes the start without down hooks.
  wait_for 5 grep -q "$IF_A: started; PreDown" "$TT_LAST_LOG" || fail "PostUp did not finish" || return 1
  kill -TERM "$PID_A"
  wait_exit "$PID_A" 15 || fail "still running 15 s after SIGTERM" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "exit status $TT_EXIT_CODE after SIGTERM, expected 0" || return 1
  local want got
  want=$(printf '%s\n' "preup $IF_A nolink" "postup $IF_A link 1 51820" "postup2 $IF_A" "predown $IF_A link 51820" \
    "postdown $IF_A nolink")
  got=$(cat "$m" 2>/dev/null)
  [[ "$got" == "$want" ]] || fail "hook markers, expected: $(echo "$want" | tr '\n' '|') got: $(echo "$got" | tr '\n' '|')" ||
    return 1
  [[ $(link_state) == nolink ]] || fail "link left behind" || return 1
}

# (a) A failing PostUp: tunctl up exits with the hook's status, one line naming the hook's line,
# its status and its stderr; no link, socket or down hook is left. A failing PreUp: no link.
test_failing_postup() {
  one_ns || return 1
  local m="$TT_TEST_DIR/markers" err="$TT_TEST_DIR/up.err" rc=0
  server_conf "$CONF_A" \
    "PostUp = echo postup %i >> $m" \
    "PostUp = echo boom-%i >&2; exit 7" \
    "PostDown = echo postdown %i >> $m" || return 1
  nsx "$NS_A" timeout 30 "$TUNCTL" up "$CONF_A" >/dev/null 2>"$err" || rc=$?
  tt_log "tunctl up with a failing PostUp: exit $rc, said: $(grep Error: "$err")"
  ((rc == 7)) || fail "exit status $rc, expected the hook's 7 (stderr: $(tail -n 3 "$err"))" || return 1
  local line
  line=$(grep '^Error: ' "$err")
  [[ $(grep -c '^Error: ' "$err") == 1 ]] || fail "expected one Error: line, got: $(cat "$err")" || return 1
  [[ "$line" == *"$IF_A.conf:6: [Interface] PostUp: the command failed with exit status 7: boom-$IF_A"* ]] ||
    fail "error line does not name the hook, its status and its stderr: $line" || return 1
  [[ $(link_state) == nolink ]] || fail "a failed PostUp left the link behind" || return 1
  [[ ! -e "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "a failed PostUp left the control socket behind" || return 1
  [[ $(cat "$m") == "postup $IF_A" ]] || fail "markers after a failed start: $(tr '\n' '|' <"$m") (PostDown must not run)" ||
    return 1
  # A failing PreUp: nothing is made at all.
  server_conf "$CONF_A" "PreUp = exit 3" "PostUp = echo postup %i >> $m" || return 1
  rc=0
  nsx "$NS_A" timeout 30 "$TUNCTL" up "$CONF_A" >/dev/null 2>"$err" || rc=$?
  ((rc == 3)) || fail "failing PreUp: exit status $rc, expected 3" || return 1
  has -F "$IF_A.conf:5: [Interface] PreUp: the command failed with exit status 3" "$err" ||
    fail "failing PreUp: $(cat "$err")" || return 1
  [[ $(link_state) == nolink ]] || fail "a failed PreUp left a link" || return 1
  [[ $(wc -l <"$m") == 1 ]] || fail "PostUp ran after a failed PreUp" || return 1
}

# (b) SaveConfig: a peer added with `wg set` while up is in the file after exit, the file is 0600,
# holds no fe80:: address although the link had one, and comes up again.
test_save_config() {
  one_ns || return 1
  tt_psk "$KEYS/ac.psk" || return 1
  # A random link-local address on new links in this namespace: the kernel's own, never saved.
  nsx "$NS_A" sysctl -qw net.ipv6.conf.default.addr_gen_mode=3 || fail "cannot set addr_gen_mode" || return 1
  server_conf "$CONF_A" "SaveConfig = true" "PostUp = true %i" || return 1
  # The key from a file, by a path relative to the config: SaveConfig keeps the reference.
  sed -i 's|^PrivateKey = .*|PrivateKeyFile = keys/a.key|' "$CONF_A"
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  wait_for 5 grep -q "$IF_A: started; PreDown" "$TT_LAST_LOG" || fail "PostUp did not finish" || return 1
  wait_for 5 bash -c "ip -n $NS_A -6 addr show dev $IF_A scope link | grep -q fe80" ||
    fail "the link never got a kernel fe80:: address (the test could not tell)" || return 1
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/c.pub")" allowed-ips 198.18.3.0/24,2001:db8:3::/64 \
    endpoint 198.18.0.9:51999 persistent-keepalive 15 preshared-key "$KEYS/ac.psk" ||
    fail "wg set peer c" || return 1
  local t0 t1
  t0=$(date +%s%N)
  kill -TERM "$PID_A"
  wait_exit "$PID_A" 15 || fail "still running 15 s after SIGTERM" || return 1
  t1=$(date +%s%N)
  tt_log "SIGTERM to exit with SaveConfig: $(((t1 - t0) / 1000000)) ms"
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "exit status $TT_EXIT_CODE, expected 0 (log: $TT_LAST_LOG)" || return 1
  [[ $(stat -c %a "$CONF_A") == 600 ]] || fail "saved file mode $(stat -c %a "$CONF_A"), expected 600" || return 1
  local text
  text=$(cat "$CONF_A")
  has -i fe80 <<<"$text" && { fail "the saved file holds an fe80 address: $(grep -i fe80 <<<"$text")"; return 1; }
  has -F "PublicKey = $(cat "$KEYS/c.pub")" <<<"$text" || fail "peer c is not in the saved file" || return 1
  has -F "PresharedKey = $(cat "$KEYS/ac.psk")" <<<"$text" || fail "peer c's preshared key not saved" || return 1
  has -F "AllowedIPs = 198.18.3.0/24, 2001:db8:3::/64" <<<"$text" || fail "peer c's allowed IPs not saved" || return 1
  has -F "Endpoint = 198.18.0.9:51999" <<<"$text" || fail "peer c's endpoint not saved" || return 1
  has -F "PersistentKeepalive = 15" <<<"$text" || fail "peer c's keepalive not saved" || return 1
  has -F "PublicKey = $(cat "$KEYS/b.pub")" <<<"$text" || fail "peer b lost" || return 1
  has -Fx "PrivateKeyFile = keys/a.key" <<<"$text" || fail "PrivateKeyFile not kept" || return 1
  has -F "$(cat "$KEYS/a.key")" <<<"$text" && { fail "the private key was copied into the file"; return 1; }
  has -F "Address = 198.18.1.1/24" <<<"$text" && has -F "Address = 2001:db8:1::1/64" <<<"$text" ||
    fail "addresses not saved" || return 1
  has -F "SaveConfig = true" <<<"$text" && has -F "PostUp = true %i" <<<"$text" ||
    fail "SaveConfig or the hook was dropped" || return 1
  [[ -z $(find "$TT_TEST_DIR" -maxdepth 1 -name "*.tmp.*") ]] || fail "temporary file left behind" || return 1
  # It comes up again, with both peers.
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  [[ $(nsx "$NS_A" wg show "$IF_A" peers | wc -l) == 2 ]] || fail "second start does not have both peers" || return 1
  [[ $(nsx "$NS_A" wg show "$IF_A" persistent-keepalive | grep -c 15) == 1 ]] || fail "keepalive not restored" || return 1
}

# up_read_only DIR: `tunctl up $CONF_A` in A, in a private mount namespace where DIR is read-only.
up_read_only() {
  # shellcheck disable=SC2016 # the inner shell expands its own arguments
  ip netns exec "$NS_A" timeout 20 unshare -m sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" &&
    exec "$2" up "$3"' sh "$1" "$TUNCTL" "$CONF_A"
}

# (b2) SaveConfig where the config's directory is read-only (tunctl@.service's ProtectSystem=strict
# makes /etc so): refused at start with one line naming the line and what to do, nothing made,
# rather than the running configuration lost at exit. Without SaveConfig the same file starts.
test_save_config_read_only() {
  one_ns || return 1
  local dir="$TT_TEST_DIR/ro" err="$TT_TEST_DIR/ro.err" rc=0 line
  mkdir -p "$dir"
  CONF_A="$dir/$IF_A.conf"
  server_conf "$CONF_A" "SaveConfig = true" || return 1
  # A private mount namespace inside the test's network namespace, the directory bound read-only.
  up_read_only "$dir" >/dev/null 2>"$err" || rc=$?
  line=$(grep '^Error: ' "$err")
  tt_log "SaveConfig with a read-only directory: exit $rc: $line"
  ((rc != 0 && rc != 124)) || fail "exit status $rc, expected a refusal (stderr: $(tail -n 3 "$err"))" || return 1
  [[ $(grep -c . "$err") == 1 ]] || fail "expected one line on stderr, got: $(cat "$err")" || return 1
  [[ "$line" == *"$IF_A.conf:5: [Interface] SaveConfig = true, but $dir cannot be written here (Read-only file system)"* &&
    "$line" == *"ReadWritePaths=$dir"* ]] || fail "the line does not name SaveConfig's line and what to do: $line" ||
    return 1
  [[ $(link_state) == nolink ]] || fail "a refused start left a link" || return 1
  # The check is SaveConfig's alone: the same directory, read-only, without it.
  server_conf "$CONF_A" || return 1
  up_read_only "$dir" >"$TT_TEST_DIR/ro.log" 2>&1 &
  PID_A=$!
  tt_register_pid "$PID_A"
  wait_for 10 nsx "$NS_A" wg show "$IF_A" public-key >/dev/null ||
    fail "without SaveConfig the read-only config did not start: $(tail -n 3 "$TT_TEST_DIR/ro.log")" || return 1
  kill -TERM "$PID_A"
  wait_exit "$PID_A" 15 || fail "still running 15 s after SIGTERM" || return 1
}

# resolvconf_name IF: the name wg-quick gives resolvconf (prefix from interface-order).
resolvconf_name() {
  local prefix=""
  if [[ -f /etc/resolvconf/interface-order ]]; then
    prefix=$(sed -n 's/^\([A-Za-z0-9-][A-Za-z0-9-]*\)\*$/\1./p' /etc/resolvconf/interface-order | head -n 1)
  fi
  echo "$prefix$1"
}

# (c) DNS: without resolvconf one line names it and nothing is made; with a stub resolvconf on
# PATH, it is called as wg-quick calls it, before PostUp, again for a reload that changes DNS,
# and the record is removed at exit.
test_dns() {
  one_ns || return 1
  local log="$TT_TEST_DIR/resolvconf.log" err="$TT_TEST_DIR/up.err" rc=0 bin="$TT_TEST_DIR/bin" empty="$TT_TEST_DIR/empty"
  mkdir -p "$bin" "$empty"
  server_conf "$CONF_A" "DNS = 192.0.2.53, 2001:db8::53, example.com" "PostUp = echo postup >> $log" || return 1
  ip netns exec "$NS_A" env PATH="$empty" "$TUNCTL" up "$CONF_A" >/dev/null 2>"$err" || rc=$?
  ((rc != 0)) || fail "tunctl up with DNS and no resolvconf succeeded" || return 1
  [[ $(wc -l <"$err") == 1 ]] || fail "expected one line, got: $(cat "$err")" || return 1
  has -F "$IF_A.conf:5: [Interface] DNS: resolvconf is not installed" "$err" ||
    fail "the error does not name resolvconf and the DNS line: $(cat "$err")" || return 1
  tt_log "no resolvconf: $(cat "$err")"
  [[ $(link_state) == nolink ]] || fail "a link was made although DNS cannot be set" || return 1

  cat >"$bin/resolvconf" <<EOF
#!/bin/sh
echo "args: \$*" >> "$log"
sed 's/^/stdin: /' >> "$log"
EOF
  chmod 755 "$bin/resolvconf"
  PATH="$bin:$PATH" start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  wait_for 5 grep -q "$IF_A: started; PreDown" "$TT_LAST_LOG" || fail "PostUp did not finish" || return 1
  # A reload with other DNS servers hands resolvconf the new record.
  sed -i 's/^DNS = .*/DNS = 198.51.100.53/' "$CONF_A"
  kill -HUP "$PID_A"
  wait_for 5 grep -q "stdin: nameserver 198.51.100.53" "$log" || fail "the reloaded DNS did not reach resolvconf" || return 1
  kill -TERM "$PID_A"
  wait_exit "$PID_A" 15 || fail "still running 15 s after SIGTERM" || return 1
  local name want got
  name=$(resolvconf_name "$IF_A")
  want=$(printf '%s\n' "args: -a $name -m 0 -x" "stdin: nameserver 192.0.2.53" "stdin: nameserver 2001:db8::53" \
    "stdin: search example.com" "postup" "args: -a $name -m 0 -x" "stdin: nameserver 198.51.100.53" "args: -d $name -f")
  got=$(cat "$log")
  [[ "$got" == "$want" ]] || fail "resolvconf calls, expected: $(echo "$want" | tr '\n' '|') got: $(echo "$got" | tr '\n' '|')" ||
    return 1
}

# (d) SIGHUP with a changed Address, MTU and ListenPort applies all three, in one log line; the
# peer reaches the new address once it has the new endpoint. Then a reload that cannot be
# applied (its port is taken) changes nothing.
test_reload_interface() {
  underlay_pair 0 || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --endpoint "$U_B:51821" --allowed 198.18.1.2/32 || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24 --port 51821 \
    --peer "$KEYS/a.pub" --endpoint "$U_A:51820" --allowed 198.18.1.1/32,198.18.1.5/32 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  LOG_A=$TT_LAST_LOG
  start_tunctl "$NS_B" "$CONF_B" || return 1
  ping_until "$NS_B" 198.18.1.1 10 || fail "tunnel not up before the reload" || return 1

  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.5/24 --port 51830 --mtu 1400 \
    --peer "$KEYS/b.pub" --endpoint "$U_B:51821" --allowed 198.18.1.2/32 || return 1
  local t0 t1
  t0=$(date +%s%N)
  kill -HUP "$PID_A"
  wait_for 10 grep -q "$IF_A: reloaded" "$LOG_A" || fail "no reload line within 10 s (log: $LOG_A)" || return 1
  t1=$(date +%s%N)
  tt_log "SIGHUP to the reload line: $(((t1 - t0) / 1000000)) ms"
  local line
  line=$(grep "$IF_A: reloaded" "$LOG_A")
  tt_log "reload said: ${line#*] }"
  [[ $(grep -c "$IF_A: reloaded" "$LOG_A") == 1 ]] || fail "more than one reload line" || return 1
  [[ "$line" == *"address +198.18.1.5/24, address -198.18.1.1/24, mtu 1420→1400, listen port 51820→51830, 1 peer"* ]] ||
    fail "the reload line does not name the three changes: $line" || return 1
  nsx "$NS_A" ip -o -4 addr show dev "$IF_A" | has "198.18.1.5/24" || fail "198.18.1.5/24 not on the link" || return 1
  nsx "$NS_A" ip -o -4 addr show dev "$IF_A" | has "198.18.1.1/" && { fail "198.18.1.1 still on the link"; return 1; }
  nsx "$NS_A" ip -o link show dev "$IF_A" | has " mtu 1400 " || fail "link MTU is not 1400" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" mtu) == 1400 ]] || fail "show --json does not report MTU 1400" || return 1
  nsx "$NS_A" ss -Huln "sport = :51830" | has . || fail "not listening on UDP 51830" || return 1
  nsx "$NS_A" ss -Huln "sport = :51820" | has . && { fail "UDP 51820 still bound"; return 1; }
  nsx "$NS_B" wg set "$IF_B" peer "$(cat "$KEYS/a.pub")" endpoint "$U_A:51830" || fail "wg set endpoint on B" || return 1
  ping_until "$NS_B" 198.18.1.5 10 || fail "B cannot reach A's new address after the reload" || return 1

  # The port is taken: the reload fails, and neither the address nor the MTU it also changes apply.
  ip netns exec "$NS_A" python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 51840))
time.sleep(60)' &
  tt_register_pid $!
  wait_for 5 bash -c "ip netns exec $NS_A ss -Huln 'sport = :51840' | grep -q ." || fail "port holder not up" || return 1
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.6/24 --port 51840 --mtu 1380 \
    --peer "$KEYS/b.pub" --endpoint "$U_B:51821" --allowed 198.18.1.2/32 || return 1
  kill -HUP "$PID_A"
  wait_for 10 grep -q "$IF_A: reload failed" "$LOG_A" || fail "no 'reload failed' line within 10 s" || return 1
  tt_log "failed reload said: $(grep "$IF_A: reload failed" "$LOG_A" | sed 's/.*\] //')"
  grep "$IF_A: reload failed" "$LOG_A" | has -F "ListenPort = 51840: bind failed" || fail "the failure does not say why" || return 1
  nsx "$NS_A" ip -o -4 addr show dev "$IF_A" | has "198.18.1.6/" && { fail "a failed reload added 198.18.1.6"; return 1; }
  nsx "$NS_A" ip -o -4 addr show dev "$IF_A" | has "198.18.1.5/24" || fail "a failed reload removed 198.18.1.5" || return 1
  nsx "$NS_A" ip -o link show dev "$IF_A" | has " mtu 1400 " || fail "a failed reload changed the MTU" || return 1
  nsx "$NS_A" ss -Huln "sport = :51830" | has . || fail "a failed reload lost UDP 51830" || return 1
  # An invalid value: refused at parse, nothing changes either.
  local failures
  failures=$(grep -c "reload failed" "$LOG_A")
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.6/24 --port 51830 --mtu 99999 \
    --peer "$KEYS/b.pub" --endpoint "$U_B:51821" --allowed 198.18.1.2/32 || return 1
  kill -HUP "$PID_A"
  wait_for 10 bash -c "(( \$(grep -c 'reload failed' '$LOG_A') > $failures ))" || fail "invalid MTU: no 'reload failed'" ||
    return 1
  grep "reload failed" "$LOG_A" | tail -n 1 | has -F "MTU: \"99999\" is not an MTU" || fail "the failure does not say why" || return 1
  nsx "$NS_A" ip -o -4 addr show dev "$IF_A" | has "198.18.1.6/" && { fail "an invalid reload added 198.18.1.6"; return 1; }
  ping_ok "$NS_B" 198.18.1.5 3 || fail "B lost A after the failed reloads" || return 1
}

tt_require --tunctl wg python3 ss
tt_init
run_test hooks-run-in-wg-quick-order test_hook_order
run_test failing-postup-stops-the-start test_failing_postup
run_test save-config-writes-running-peers test_save_config
run_test save-config-read-only-refused-at-start test_save_config_read_only
run_test dns-through-resolvconf test_dns
run_test sighup-applies-address-mtu-port test_reload_interface
tt_summary
