#!/usr/bin/env bash
# The link through rtnetlink: start and stop with 10,000 peers (and 20,000 AllowedIPs) each under
# 3 s; the link deleted from outside and an MTU change seen within 1 s; routes follow a SIGHUP
# reload; running out of descriptors is not taken for a deleted link.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# Limits the issue names (seconds, as milliseconds).
UP_LIMIT_MS=3000
STOP_LIMIT_MS=3000
EVENT_LIMIT_MS=1000

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# many_peers CONF PEERS PER_PEER: an interface with PEERS peers, each with a random public key
# and PER_PEER AllowedIPs: 198.19.X.Y/32 host routes, every other one (from the second) an
# IPv6 2001:db8:1::N/128 instead. The public keys need no private keys anywhere: no handshake is
# made. Written in a bounded loop by python (wg genkey would take minutes for 10,000).
many_peers() {
  local conf=$1 peers=$2 per_peer=$3
  python3 - "$conf" "$peers" "$per_peer" "$(cat "$KEYS/a.key")" <<'EOF'
import base64, os, sys
conf, peers, per_peer, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = ["[Interface]", f"PrivateKey = {key}", "Address = 198.18.1.1/24", "ListenPort = 51820", ""]
n = 0
for i in range(peers):
    allowed = []
    for j in range(per_peer):
        allowed.append(f"198.19.{n // 256}.{n % 256}/32" if j % 2 == 0 else f"2001:db8:1::{n + 1:x}/128")
        n += 1
    lines += ["[Peer]", f"PublicKey = {base64.b64encode(os.urandom(32)).decode()}", f"AllowedIPs = {','.join(allowed)}"]
fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, "\n".join(lines).encode())
os.close(fd)
EOF
}

# route_count NS IFACE: IPv4 and IPv6 routes through IFACE (0 once the link is gone).
route_count() {
  local v4 v6
  v4=$(nsx "$1" ip -4 route show dev "$2" 2>/dev/null | wc -l)
  v6=$(nsx "$1" ip -6 route show dev "$2" 2>/dev/null | grep -vc '^fe80\|^multicast\|^ff00')
  echo $((v4 + v6))
}

# timed_up NS CONF: starts tunctl up CONF in NS (registered for cleanup) and waits, polling every
# 20 ms for 30 s at most, for its control socket: the daemon makes it after its routes are in.
# Sets TT_LAST_PID, TT_LAST_LOG and UP_MS.
timed_up() {
  local ns=$1 conf=$2 iface t0 i
  iface=$(basename "$conf" .conf)
  tt_register_iface "$iface"
  TT_LAST_LOG="$TT_TEST_DIR/$iface.log"
  t0=$(now_ms)
  ip netns exec "$ns" env --default-signal=INT,QUIT "$TUNCTL" up "$conf" --verbose >"$TT_LAST_LOG" 2>&1 &
  TT_LAST_PID=$!
  tt_register_pid "$TT_LAST_PID"
  for ((i = 0; i < 1500; i++)); do
    pid_alive "$TT_LAST_PID" || fail "tunctl up exited at start (log: $TT_LAST_LOG)" || return 1
    if [[ -S "$TT_SOCK_DIR/$iface.sock" ]]; then
      UP_MS=$(($(now_ms) - t0))
      return 0
    fi
    sleep 0.02
  done
  fail "tunctl up $conf: no control socket after 30 s"
}

# wait_gone PID LIMIT_S: waits (20 ms steps) for PID to exit; sets GONE_MS from the call.
wait_gone() {
  local pid=$1 limit=$2 t0 i
  t0=$(now_ms)
  for ((i = 0; i < limit * 50; i++)); do
    if pid_dead "$pid"; then
      GONE_MS=$(($(now_ms) - t0))
      return 0
    fi
    sleep 0.02
  done
  return 1
}

setup_node() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && tt_keypair "$KEYS" a || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
}

# many_up_and_stop PEERS PER_PEER HOW: up of PEERS peers with PER_PEER AllowedIPs each under
# UP_LIMIT_MS with every route in place, then stopped by HOW (down or TERM) under STOP_LIMIT_MS
# with link and routes gone.
many_up_and_stop() {
  local peers=$1 per_peer=$2 how=$3 routes expected t0 stop_ms
  setup_node || return 1
  many_peers "$CONF_A" "$peers" "$per_peer" || fail "could not write the config" || return 1
  expected=$((peers * per_peer))
  timed_up "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  routes=$(route_count "$NS_A" "$IF_A")
  tt_log "up with $peers peers ($expected AllowedIPs): ${UP_MS} ms, $routes routes through $IF_A"
  ((routes >= expected)) || fail "only $routes of $expected routes present when ready" || return 1
  ((UP_MS < UP_LIMIT_MS)) || fail "up took ${UP_MS} ms (limit ${UP_LIMIT_MS} ms)" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == "$peers" ]] ||
    fail "show does not list $peers peers" || return 1
  t0=$(now_ms)
  case "$how" in
    down) nsx "$NS_A" timeout 10 "$TUNCTL" down "$IF_A" || fail "tunctl down failed" || return 1 ;;
    TERM) kill -TERM "$PID_A" ;;
  esac
  wait_gone "$PID_A" 10 || fail "daemon still running 10 s after $how" || return 1
  stop_ms=$(($(now_ms) - t0))
  tt_log "stop ($how) with $expected routes: ${stop_ms} ms"
  ((stop_ms < STOP_LIMIT_MS)) || fail "stop ($how) took ${stop_ms} ms (limit ${STOP_LIMIT_MS} ms)" || return 1
  nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 && { fail "link $IF_A left behind"; return 1; }
  [[ -z $(nsx "$NS_A" ip -4 route show root 198.19.0.0/16) ]] || fail "198.19.x routes left behind" || return 1
  [[ -z $(nsx "$NS_A" ip -6 route show root 2001:db8:1::/64) ]] || fail "2001:db8:1:: routes left behind" || return 1
  [[ ! -e "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "socket file left behind" || return 1
}
test_10k_down() { many_up_and_stop 10000 1 down; }
test_10k_term() { many_up_and_stop 10000 1 TERM; }
# 20,000 AllowedIPs (10,000 v4 and 10,000 v6) on 2,500 peers: a 10,000-peer file with two each
# would pass the config loader's 1 MiB limit.
test_20k_allowed_ips() { many_up_and_stop 2500 8 down; }

# small_node: one peer b with 198.18.2.0/24 and 2001:db8:2::/64.
small_node() {
  setup_node && tt_keypair "$KEYS" b && tt_keypair "$KEYS" c || return 1
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24,2001:db8:2::/64 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  LOG_A=$TT_LAST_LOG
}

test_link_deleted() {
  small_node || return 1
  nsx "$NS_A" ip link del "$IF_A" || fail "could not delete $IF_A" || return 1
  wait_gone "$PID_A" 5 || fail "daemon still running 5 s after its link was deleted" || return 1
  tt_log "link deleted -> daemon gone in ${GONE_MS} ms"
  ((GONE_MS < EVENT_LIMIT_MS)) || fail "daemon took ${GONE_MS} ms to notice (limit ${EVENT_LIMIT_MS} ms)" || return 1
  has "link deleted, shutting down" "$LOG_A" || fail "no 'link deleted' line in the log" || return 1
  [[ ! -e "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "socket file left behind" || return 1
}

# wait_log FILE TEXT LIMIT_MS: polls (10 ms) until FILE has the fixed string TEXT; sets SEEN_MS.
wait_log() {
  local file=$1 text=$2 limit=$3 t0 i
  t0=$(now_ms)
  for ((i = 0; i < limit / 10 + 200; i++)); do
    if grep -F -- "$text" "$file" >/dev/null; then
      SEEN_MS=$(($(now_ms) - t0))
      return 0
    fi
    sleep 0.01
  done
  return 1
}

test_mtu_and_updown_events() {
  small_node || return 1
  nsx "$NS_A" ip link set dev "$IF_A" mtu 1300 || fail "ip link set mtu 1300 failed" || return 1
  wait_log "$LOG_A" "$IF_A: link MTU changed to 1300" 3000 || fail "no MTU change logged within 3 s" || return 1
  tt_log "MTU change logged after ${SEEN_MS} ms"
  ((SEEN_MS < EVENT_LIMIT_MS)) || fail "MTU change logged after ${SEEN_MS} ms (limit ${EVENT_LIMIT_MS} ms)" || return 1
  nsx "$NS_A" ip link set dev "$IF_A" down || return 1
  wait_log "$LOG_A" "$IF_A: link down" 3000 || fail "link down not logged" || return 1
  nsx "$NS_A" ip link set dev "$IF_A" up || return 1
  wait_log "$LOG_A" "$IF_A: link up" 3000 || fail "link up not logged" || return 1
  pid_alive "$PID_A" || fail "daemon died on link events" || return 1
}

has_route() { [[ -n $(nsx "$NS_A" ip "$1" route show "$2" dev "$IF_A" 2>/dev/null) ]]; }
no_route() { ! has_route "$@"; }

test_routes_follow_reload() {
  small_node || return 1
  has_route -4 198.18.2.0/24 && has_route -6 2001:db8:2::/64 || fail "initial routes missing" || return 1
  # b loses its v6 prefix and gains 198.18.4.0/24; c (new) brings 198.18.3.0/24 and 2001:db8:3::/64.
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24,198.18.4.0/24 \
    --peer "$KEYS/c.pub" --allowed 198.18.3.0/24,2001:db8:3::/64 || return 1
  kill -HUP "$PID_A"
  wait_for 3 has_route -4 198.18.3.0/24 || fail "route 198.18.3.0/24 not added after SIGHUP" || return 1
  wait_for 3 has_route -6 2001:db8:3::/64 || fail "route 2001:db8:3::/64 not added after SIGHUP" || return 1
  wait_for 3 has_route -4 198.18.4.0/24 || fail "route 198.18.4.0/24 not added after SIGHUP" || return 1
  wait_for 3 no_route -6 2001:db8:2::/64 || fail "route 2001:db8:2::/64 not removed after SIGHUP" || return 1
  has_route -4 198.18.2.0/24 || fail "kept route 198.18.2.0/24 removed by the reload" || return 1
  # Back to b alone.
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24 || return 1
  kill -HUP "$PID_A"
  wait_for 3 no_route -4 198.18.3.0/24 || fail "route 198.18.3.0/24 not removed after the second SIGHUP" || return 1
  wait_for 3 no_route -6 2001:db8:3::/64 || fail "route 2001:db8:3::/64 not removed" || return 1
  wait_for 3 no_route -4 198.18.4.0/24 || fail "route 198.18.4.0/24 not removed" || return 1
  has_route -4 198.18.2.0/24 || fail "route 198.18.2.0/24 lost" || return 1
  pid_alive "$PID_A" || fail "daemon died on reload" || return 1
}

# The daemon started with a descriptor limit 3 above what it uses once up, then 100 control
# connections held open for 3 s: it runs out of descriptors (checked) and must stay up, with its
# link and routes, for well past the old 500 ms poll, and still notice its link deleted later.
test_fd_exhaustion_is_not_link_deletion() {
  small_node || return 1
  local base limit holder i peak=0 count
  base=$(find "/proc/$PID_A/fd" -mindepth 1 -maxdepth 1 | wc -l)
  kill -TERM "$PID_A"
  wait_gone "$PID_A" 5 || fail "first daemon did not stop" || return 1
  limit=$((base + 3))
  LOG_A="$TT_TEST_DIR/limited.log"
  ip netns exec "$NS_A" env --default-signal=INT,QUIT prlimit --nofile="$limit:$limit" \
    "$TUNCTL" up "$CONF_A" --verbose >"$LOG_A" 2>&1 &
  PID_A=$!
  tt_register_pid "$PID_A"
  wait_for 10 test -S "$TT_SOCK_DIR/$IF_A.sock" || fail "daemon with $limit descriptors did not come up" || return 1
  ip netns exec "$NS_A" python3 - "$TT_SOCK_DIR/$IF_A.sock" >"$TT_TEST_DIR/holder.log" 2>&1 <<'EOF' &
import socket, sys, time
held, refused = [], 0
for _ in range(100):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(sys.argv[1])
    except OSError:
        refused += 1
    held.append(s)
print(f"{len(held) - refused} connected, {refused} refused")
time.sleep(3)
EOF
  holder=$!
  tt_register_pid "$holder"
  for ((i = 0; i < 25; i++)); do
    pid_alive "$PID_A" || fail "daemon exited while out of descriptors" || return 1
    count=$(find "/proc/$PID_A/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    ((count > peak)) && peak=$count
    sleep 0.1
  done
  tt_log "descriptors: $base when up, limit $limit, peak $peak; $(cat "$TT_TEST_DIR/holder.log")"
  ((peak >= limit - 1)) || fail "the daemon never ran out of descriptors (peak $peak, limit $limit)" || return 1
  wait "$holder" 2>/dev/null
  has "link deleted" "$LOG_A" && { fail "running out of descriptors was taken for a deleted link"; return 1; }
  pid_alive "$PID_A" || fail "daemon exited after the descriptor shortage" || return 1
  nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 || fail "link $IF_A is gone" || return 1
  has_route -4 198.18.2.0/24 || fail "route lost while out of descriptors" || return 1
  # The link is still watched: deleting it now is noticed.
  nsx "$NS_A" ip link del "$IF_A" || return 1
  wait_gone "$PID_A" 5 || fail "daemon no longer notices its link deleted after the descriptor shortage" || return 1
  tt_log "link deleted after the shortage -> daemon gone in ${GONE_MS} ms"
}

tt_require --tunctl wg python3 prlimit
tt_init
run_test up-stop-10000-peers-down test_10k_down
run_test up-stop-10000-peers-sigterm test_10k_term
run_test up-stop-20000-allowed-ips test_20k_allowed_ips
run_test link-deleted-seen-within-1s test_link_deleted
run_test mtu-and-up-down-events test_mtu_and_updown_events
run_test routes-follow-sighup test_routes_follow_reload
run_test fd-exhaustion-not-link-deletion test_fd_exhaustion_is_not_link_deletion
tt_summary
