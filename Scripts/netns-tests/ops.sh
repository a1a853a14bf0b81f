#!/usr/bin/env bash
# Operability (issue 19): the Prometheus metrics (`tunctl show --format prometheus` and the
# MetricsListen HTTP endpoint) scraped during a transfer, their byte counters checked against
# `wg show dump`; `tunctl show` lists only the caller's namespace and prints the kernel's MTU;
# one-line errors for a UDP port in use, a missing CAP_NET_ADMIN, a name held in another
# namespace and a non-loopback MetricsListen; `tunctl --version`; Scripts/install.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

METRICS_PORT=9586

# now_ms: wall clock in milliseconds, for the "within N s" figures.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# lines TEXT: how many non-empty lines TEXT has.
lines() { printf '%s\n' "$1" | grep -c .; }

# metric NAME PUBKEY < EXPOSITION: the value of NAME's sample whose public_key label is PUBKEY
# (empty when there is none). Label values hold no spaces, so the value is the last field.
metric() {
  awk -v name="$1" -v key="public_key=\"$2\"" 'index($0, name "{") == 1 && index($0, key) { print $NF }'
}

# dump_bytes NS IFACE PUBKEY: "RX TX" of the peer in `wg show IFACE dump` (the reference tool).
dump_bytes() {
  nsx "$1" wg show "$2" dump | awk -v key="$3" '$1 == key { print $6, $7 }'
}

# scrape_http NS [HEADER]: the endpoint's body, or the value of response header HEADER (5 s at
# most); fails on an answer other than 200.
scrape_http() {
  nsx "$1" python3 -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
    body = reply.read().decode()
    sys.stdout.write(reply.headers.get(sys.argv[2], "") + "\n" if len(sys.argv) > 2 else body)
' "http://127.0.0.1:$METRICS_PORT/metrics" "${@:2}"
}

# add_interface_line CONF LINE: LINE right after [Interface].
add_interface_line() {
  sed -i "/^\[Interface\]/a $2" "$1"
}

# one_node: namespace a with a key pair (NS_A, IF_A, KEYS); CONF_A names its config, not written.
one_node() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && tt_keypair "$KEYS" a || return 1
  tt_register_iface "$IF_A"
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
}

# one_line_failure WHAT OUT RC: the command failed (non-zero, not a timeout) with exactly one line.
one_line_failure() {
  local what=$1 out=$2 rc=$3
  tt_log "$what: exit $rc: $out"
  ((rc != 0 && rc != 124)) || fail "$what: exit status $rc, expected a failure" || return 1
  (($(lines "$out") == 1)) || fail "$what: $(lines "$out") lines of output, expected 1" || return 1
}

test_metrics_during_transfer() {
  two_nodes_setup --no-start || return 1
  add_interface_line "$CONF_A" "MetricsListen = 127.0.0.1:$METRICS_PORT"
  start_tunctl "$NS_A" "$CONF_A" || return 1
  start_tunctl "$NS_B" "$CONF_B" || return 1
  ping_until "$NS_B" 198.18.1.1 10 || fail "no ping through the tunnel" || return 1
  local b_pub text http before after i
  b_pub=$(cat "$KEYS/b.pub")
  # Both forms, and the exporter's names, labels and HELP/TYPE lines.
  text=$(nsx "$NS_A" "$TUNCTL" show "$IF_A" --format prometheus) || fail "show --format prometheus failed" || return 1
  http=$(scrape_http "$NS_A") || fail "no answer from http://127.0.0.1:$METRICS_PORT/metrics in $NS_A" || return 1
  local type
  type=$(scrape_http "$NS_A" Content-Type)
  [[ $type == "text/plain; version=0.0.4"* ]] || fail "the endpoint answers with Content-Type '$type'" || return 1
  local form body
  for form in textfile http; do
    if [[ $form == textfile ]]; then body=$text; else body=$http; fi
    has -x '# TYPE wireguard_sent_bytes_total counter' <<<"$body" || fail "$form: no TYPE line for wireguard_sent_bytes_total" || return 1
    has -x '# TYPE wireguard_received_bytes_total counter' <<<"$body" || fail "$form: no TYPE line for wireguard_received_bytes_total" || return 1
    has -x '# TYPE wireguard_latest_handshake_seconds gauge' <<<"$body" || fail "$form: no TYPE line for wireguard_latest_handshake_seconds" || return 1
    has -x '# HELP wireguard_sent_bytes_total Bytes sent to the peer' <<<"$body" || fail "$form: no HELP line for wireguard_sent_bytes_total" || return 1
    has -F "wireguard_received_bytes_total{interface=\"$IF_A\",public_key=\"$b_pub\",allowed_ips=\"198.18.1.2/32,2001:db8:1::2/128\"} " <<<"$body" ||
      fail "$form: no received-bytes sample labelled interface, public_key, allowed_ips as the exporter does" || return 1
    has -E "^tunctl_handshakes_total\{interface=\"$IF_A\"\} [1-9]" <<<"$body" || fail "$form: tunctl_handshakes_total is missing or 0" || return 1
    has -E "^wireguard_latest_handshake_seconds\{.*public_key=\"${b_pub//+/\\+}\".*\} [1-9][0-9]{9}" <<<"$body" ||
      fail "$form: the latest handshake is not a Unix time" || return 1
    ! has -i 'private' <<<"$body" || fail "$form: the exposition mentions a private key" || return 1
  done

  # B sends to A for 8 s at up to about 16 MB/s (bounded: 320 KiB every 20 ms, 400 chunks at most),
  # so the five scrapes below fall inside the transfer even on a slow machine; it prints the
  # bytes it sent.
  ip netns exec "$NS_A" timeout 20 socat -u TCP4-LISTEN:5001,bind=198.18.1.1,reuseaddr OPEN:/dev/null \
    2>>"$TT_TEST_DIR/socat.log" &
  local listener=$!
  tt_register_pid "$listener"
  wait_for 5 sh -c "ip netns exec '$NS_A' ss -Htln 'sport = :5001' | grep -q ." || fail "listener did not come up" || return 1
  ip netns exec "$NS_B" timeout 20 python3 -c '
import socket, sys, time
s = socket.create_connection(("198.18.1.1", 5001), timeout=5)
chunk = b"\0" * 327680
sent = 0
deadline = time.monotonic() + 8
for _ in range(400):
    if time.monotonic() >= deadline:
        break
    s.sendall(chunk)
    sent += len(chunk)
    time.sleep(0.02)
s.close()
print(sent)' >"$TT_TEST_DIR/sent" 2>>"$TT_TEST_DIR/sender.log" &
  local sender=$!
  tt_register_pid "$sender"
  # During the transfer: each HTTP scrape, then the dump, then a textfile scrape. The counters
  # only grow, so the dump's RX lies between the two scrapes around it (the in-flight allowance:
  # what arrived between them), and every scrape is above the one before.
  local rx_http rx_dump rx_text last=0 moved=0 dump
  for ((i = 0; i < 5; i++)); do
    sleep 0.4
    rx_http=$(scrape_http "$NS_A" | metric wireguard_received_bytes_total "$b_pub")
    dump=$(dump_bytes "$NS_A" "$IF_A" "$b_pub")
    rx_dump=${dump% *}
    rx_text=$(nsx "$NS_A" "$TUNCTL" show "$IF_A" --format prometheus | metric wireguard_received_bytes_total "$b_pub")
    tt_log "scrape $i: http $rx_http, wg show dump $rx_dump, textfile $rx_text"
    [[ $rx_http =~ ^[0-9]+$ && $rx_text =~ ^[0-9]+$ && $rx_dump =~ ^[0-9]+$ ]] ||
      fail "scrape $i: a counter is missing (http '$rx_http', dump '$rx_dump', textfile '$rx_text')" || return 1
    ((rx_http <= rx_dump && rx_dump <= rx_text)) ||
      fail "scrape $i: wg show dump's $rx_dump is not between the HTTP scrape's $rx_http and the textfile's $rx_text" || return 1
    ((rx_http > last)) && moved=$((moved + 1))
    last=$rx_text
  done
  ((moved >= 4)) || fail "the received-bytes counter grew in only $moved of 5 scrapes during the transfer" || return 1
  wait_exit "$sender" 20 || fail "the sender did not finish" || return 1
  wait_exit "$listener" 5 || fail "the receiver did not finish" || return 1
  [[ $TT_EXIT_CODE == 0 ]] || fail "the sender failed (exit $TT_EXIT_CODE): $(tail -3 "$TT_TEST_DIR/sender.log")" || return 1

  # At rest (no keepalives are configured), the metrics and the dump agree to the byte, both ways.
  sleep 0.5
  http=$(scrape_http "$NS_A") || return 1
  dump=$(dump_bytes "$NS_A" "$IF_A" "$b_pub")
  after=$(dump_bytes "$NS_A" "$IF_A" "$b_pub")
  [[ "$dump" == "$after" ]] || fail "the counters still move at rest ($dump, then $after)" || return 1
  rx_http=$(metric wireguard_received_bytes_total "$b_pub" <<<"$http")
  local tx_http
  tx_http=$(metric wireguard_sent_bytes_total "$b_pub" <<<"$http")
  tt_log "at rest: metrics rx $rx_http tx $tx_http; wg show dump rx ${dump% *} tx ${dump#* }"
  [[ "$rx_http ${tx_http}" == "$dump" ]] || fail "at rest the metrics say rx $rx_http tx $tx_http, wg show dump $dump" || return 1
  # Every payload byte the sender wrote arrived, counted with its headers and tags on top.
  local sent
  sent=$(cat "$TT_TEST_DIR/sent")
  ((sent > 0 && rx_http >= sent)) || fail "the metrics count $rx_http bytes received, the sender wrote $sent" || return 1
  text=$(nsx "$NS_A" "$TUNCTL" show "$IF_A" --format prometheus)
  [[ "$(metric wireguard_received_bytes_total "$b_pub" <<<"$text") $(metric wireguard_sent_bytes_total "$b_pub" <<<"$text")" == "$dump" ]] ||
    fail "at rest the textfile form differs from wg show dump ($dump)" || return 1
  before=$(nsx "$NS_A" "$TUNCTL" show --format prometheus)
  has -F "interface=\"$IF_A\"" <<<"$before" || fail "show --format prometheus without a name leaves out $IF_A" || return 1
}

test_metrics_listen_refused() {
  one_node || return 1
  local out rc
  # In the file: the line, the key and what to do; nothing is created.
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 || return 1
  add_interface_line "$CONF_A" "MetricsListen = 0.0.0.0:$METRICS_PORT"
  rc=0
  out=$(nsx "$NS_A" timeout 10 "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  one_line_failure "MetricsListen = 0.0.0.0" "$out" "$rc" || return 1
  has -F "$IF_A.conf:2: [Interface] MetricsListen: " <<<"$out" || fail "the message does not name the file, line 2 and the key" || return 1
  has -F "127.0.0.1:PORT" <<<"$out" || fail "the message does not say what to use" || return 1
  ! nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "a refused start left $IF_A behind" || return 1
  # The flag: the same refusal.
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 || return 1
  rc=0
  out=$(nsx "$NS_A" timeout 10 "$TUNCTL" up "$CONF_A" --metrics-listen 192.0.2.1:9586 2>&1) || rc=$?
  one_line_failure "--metrics-listen 192.0.2.1:9586" "$out" "$rc" || return 1
  has -F -- "--metrics-listen 192.0.2.1:9586: not a loopback address" <<<"$out" || fail "the message does not name the flag" || return 1
  # A metrics port in use: the port and the line, and no link left.
  add_interface_line "$CONF_A" "MetricsListen = 127.0.0.1:$METRICS_PORT"
  ip netns exec "$NS_A" timeout 20 socat -u "TCP4-LISTEN:$METRICS_PORT,bind=127.0.0.1,reuseaddr" OPEN:/dev/null \
    2>>"$TT_TEST_DIR/socat.log" &
  tt_register_pid $!
  wait_for 5 sh -c "ip netns exec '$NS_A' ss -Htln 'sport = :$METRICS_PORT' | grep -q ." || fail "the blocker did not listen" || return 1
  rc=0
  out=$(nsx "$NS_A" timeout 10 "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  one_line_failure "MetricsListen port in use" "$out" "$rc" || return 1
  has -F "$IF_A.conf:2: MetricsListen = 127.0.0.1:$METRICS_PORT" <<<"$out" || fail "the message does not name the line and the address" || return 1
  has -F "sport = :$METRICS_PORT" <<<"$out" || fail "the message does not say how to find what holds the port" || return 1
  ! nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "a refused start left $IF_A behind" || return 1
}

# cpu_ticks PID: user + system clock ticks the process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# A local client holding more connections than the daemon has descriptors (LimitNOFILE=256, as
# the shipped unit sets) three times over: the tunnel's control socket keeps answering, the
# endpoint serves again afterwards, and the daemon's descriptors return to their count at rest.
# Idle, the endpoint costs next to no CPU.
test_metrics_flood() {
  one_node || return 1
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 || return 1
  add_interface_line "$CONF_A" "MetricsListen = 127.0.0.1:$METRICS_PORT"
  ip netns exec "$NS_A" prlimit --nofile=256 "$TUNCTL" up "$CONF_A" >"$TT_TEST_DIR/$IF_A.log" 2>&1 &
  PID_A=$!
  tt_register_pid "$PID_A"
  wait_for 15 scrape_http "$NS_A" >/dev/null || fail "the endpoint never answered (log: $(tail -3 "$TT_TEST_DIR/$IF_A.log"))" || return 1
  local rest t0 t1 hz round out
  sleep 0.5
  rest=$(find "/proc/$PID_A/fd" -mindepth 1 -maxdepth 1 | wc -l)
  hz=$(getconf CLK_TCK)
  t0=$(cpu_ticks "$PID_A")
  sleep 3
  t1=$(cpu_ticks "$PID_A")
  tt_log "idle with the endpoint listening: $((t1 - t0)) ticks of $((3 * hz)) in 3 s; $rest descriptors at rest"
  (((t1 - t0) * 100 <= 3 * hz)) || fail "idle, the daemon used $((t1 - t0)) ticks in 3 s (limit 1%)" || return 1
  for round in 1 2 3; do
    out=$(nsx "$NS_A" timeout 30 python3 -c '
import socket, subprocess, sys
held = []
for _ in range(400):
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=2))
    except OSError:
        break
show = subprocess.run([sys.argv[1], "show", sys.argv[2]], capture_output=True, timeout=10)
print(len(held), show.returncode)
for s in held:
    s.close()' "$TUNCTL" "$IF_A" "$METRICS_PORT") || fail "round $round: the client failed" || return 1
    tt_log "round $round: connections held, tunctl show's exit status: $out"
    [[ ${out#* } == 0 ]] || fail "round $round: tunctl show failed while the connections were held" || return 1
    pid_alive "$PID_A" || fail "round $round: the daemon died" || return 1
    wait_for 10 scrape_http "$NS_A" >/dev/null || fail "round $round: the endpoint did not serve again within 10 s" || return 1
  done
  # Descriptors: back to the count at rest (the server's own come and go with each re-listen).
  wait_for 10 sh -c "[ \$(find /proc/$PID_A/fd -mindepth 1 -maxdepth 1 | wc -l) -le $rest ]" ||
    fail "descriptors: $rest at rest, $(find "/proc/$PID_A/fd" -mindepth 1 -maxdepth 1 | wc -l) after three floods" || return 1
}

test_port_in_use() {
  one_node || return 1
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 || return 1
  ip netns exec "$NS_A" timeout 20 socat -u UDP6-RECV:51820 OPEN:/dev/null 2>>"$TT_TEST_DIR/socat.log" &
  tt_register_pid $!
  wait_for 5 sh -c "ip netns exec '$NS_A' ss -Hulpn 'sport = :51820' | grep -q ." || fail "the blocker did not bind" || return 1
  local out rc=0
  out=$(nsx "$NS_A" timeout 10 "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  one_line_failure "ListenPort in use" "$out" "$rc" || return 1
  has -F "UDP port 51820 is in use" <<<"$out" || fail "the message does not name the port" || return 1
  # write_conf puts ListenPort on line 4: [Interface], PrivateKey, Address, ListenPort.
  has -F "$IF_A.conf:4: ListenPort = 51820" <<<"$out" || fail "the message does not name the ListenPort line" || return 1
  ! has -E "bind failed|errno" <<<"$out" || fail "the message is the raw system call's" || return 1
  ! nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "a refused start left $IF_A behind" || return 1
}

test_not_permitted() {
  one_node || return 1
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 || return 1
  # Root without CAP_NET_ADMIN (as in a container that drops it): dropped from the bounding and
  # inheritable sets, so the exec'd tunctl has it in none.
  local out rc=0
  out=$(nsx "$NS_A" timeout 10 setpriv --bounding-set -net_admin --inh-caps -net_admin "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  one_line_failure "up without CAP_NET_ADMIN" "$out" "$rc" || return 1
  has -F "needs root or CAP_NET_ADMIN" <<<"$out" || fail "the message does not say root or CAP_NET_ADMIN is needed" || return 1
  ! has -E "tunctl_tun_open|errno" <<<"$out" || fail "the message names an internal function or an errno" || return 1
  ! nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "a refused start left $IF_A behind" || return 1
}

test_other_namespace() {
  two_nodes_setup || return 1
  local out rc start elapsed
  # From B's namespace, A's name: its socket is in the shared directory, its link is not here.
  rc=0
  out=$(nsx "$NS_B" timeout 10 "$TUNCTL" show "$IF_A" 2>&1) || rc=$?
  one_line_failure "show $IF_A from another namespace" "$out" "$rc" || return 1
  has -F "another network namespace" <<<"$out" || fail "show does not say the interface is in another namespace" || return 1
  rc=0
  out=$(nsx "$NS_B" timeout 10 "$TUNCTL" down "$IF_A" 2>&1) || rc=$?
  one_line_failure "down $IF_A from another namespace" "$out" "$rc" || return 1
  has -F "another network namespace" <<<"$out" || fail "down does not say the interface is in another namespace" || return 1
  pid_alive "$PID_A" || fail "down from another namespace stopped $IF_A" || return 1
  rc=0
  start=$(now_ms)
  out=$(nsx "$NS_B" timeout 10 "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  elapsed=$(($(now_ms) - start))
  one_line_failure "up $IF_A from another namespace" "$out" "$rc" || return 1
  has -F "already running in another network namespace" <<<"$out" || fail "up does not say which namespace holds the name" || return 1
  ((elapsed < 2000)) || fail "up took ${elapsed} ms to say so (limit 2000: no waiting for a daemon to exit)" || return 1
  # wg-quick's way in (tunctl userspace, in the background): the same line, not a silent exit.
  rc=0
  out=$(nsx "$NS_B" timeout 10 "$TUNCTL" userspace "$IF_A" 2>&1) || rc=$?
  tt_log "userspace $IF_A from another namespace: exit $rc: $out"
  ((rc != 0 && rc != 124)) || fail "userspace: exit status $rc" || return 1
  has -F "already running in another network namespace" <<<"$out" || fail "userspace does not say which namespace holds the name" || return 1
  # Without a name, each namespace lists its own interface only.
  local names_a names_b
  names_a=$(nsx "$NS_A" "$TUNCTL" show --json | python3 -c 'import json,sys; print(" ".join(i["interface"] for i in json.load(sys.stdin)))')
  names_b=$(nsx "$NS_B" "$TUNCTL" show --json | python3 -c 'import json,sys; print(" ".join(i["interface"] for i in json.load(sys.stdin)))')
  tt_log "tunctl show in A lists: $names_a; in B: $names_b"
  [[ " $names_a " == *" $IF_A "* && " $names_a " != *" $IF_B "* ]] || fail "show in A lists '$names_a'" || return 1
  [[ " $names_b " == *" $IF_B "* && " $names_b " != *" $IF_A "* ]] || fail "show in B lists '$names_b'" || return 1
  nsx "$NS_B" "$TUNCTL" show | has -x "interface: $IF_A" && { fail "the text form in B shows $IF_A"; return 1; }
  pid_alive "$PID_A" && pid_alive "$PID_B" || fail "a daemon died" || return 1
}

test_show_mtu() {
  two_nodes_setup || return 1
  # The config says nothing (1420); the kernel is told 1300 behind the daemon's back.
  nsx "$NS_A" ip link set "$IF_A" mtu 1300 || return 1
  local text json metrics
  text=$(nsx "$NS_A" "$TUNCTL" show "$IF_A")
  json=$(tunctl_json "$NS_A" "$IF_A" mtu)
  metrics=$(nsx "$NS_A" "$TUNCTL" show "$IF_A" --format prometheus)
  has -x "  mtu: 1300" <<<"$text" || fail "show prints $(grep mtu <<<"$text"), not the link's 1300" || return 1
  [[ $json == 1300 ]] || fail "show --json says mtu $json, not 1300" || return 1
  # A gauge's value is a float in the exposition: 1300.0.
  has -E "^tunctl_mtu_bytes\{interface=\"$IF_A\"\} 1300(\.0)?$" <<<"$metrics" ||
    fail "the metrics do not say mtu 1300: $(grep tunctl_mtu <<<"$metrics" | tr '\n' ';')" || return 1
  # And back, in the other direction.
  nsx "$NS_A" ip link set "$IF_A" mtu 1420 || return 1
  has -x "  mtu: 1420" <<<"$(nsx "$NS_A" "$TUNCTL" show "$IF_A")" || fail "show does not follow the MTU back to 1420" || return 1
}

test_version_and_install() {
  local out commit
  out=$("$TUNCTL" --version) || fail "tunctl --version failed" || return 1
  tt_log "tunctl --version: $out"
  [[ $out =~ ^tunctl\ [0-9]+\.[0-9]+\.[0-9]+\ \(commit\ ([0-9a-f]{12}(\+dirty)?|unknown)\)$ ]] ||
    fail "'$out' is not 'tunctl X.Y.Z (commit HASH)'" || return 1
  if [[ -e "$TT_ROOT/.git" ]] && command -v git >/dev/null; then
    commit=$(git -C "$TT_ROOT" rev-parse --short=12 HEAD)
    [[ $out == *"(commit $commit"* ]] || fail "the version names another commit than HEAD ($commit): rebuild" || return 1
  fi
  # Scripts/install into a staging root: the binary, the man page and the three completions.
  local root="$TT_TEST_DIR/root"
  TUNCTL_BIN="$TUNCTL" DESTDIR="$root" PREFIX=/usr/local bash "$TT_ROOT/Scripts/install" >"$TT_TEST_DIR/install.log" 2>&1 ||
    fail "Scripts/install failed: $(tail -3 "$TT_TEST_DIR/install.log")" || return 1
  local f
  for f in usr/local/bin/tunctl usr/local/share/man/man8/tunctl.8 \
    usr/local/share/bash-completion/completions/tunctl usr/local/share/zsh/site-functions/_tunctl \
    usr/local/share/fish/vendor_completions.d/tunctl.fish; do
    [[ -s "$root/$f" ]] || fail "Scripts/install did not install $f" || return 1
  done
  "$root/usr/local/bin/tunctl" --version >/dev/null || fail "the installed binary does not run" || return 1
  has -F -- "--metrics-listen" "$root/usr/local/share/bash-completion/completions/tunctl" || fail "the bash completion does not know up's options" || return 1
  has -F "prometheus" "$root/usr/local/share/fish/vendor_completions.d/tunctl.fish" || fail "the fish completion does not know show's formats" || return 1
  has -E '^\.TH TUNCTL 8' "$root/usr/local/share/man/man8/tunctl.8" || fail "the man page has no .TH TUNCTL 8 header" || return 1
  if command -v bash >/dev/null; then
    bash -n "$root/usr/local/share/bash-completion/completions/tunctl" || fail "the bash completion does not parse" || return 1
  fi
}

# OPS_ONLY=WORD runs only the tests whose name contains WORD (while developing).
only() { [[ -z "${OPS_ONLY:-}" || "$1" == *"$OPS_ONLY"* ]] && run_test "$@"; }

tt_require --tunctl wg socat python3 setpriv prlimit timeout
tt_init
only ops-metrics-textfile-and-http-during-transfer test_metrics_during_transfer
only ops-metrics-listen-refused test_metrics_listen_refused
only ops-metrics-connection-flood test_metrics_flood
only ops-listen-port-in-use test_port_in_use
only ops-no-cap-net-admin test_not_permitted
only ops-name-in-other-namespace test_other_namespace
only ops-show-link-mtu test_show_mtu
only ops-version-and-install test_version_and_install
tt_summary
