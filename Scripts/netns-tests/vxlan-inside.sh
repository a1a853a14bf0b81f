#!/usr/bin/env bash
# The seed's pod scenario with its overlay *inside* the tunnel (k3s's --flannel-iface=wg0 recipe):
# a flannel-style VXLAN device on each node (VNI 1, UDP 4789, MTU 1370, no learning, static FDB
# and neighbour entries as flanneld writes them) whose underlay is the tunctl interface. Every
# packet the TUN sees is then a VXLAN datagram; with offloads on and a kernel that has UDP tunnel
# GSO (6.17+), TCP through the overlay reaches tunctl as VXLAN super-packets that tunctl cuts up.
#
#   podA 198.18.10.2 ─ node1 [flannel.1 198.18.11.0/32] ══ VXLAN ══ [flannel.1 198.18.21.0/32] node2 ─ podB 198.18.20.2
#                          tunctl 198.18.1.1/24 ══════ underlay 198.18.0.1/30 ↔ .2 ══════ 198.18.1.2/24 tunctl
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

# vxlan_node NS TUN LOCAL REMOTE MAC REMOTE_MAC VTEP REMOTE_VTEP REMOTE_POD_NET: flannel.1 as
# flanneld's vxlan backend sets it up.
vxlan_node() {
  local ns=$1 tun=$2 local_ip=$3 remote_ip=$4 mac=$5 remote_mac=$6 vtep=$7 remote_vtep=$8 pods=$9
  nsx "$ns" ip link add flannel.1 type vxlan id 1 local "$local_ip" dev "$tun" dstport 4789 nolearning || return 1
  nsx "$ns" ip link set flannel.1 address "$mac" mtu 1370 up || return 1
  nsx "$ns" ip addr add "$vtep/32" dev flannel.1 || return 1
  nsx "$ns" ip neigh replace "$remote_vtep" lladdr "$remote_mac" dev flannel.1 nud permanent || return 1
  nsx "$ns" bridge fdb append "$remote_mac" dev flannel.1 dst "$remote_ip" || return 1
  nsx "$ns" ip route add "$pods" via "$remote_vtep" dev flannel.1 onlink || return 1
}

test_vxlan_inside() {
  local n1 n2 p1 p2 if1 if2
  seed_pods_setup || return 1

  # The tunnel carries only the nodes' addresses: the pod subnets ride in VXLAN.
  tt_keypair "$KEYS" n1 && tt_keypair "$KEYS" n2 || return 1
  local c1="$TT_TEST_DIR/$if1.conf" c2="$TT_TEST_DIR/$if2.conf"
  write_conf "$c1" --key "$KEYS/n1.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/n2.pub" --endpoint 198.18.0.2:51820 --allowed 198.18.1.2/32 || return 1
  write_conf "$c2" --key "$KEYS/n2.key" --address 198.18.1.2/24 --port 51820 \
    --peer "$KEYS/n1.pub" --endpoint 198.18.0.1:51820 --allowed 198.18.1.1/32 || return 1
  start_tunctl "$n1" "$c1" && start_tunctl "$n2" "$c2" || return 1

  vxlan_node "$n1" "$if1" 198.18.1.1 198.18.1.2 02:00:c6:12:0b:00 02:00:c6:12:15:00 \
    198.18.11.0 198.18.21.0 198.18.20.0/24 || fail "node1 flannel.1 setup" || return 1
  vxlan_node "$n2" "$if2" 198.18.1.2 198.18.1.1 02:00:c6:12:15:00 02:00:c6:12:0b:00 \
    198.18.21.0 198.18.11.0 198.18.10.0/24 || fail "node2 flannel.1 setup" || return 1
  nsx "$n1" ip route get 198.18.20.2 | has "dev flannel.1" || fail "node1 does not route pod B's subnet into flannel.1" || return 1

  # Which TUN path runs is reported, and on this kernel with offloads on it is the tunnel GSO one.
  local gso tso
  gso=$(tunctl_json "$n1" "$if1" offload.udpTunnelGSO) || fail "show --json has no offload.udpTunnelGSO" || return 1
  tso=$(tunctl_json "$n1" "$if1" offload.tunSegmentation) || fail "show --json has no offload.tunSegmentation" || return 1
  if [[ "${TUNCTL_OFFLOAD:-}" == off ]]; then
    [[ "$gso" == false && "$tso" == false ]] ||
      fail "offloads off, yet show --json says udpTunnelGSO=$gso tunSegmentation=$tso" || return 1
  elif [[ "$(uname -r)" =~ ^([0-9]+)\.([0-9]+) ]] &&
    ((BASH_REMATCH[1] > 6 || (BASH_REMATCH[1] == 6 && BASH_REMATCH[2] >= 18))); then
    [[ "$gso" == true && "$tso" == true ]] ||
      fail "kernel $(uname -r) has UDP tunnel GSO, yet udpTunnelGSO=$gso tunSegmentation=$tso" || return 1
  fi
  tt_log "udpTunnelGSO=$gso"

  ping_ok "$p1" 198.18.20.2 5 || fail "pod A -> pod B ping through VXLAN inside the tunnel" || return 1
  ping_ok "$p2" 198.18.10.2 5 || fail "pod B -> pod A ping through VXLAN inside the tunnel" || return 1
  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" 20 || return 1
  tcp_transfer "$p1" "$p2" 198.18.20.2 8080 "$f" 60 || fail "pod A -> pod B transfer" || return 1
  tcp_transfer "$p2" "$p1" 198.18.10.2 8080 "$f" 60 || fail "pod B -> pod A transfer" || return 1
  rm -f "$f"

  # The 20 MB each way crossed the tunnel (as VXLAN), and nothing the TUN handed over was refused.
  local rx1 rx2 bad
  rx2=$(tunctl_peer_field "$n2" "$if2" "$KEYS/n1.pub" rx_bytes)
  rx1=$(tunctl_peer_field "$n1" "$if1" "$KEYS/n2.pub" rx_bytes)
  ((rx2 >= 20 * 1024 * 1024)) || fail "node2 received only $rx2 bytes from node1 through the tunnel" || return 1
  ((rx1 >= 20 * 1024 * 1024)) || fail "node1 received only $rx1 bytes from node2 through the tunnel" || return 1
  bad=$(($(tunctl_drops "$n1" "$if1" 'offload|too_large') + $(tunctl_drops "$n2" "$if2" 'offload|too_large')))
  ((bad == 0)) || fail "$bad TUN reads dropped as bad offload packets or too large" || return 1
}

tt_require --tunctl wg socat python3 ss ping bridge
tt_init
run_test vxlan-inside-tunnel-pod-to-pod test_vxlan_inside
tt_summary
