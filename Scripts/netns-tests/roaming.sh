#!/usr/bin/env bash
# Endpoints that change under a running peer.
# - roaming: B restarts on another ListenPort; traffic resumes and A's `show --json` reports B's
#   new endpoint (the endpoint follows authenticated packets).
# - peer restart: B is killed with SIGKILL and started again with the same config; traffic from B
#   resumes within 10 s and A is not touched. After SIGKILL the kernel removes B's TUN when its
#   last fd closes; the control socket file stays behind, and the new daemon must cope with it.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

test_roaming() {
  two_nodes_setup || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "tunnel not up" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint) == "198.18.0.2:$PORT_B" ]] ||
    fail "A's endpoint for B before roaming" || return 1
  kill -TERM "$PID_B"
  wait_exit "$PID_B" 10 || fail "B did not stop on SIGTERM" || return 1
  local new_port=$((PORT_B + 100))
  sed -i "s/^ListenPort = $PORT_B\$/ListenPort = $new_port/" "$CONF_B"
  grep -q "^ListenPort = $new_port" "$CONF_B" || fail "could not rewrite B's ListenPort" || return 1
  start_tunctl "$NS_B" "$CONF_B" || return 1
  [[ $(tunctl_json "$NS_B" "$IF_B" listen_port) == "$new_port" ]] || fail "B does not listen on $new_port" || return 1
  ping_until "$NS_B" 198.18.1.1 10 || fail "B -> A did not resume within 10 s after roaming" || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "A -> B after roaming (A must answer to the new endpoint)" || return 1
  local ep
  ep=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint)
  [[ "$ep" == "198.18.0.2:$new_port" ]] || fail "A reports B at $ep, expected 198.18.0.2:$new_port" || return 1
}

test_peer_restart() {
  two_nodes_setup || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "tunnel not up" || return 1
  local hs_before
  hs_before=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  # B initiated (it pinged first): A, the responder, must record the handshake too.
  ((hs_before > 0)) || fail "A (the responder) reports latest_handshake=0 after B's handshake and pings" || return 1
  kill -KILL "$PID_B"
  wait_exit "$PID_B" 5 || fail "B survived SIGKILL?" || return 1
  # What SIGKILL leaves behind, for the record (the restarted daemon must cope with either).
  local lingering="no"
  nsx "$NS_B" ip link show "$IF_B" >/dev/null 2>&1 && lingering="yes"
  tt_log "after kill -9: TUN link lingers: $lingering; socket file lingers: $([[ -e $TT_SOCK_DIR/$IF_B.sock ]] && echo yes || echo no)"
  sleep 1 # a handshake timestamp must be strictly newer than the last (TAI64N, 2^24 ns granularity)
  local t0 t1
  t0=$(date +%s.%N)
  start_tunctl "$NS_B" "$CONF_B" || return 1
  ping_until "$NS_B" 198.18.1.1 10 || fail "B -> A did not resume within 10 s of the restart" || return 1
  t1=$(date +%s.%N)
  tt_log "traffic resumed $(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$t0" "$t1") s after restart"
  ping_ok "$NS_A" 198.18.1.2 || fail "A -> B after B's restart" || return 1
  pid_alive "$PID_A" || fail "A died" || return 1
  local hs_after
  hs_after=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  ((hs_after > hs_before)) || fail "A's latest_handshake did not advance ($hs_before -> $hs_after)" || return 1
}

tt_require --tunctl wg python3 ping
tt_init
run_test roaming-new-listen-port test_roaming
run_test peer-restart-after-kill-9 test_peer_restart
tt_summary
