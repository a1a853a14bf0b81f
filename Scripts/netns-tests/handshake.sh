#!/usr/bin/env bash
# Sessions that converge at once: both ends initiating in the same instant (crossing
# initiations), and one end restarted (kill -9) while the other still holds the old session.
#
#   A (ns $NS_A)  veA 198.18.0.1/30  ====  veB 198.18.0.2/30  B (ns $NS_B)
#   tunnel 198.18.1.1/24                   tunnel 198.18.1.2/24
#
# Figures asserted: five rounds of crossing initiations (both ends sent one, seen on the wire),
# each with both first pings answered within 1 s; after a restart, traffic flows both ways within 1 s of the restarted daemon being
# ready. wireguard-go 0.0.20220316 is measured in the same restart for comparison (logged).
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

ROUNDS=5       # crossed rounds wanted
MAX_ROUNDS=12  # rounds tried at most (the scheduler decides which daemon runs first)

# ms_since T0: whole milliseconds from T0 (date +%s%N) to now.
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# readd_peer NS IFACE PUBFILE ENDPOINT ALLOWED: removes the peer (its sessions with it) and adds it
# back, so that neither end has a session and the next packet starts a handshake.
readd_peer() {
  local ns=$1 iface=$2 pub
  pub=$(cat "$3")
  nsx "$ns" wg set "$iface" peer "$pub" remove || return 1
  nsx "$ns" wg set "$iface" peer "$pub" preshared-key "$KEYS/ab.psk" endpoint "$4" allowed-ips "$5"
}

# initiations FILE SRC: how many handshake initiations (UDP payload type 1) SRC sent in FILE.
initiations() { tcpdump -nn -r "$1" "src host $2 and udp and udp[8] = 1" 2>/dev/null | wc -l; }

test_crossing_initiations() {
  two_nodes_setup || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "no tunnel before the rounds" || return 1
  local round cap tpid pa pb ra rb crossed=0 t0 ms
  for ((round = 1; round <= MAX_ROUNDS && crossed < ROUNDS; round++)); do
    readd_peer "$NS_A" "$IF_A" "$KEYS/b.pub" "$U_B:$PORT_B" 198.18.1.2/32 || fail "round $round: re-adding B at A" || return 1
    readd_peer "$NS_B" "$IF_B" "$KEYS/a.pub" "$U_A:$PORT_A" 198.18.1.1/32 || fail "round $round: re-adding A at B" || return 1
    [[ $(tunctl_json "$NS_A" "$IF_A" peers.0.latest_handshake) == 0 ]] ||
      fail "round $round: A still has a handshake after re-adding its peer" || return 1
    cap="$TT_TEST_DIR/round$round.pcap"
    ip netns exec "$NS_A" timeout 10 tcpdump -i veA -nn -U --immediate-mode -w "$cap" udp 2>/dev/null &
    tpid=$!
    tt_register_pid "$tpid"
    wait_for 5 test -s "$cap" || sleep 0.5
    # Both daemons are stopped while each is handed a ping, then resumed by one kill(1): each
    # finds its ping waiting, starts a handshake at once, and only then sees the other's
    # initiation (which needs its sender's X25519 first): the initiations cross.
    kill -STOP "$PID_A" "$PID_B"
    ip netns exec "$NS_A" ping -n -q -c 1 -W 2 198.18.1.2 >/dev/null 2>&1 &
    pa=$!
    ip netns exec "$NS_B" ping -n -q -c 1 -W 2 198.18.1.1 >/dev/null 2>&1 &
    pb=$!
    sleep 0.2
    t0=$(date +%s%N)
    kill -CONT "$PID_A" "$PID_B"
    ra=0
    rb=0
    wait "$pa" || ra=$?
    wait "$pb" || rb=$?
    ms=$(ms_since "$t0")
    sleep 0.2
    kill "$tpid" 2>/dev/null
    wait "$tpid" 2>/dev/null
    local from_a from_b
    from_a=$(initiations "$cap" 198.18.0.1)
    from_b=$(initiations "$cap" 198.18.0.2)
    ((from_a > 0 && from_b > 0)) && crossed=$((crossed + 1))
    tt_log "round $round: A ping rc $ra, B ping rc $rb, both done in $ms ms; initiations A $from_a, B $from_b"
    if ((ra != 0 || rb != 0)); then
      tt_log "drops A: $(tunctl_json "$NS_A" "$IF_A" drops) $(tunctl_json "$NS_A" "$IF_A" peers.0.drops)"
      tt_log "drops B: $(tunctl_json "$NS_B" "$IF_B" drops) $(tunctl_json "$NS_B" "$IF_B" peers.0.drops)"
    fi
    ((ra == 0)) || fail "round $round: A's first ping got no reply" || return 1
    ((rb == 0)) || fail "round $round: B's first ping got no reply" || return 1
    ((ms < 1000)) || fail "round $round: both first pings answered only after $ms ms (goal: under 1 s)" || return 1
    # And the sessions both work on, with no further wait.
    nsx "$NS_A" ping -n -q -c 3 -i 0.2 -W 1 198.18.1.2 >/dev/null || fail "round $round: A -> B after the crossing" || return 1
    nsx "$NS_B" ping -n -q -c 3 -i 0.2 -W 1 198.18.1.1 >/dev/null || fail "round $round: B -> A after the crossing" || return 1
  done
  tt_log "crossing initiations in $crossed of $((round - 1)) rounds"
  # The test only means something if the initiations really crossed; every round counted above
  # had to converge within 1 s, crossed or not.
  ((crossed >= ROUNDS)) || fail "only $crossed of $MAX_ROUNDS rounds had both ends initiate; the test did not test crossing" || return 1
}

# first_reply_ms NS DEST LIMIT_S: milliseconds until a ping from NS to DEST is answered (each try
# waits up to 200 ms); fails after LIMIT_S seconds.
first_reply_ms() {
  local ns=$1 dst=$2 limit=$3 t0
  t0=$(date +%s%N)
  while (($(ms_since "$t0") < limit * 1000)); do
    if nsx "$ns" ping -n -q -c 1 -W 0.2 "$dst" >/dev/null 2>&1; then
      ms_since "$t0"
      return 0
    fi
  done
  return 1
}

# restart_tunctl: kill -9 B under traffic, start it again; prints "A->B ms" and "B->A ms".
test_restart_recovery() {
  two_nodes_setup || return 1
  ping_ok "$NS_A" 198.18.1.2 && ping_ok "$NS_B" 198.18.1.1 || fail "no tunnel before the restart" || return 1
  # Traffic from A while B is killed and back: A keeps sending under the old session.
  ip netns exec "$NS_A" timeout 20 ping -n -q -i 0.1 198.18.1.2 >/dev/null 2>&1 &
  tt_register_pid $!
  sleep 0.5
  kill -KILL "$PID_B"
  wait_for 5 pid_dead "$PID_B" || fail "B survived kill -9" || return 1
  wait_for 5 sh -c "! ip netns exec '$NS_B' ip link show '$IF_B'" || fail "B's link outlived its process" || return 1
  start_tunctl "$NS_B" "$CONF_B" || return 1
  PID_B=$TT_LAST_PID
  local ab ba
  # A's traffic first: B sending anything would start a handshake itself and hide the wait.
  ab=$(first_reply_ms "$NS_A" 198.18.1.2 20) || fail "A -> B not back within 20 s of B's restart" || return 1
  ba=$(first_reply_ms "$NS_B" 198.18.1.1 20) || fail "B -> A not back within 20 s of B's restart" || return 1
  tt_log "tunctl restart: B -> A after $ba ms, A -> B after $ab ms (from B ready)"
  echo "$ba $ab" >"$TT_TEST_DIR/tunctl.figures"
  ((ba < 1000)) || fail "B -> A took $ba ms after the restart (goal: under 1 s)" || return 1
  ((ab < 1000)) || fail "A -> B took $ab ms after the restart (goal: under 1 s)" || return 1
}

# The same restart between two wireguard-go ends, for the figure beside tunctl's (not asserted:
# it is the anchor, and wireguard-go waits for the stale session to time out, about 15 s).
test_restart_recovery_wireguard_go() {
  underlay_pair 0 || return 1
  local conf_a="$TT_TEST_DIR/$IF_A.conf" conf_b="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$conf_a" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --psk "$KEYS/ab.psk" --endpoint 198.18.0.2:51821 --allowed 198.18.1.2/32 || return 1
  write_conf "$conf_b" --key "$KEYS/b.key" --address 198.18.1.2/24 --port 51821 \
    --peer "$KEYS/a.pub" --psk "$KEYS/ab.psk" --endpoint 198.18.0.1:51820 --allowed 198.18.1.1/32 || return 1
  start_wggo "$NS_A" "$IF_A" && wggo_configure "$NS_A" "$IF_A" "$conf_a" || return 1
  start_wggo "$NS_B" "$IF_B" && wggo_configure "$NS_B" "$IF_B" "$conf_b" || return 1
  local pid_b=$TT_LAST_PID
  ping_until "$NS_A" 198.18.1.2 10 || fail "no wireguard-go tunnel before the restart" || return 1
  ip netns exec "$NS_A" timeout 40 ping -n -q -i 0.1 198.18.1.2 >/dev/null 2>&1 &
  tt_register_pid $!
  sleep 0.5
  kill -KILL "$pid_b"
  wait_for 5 pid_dead "$pid_b" || fail "wireguard-go B survived kill -9" || return 1
  wait_for 5 sh -c "! ip netns exec '$NS_B' ip link show '$IF_B'" || fail "B's link outlived its process" || return 1
  start_wggo "$NS_B" "$IF_B" && wggo_configure "$NS_B" "$IF_B" "$conf_b" || return 1
  local ab ba
  ab=$(first_reply_ms "$NS_A" 198.18.1.2 25) || ab=">25000"
  ba=$(first_reply_ms "$NS_B" 198.18.1.1 25) || ba=">25000"
  tt_log "wireguard-go restart: B -> A after $ba ms, A -> B after $ab ms (from B ready)"
}

tt_require --tunctl wg tcpdump
tt_init
run_test handshake-crossing-initiations test_crossing_initiations
run_test handshake-restart-recovery test_restart_recovery
run_test handshake-restart-recovery-wireguard-go test_restart_recovery_wireguard_go
tt_summary
