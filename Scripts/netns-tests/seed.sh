#!/usr/bin/env bash
# The seed scenario (shared/seed): pod A on node 1 reaches pod B on node 2 over the overlay.
# tunctl is the "dumb carrier": the nodes route the remote pod subnet into the tunnel (the route
# comes from the peer's AllowedIPs) and forward; the pods know nothing of the tunnel.
#
#   podA 198.18.10.2/24 ─ veth ─ 198.18.10.1 node1 ══ underlay 198.18.0.1/30 ↔ 198.18.0.2/30 ══ node2 198.18.20.1 ─ veth ─ podB 198.18.20.2/24
#                                  tunnel 198.18.1.1/24 ─────────────────────────── 198.18.1.2/24
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

test_pod_to_pod() {
  local n1 n2 p1 p2 if1 if2
  seed_pods_setup || return 1

  tt_keypair "$KEYS" n1 && tt_keypair "$KEYS" n2 || return 1
  local c1="$TT_TEST_DIR/$if1.conf" c2="$TT_TEST_DIR/$if2.conf"
  write_conf "$c1" --key "$KEYS/n1.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/n2.pub" --endpoint 198.18.0.2:51820 --allowed 198.18.1.2/32,198.18.20.0/24 || return 1
  write_conf "$c2" --key "$KEYS/n2.key" --address 198.18.1.2/24 --port 51820 \
    --peer "$KEYS/n1.pub" --endpoint 198.18.0.1:51820 --allowed 198.18.1.1/32,198.18.10.0/24 || return 1

  # Without the overlay, pod A cannot reach pod B (the control: the test can fail).
  ping_ok "$p1" 198.18.20.2 1 && { fail "pod B reachable before the tunnel exists"; return 1; }

  start_tunctl "$n1" "$c1" && start_tunctl "$n2" "$c2" || return 1
  # The remote pod subnet is routed into the tunnel by tunctl itself (from AllowedIPs).
  nsx "$n1" ip route get 198.18.20.2 | has "dev $if1" || fail "node1 does not route 198.18.20.0/24 into $if1" || return 1
  nsx "$n2" ip route get 198.18.10.2 | has "dev $if2" || fail "node2 does not route 198.18.10.0/24 into $if2" || return 1

  ping_ok "$p1" 198.18.20.2 5 || fail "pod A -> pod B ping over the overlay" || return 1
  ping_ok "$p2" 198.18.10.2 5 || fail "pod B -> pod A ping over the overlay" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" 50 || return 1
  tcp_transfer "$p1" "$p2" 198.18.20.2 8080 "$f" 120 || fail "pod A -> pod B transfer" || return 1
  tcp_transfer "$p2" "$p1" 198.18.10.2 8080 "$f" 120 || fail "pod B -> pod A transfer" || return 1
  rm -f "$f"
  local rx
  rx=$(tunctl_peer_field "$n2" "$if2" "$KEYS/n1.pub" rx_bytes)
  ((rx >= 50 * 1024 * 1024)) || fail "node2 received only $rx bytes from node1 through the tunnel" || return 1
}

tt_require --tunctl wg socat python3 ss ping
tt_init
run_test seed-pod-to-pod-over-overlay test_pod_to_pod
tt_summary
