#!/usr/bin/env bash
# Many peers (issue 16): an interface with 100,000 peers comes up, `wg show IFACE dump` answers in
# under a second (median of 3) with one line per peer, the data path does not notice dumps running
# back to back (pings through the tunnel stay under 5 ms, but for 1% stragglers), and `wg setconf`
# of 100,000 peers in one request finishes in under 5 s.
#
# Topology: two_nodes_setup (Scripts/lib/netns.sh); A's config gets 99,999 extra peers with random
# public keys (any 32 bytes are a key the daemon accepts; they need not be points anyone holds),
# a preshared key each and one /32 or /128 each from 198.19.0.0/16 and 2001:db8:100::/48, no
# endpoint (so that start-up sends nothing to them). `Table = off` on A: the test is about the
# engine, not 100,000 kernel routes; A reaches B over the tunnel's own connected /24.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

PEERS=100000

# many_peers OUT N [ENDPOINT]: N [Peer] sections with random keys and a PSK each, one host route
# each (v4 for the first 65,000, v6 after), optionally an endpoint (documentation range).
many_peers() {
  python3 - "$@" <<'EOF'
import base64, ipaddress, os, sys
out, count = sys.argv[1], int(sys.argv[2])
endpoint = sys.argv[3] if len(sys.argv) > 3 else None
v4 = int(ipaddress.IPv4Address("198.19.0.1"))
v6 = int(ipaddress.IPv6Address("2001:db8:100::1"))
lines = []
for i in range(count):
    key = base64.b64encode(os.urandom(32)).decode()
    psk = base64.b64encode(os.urandom(32)).decode()
    ip = f"{ipaddress.IPv4Address(v4 + i)}/32" if i < 65000 else f"{ipaddress.IPv6Address(v6 + i)}/128"
    lines.append(f"\n[Peer]\nPublicKey = {key}\nPresharedKey = {psk}\nAllowedIPs = {ip}\n")
    if endpoint:
        lines.append(f"Endpoint = {endpoint}:{51000 + i % 500}\n")
old = os.umask(0o077)
with open(out, "a") as f:
    f.write("".join(lines))
os.umask(old)
EOF
}

# elapsed_ms CMD...: runs CMD (output to $TT_TEST_DIR/last.out) and prints its wall time in ms;
# fails when CMD fails.
elapsed_ms() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >"$TT_TEST_DIR/last.out" 2>&1 || return 1
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}

# ping_stats FILE: sets PING_RECEIVED, PING_MEDIAN, PING_MAX (ms) and PING_SLOW (replies that
# took 5 ms or more) from ping's output (duplicate replies, marked DUP!, left out).
ping_stats() {
  PING_RECEIVED=$(grep 'time=' "$1" | grep -vc 'DUP!')
  read -r PING_MEDIAN PING_MAX PING_SLOW < <(grep 'time=' "$1" | grep -v 'DUP!' | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n |
    awk '{ v[NR] = $1; if ($1 >= 5) slow++ } END { if (NR) printf "%s %s %d\n", v[int((NR + 1) / 2)], v[NR], slow; else print "999 999 999" }')
}

median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

test_many_peers() {
  two_nodes_setup --no-start || return 1
  sed -i '/^\[Interface\]/a Table = off' "$CONF_A" || return 1
  local t0 t1
  t0=$(date +%s%N)
  many_peers "$CONF_A" $((PEERS - 1)) || fail "generating $PEERS peers" || return 1
  t1=$(date +%s%N)
  tt_log "config with $PEERS peers: $(wc -c <"$CONF_A") bytes, generated in $(((t1 - t0) / 1000000)) ms"

  # Started by hand: start_tunctl allows 15 s and polls with `tunctl show` (100,000 peers of JSON).
  tt_register_iface "$IF_A"
  t0=$(date +%s%N)
  ip netns exec "$NS_A" env --default-signal=INT,QUIT "$TUNCTL" up "$CONF_A" --verbose >"$TT_TEST_DIR/$IF_A.log" 2>&1 &
  PID_A=$!
  tt_register_pid "$PID_A"
  wait_for 60 nsx "$NS_A" wg show "$IF_A" public-key || fail "tunctl up with $PEERS peers: not answering after 60 s" || return 1
  t1=$(date +%s%N)
  tt_log "tunctl up with $PEERS peers: answering in $(((t1 - t0) / 1000000)) ms"
  start_tunctl "$NS_B" "$CONF_B" || return 1
  ping_until "$NS_A" 198.18.1.2 10 || fail "no ping A -> B through the tunnel with $PEERS peers on A" || return 1

  # The dump: one line for the interface, one per peer; median of 3 under a second.
  # A figure over its limit fails the test at the end, after every figure is measured and logged.
  local runs=() i ms lines failed=0
  for ((i = 0; i < 3; i++)); do
    ms=$(elapsed_ms nsx "$NS_A" timeout 30 wg show "$IF_A" dump) ||
      fail "wg show $IF_A dump failed: $(head -c 300 "$TT_TEST_DIR/last.out")" || return 1
    runs+=("$ms")
  done
  lines=$(wc -l <"$TT_TEST_DIR/last.out")
  ((lines == PEERS + 1)) || fail "wg show dump printed $lines lines, expected $((PEERS + 1))" || return 1
  ms=$(median3 "${runs[@]}")
  tt_log "wg show dump with $PEERS peers: ${runs[*]} ms (median $ms)"
  ((ms < 1000)) || fail "wg show dump with $PEERS peers took $ms ms (median of 3; limit 1000 ms)" || failed=1

  # For the log: how much of that is the daemon's reply (the raw `get=1` over the socket).
  ms=$(elapsed_ms nsx "$NS_A" timeout 30 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"get=1\n\n")
while s.recv(1 << 20):
    pass
' "$TT_SOCK_DIR/$IF_A.sock") && tt_log "the raw get=1 reply alone: $ms ms"

  # The data path while dumps run: 200 pings 10 ms apart through the tunnel with nothing else
  # running, then the same 200 while 10 dumps run back to back (they start first and stop after
  # 10, or 60 s; the pings start once the first is under way). A second try, both measured again,
  # only when the first has more than 2 pings of 5 ms or more during dumps and at least one
  # without (see the assertion below).
  local dumps=$TT_TEST_DIR/dumps.sh try idle_max idle_slow dump_pid dumping
  printf 'for i in 1 2 3 4 5 6 7 8 9 10; do timeout 30 wg show %s dump >/dev/null || exit 1; done\n' "$IF_A" >"$dumps"
  for try in 1 2; do
    nsx "$NS_A" ping -4 -n -c 200 -i 0.01 -W 1 -w 30 198.18.1.2 >"$TT_TEST_DIR/ping-idle.out" 2>&1
    ping_stats "$TT_TEST_DIR/ping-idle.out"
    idle_max=$PING_MAX idle_slow=$PING_SLOW
    tt_log "try $try: ping without dumps: $PING_RECEIVED/200 replies, median $PING_MEDIAN ms, max $PING_MAX ms, $PING_SLOW of 5 ms or more"
    ip netns exec "$NS_A" timeout 60 bash "$dumps" &
    dump_pid=$!
    tt_register_pid "$dump_pid"
    sleep 0.2
    nsx "$NS_A" ping -4 -n -c 200 -i 0.01 -W 1 -w 30 198.18.1.2 >"$TT_TEST_DIR/ping.out" 2>&1
    dumping=0
    pid_alive "$dump_pid" && dumping=1
    wait_exit "$dump_pid" 60 || fail "10 dumps did not finish in 60 s" || return 1
    ((TT_EXIT_CODE == 0)) || fail "a dump failed during the pings (status $TT_EXIT_CODE)" || return 1
    ((dumping)) || tt_log "note: the 10 dumps ended before the 200 pings did"
    ping_stats "$TT_TEST_DIR/ping.out"
    tt_log "try $try: ping during dumps: $PING_RECEIVED/200 replies, median $PING_MEDIAN ms, max $PING_MAX ms, $PING_SLOW of 5 ms or more (without dumps: max $idle_max ms, $idle_slow)"
    # A second try only when this one failed and its pings without dumps were held up too.
    ((PING_SLOW <= 2 || idle_slow == 0)) && break
  done
  ((PING_RECEIVED >= 198)) || fail "only $PING_RECEIVED of 200 pings answered while dumps ran" || failed=1
  # What the data path waits for: the engine-lock holds of each `get` (the daemon logs the longest,
  # in wall time and in its thread's CPU time). Asserted: the work under the lock (CPU) under 5 ms
  # in every get, and the median over the gets of the longest wall-time hold under 5 ms (a single
  # hold stretched by a preemption on this shared 2-core machine is the scheduler's doing). The
  # ping median is asserted under 5 ms (at the start of issue 16: 296 ms, max 2,796 ms, with
  # 10,000 peers), and the max under 5 ms (the issue's figure) but for at most 2 of the 200
  # pings (1%): on this shared 2-core machine one ping in a hundred or so is held up by a
  # scheduler tick (4 ms at HZ=250) or more whatever the tunnel does; the same 200 pings without
  # dumps show it (their max and count are logged beside). When those had a straggler too, the
  # machine was busy with other work: one more try, both measured again, decides.
  # Measured at load 5.4-7, 8 single tries each (this machine shared with fuzzers and builds):
  # with a get's first hold copying all 100,000 keys (0.8-2.7 ms of CPU), 2-17 pings (median 6)
  # took 5 ms or more during dumps, max 8-23 ms (median 14.2), failing this in 7 of 8 (6 of them
  # with no straggler without dumps); with the keys listed in pieces, 0-11 (median 0.5),
  # max 1.0-39 ms (median 5.2; without dumps, median 2.5), the 2 failures both in tries whose
  # pings without dumps had stragglers too.
  local holds="$TT_TEST_DIR/holds" wall cpu
  grep -o 'the longest [0-9]* µs (CPU [0-9]* µs)' "$TT_TEST_DIR/$IF_A.log" | tr -d '()' |
    awk '{ print $3, $6 }' >"$holds"
  wall=$(cut -d' ' -f1 "$holds" | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 999999) }')
  cpu=$(cut -d' ' -f2 "$holds" | sort -n | tail -1)
  tt_log "engine-lock holds of $(wc -l <"$holds") get=1 replies: longest per reply, wall: $(cut -d' ' -f1 "$holds" | tr '\n' ' ')µs; the most CPU in one hold ${cpu:-?} µs"
  ((${cpu:-999999} < 5000)) || fail "a get=1 worked ${cpu:-?} µs under the engine lock (limit 5000 µs)" || failed=1
  ((wall < 5000)) || fail "median longest engine-lock hold of a get=1: $wall µs (limit 5000 µs)" || failed=1
  awk -v m="$PING_MEDIAN" 'BEGIN { exit !(m < 5) }' ||
    fail "ping median $PING_MEDIAN ms while dumps ran (limit 5 ms)" || failed=1
  ((PING_SLOW <= 2)) ||
    fail "$PING_SLOW of 200 pings took 5 ms or more while dumps ran, max $PING_MAX ms, in both tries (limit: 2; without dumps: $idle_slow, max $idle_max ms)" || failed=1

  # `tunctl show --json` lists every peer (its reply, about 25 MB, was over the CLI's old limit).
  ms=$(elapsed_ms nsx "$NS_A" timeout 60 "$TUNCTL" show "$IF_A" --json) ||
    fail "tunctl show --json with $PEERS peers failed: $(head -c 300 "$TT_TEST_DIR/last.out")" || return 1
  lines=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["peers"]))' "$TT_TEST_DIR/last.out")
  tt_log "tunctl show --json with $PEERS peers: $ms ms"
  ((lines == PEERS)) || fail "tunctl show --json listed $lines peers, expected $PEERS" || failed=1

  # `wg setconf` of 100,000 peers (a PSK and an endpoint each) in one request, onto A.
  local setconf=$TT_TEST_DIR/setconf.conf
  (umask 077 && printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n' "$(cat "$KEYS/a.key")" "$PORT_A" >"$setconf") || return 1
  many_peers "$setconf" "$PEERS" 203.0.113.7 || fail "generating the setconf file" || return 1
  ms=$(elapsed_ms nsx "$NS_A" timeout 60 wg setconf "$IF_A" "$setconf") ||
    fail "wg setconf of $PEERS peers ($(wc -c <"$setconf") bytes) failed: $(head -c 300 "$TT_TEST_DIR/last.out")" || return 1
  tt_log "wg setconf of $PEERS peers ($(wc -c <"$setconf") bytes): $ms ms; the daemon: $(grep -o 'set=1 of .*' "$TT_TEST_DIR/$IF_A.log" | tail -1)"
  lines=$(nsx "$NS_A" wg show "$IF_A" peers | wc -l)
  ((lines == PEERS)) || fail "after setconf: $lines peers, expected $PEERS" || return 1
  ((ms < 5000)) || fail "wg setconf of $PEERS peers took $ms ms (limit 5000 ms)" || failed=1
  pid_alive "$PID_A" || fail "tunctl on A died" || return 1
  return "$failed"
}

tt_init || exit 1
tt_require --tunctl wg python3 ping || exit 1
run_test "100,000 peers: up, wg show dump, pings during dumps, wg setconf" test_many_peers
tt_summary
