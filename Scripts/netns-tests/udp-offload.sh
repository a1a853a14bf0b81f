#!/usr/bin/env bash
# UDP segmentation offload through the tunnel, invisible to applications. Topology: two_nodes_setup
# in Scripts/lib/netns.sh; Scripts/lib/udp-gso-probe.py sends in A and checks in B that every
# datagram arrives once, in order within its flow, with exactly its bytes and length.
#
# - Send side: an application in A that sends with UDP_SEGMENT (UDP GSO) makes the kernel hand
#   tunctl one UDP super-packet per sendmsg (TUN USO), which tunctl cuts into datagrams itself.
# - Receive side: tunctl in B coalesces the decrypted datagrams of a flow into super-packets, one
#   TUN write each, which the kernel cuts back into datagrams before B's socket.
# A capture of packets longer than the tunnel MTU on the TUN shows that the offload path really
# ran; with TUNCTL_OFFLOAD=off (Scripts/test runs this group both ways) there must be none.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

PROBE=$TT_ROOT/Scripts/lib/udp-gso-probe.py
MTU=1420 # two_nodes_setup's tunnel MTU (the default): no single packet on the TUN is longer

# offload_on: as tunctl reads TUNCTL_OFFLOAD (TunOffload.swift), on unless off/0/no/false.
offload_on() {
  case "${TUNCTL_OFFLOAD:-}" in
    [Oo][Ff][Ff] | 0 | [Nn][Oo] | [Ff][Aa][Ll][Ss][Ee]) return 1 ;;
  esac
  return 0
}

# tun_uso LOG: the tunctl whose log this is took UDP super-packets on its TUN (the kernel did not
# refuse TUN_F_USO4/6; before Linux 6.2 it does, and tunctl then falls back on its own).
tun_uso() { offload_on && ! grep -q "TUN UDP offload unavailable\|TUN offloads unavailable" "$1"; }

jf() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# capture_super NS DEV NAME: records in $TT_TEST_DIR/NAME.pcap every UDP packet on DEV longer than
# the tunnel MTU, i.e. every super-packet; sets CAPTURE_PID.
capture_super() {
  local log="$TT_TEST_DIR/tcpdump-$3.log"
  ip netns exec "$1" timeout 40 tcpdump -i "$2" -n -U --immediate-mode -s 64 -w "$TT_TEST_DIR/$3.pcap" "udp and greater $((MTU + 1))" \
    2>"$log" &
  CAPTURE_PID=$!
  tt_register_pid "$CAPTURE_PID"
  wait_for 5 grep -q "listening" "$log" || fail "tcpdump on $2 did not start"
}

# capture_stop PID NAME: stops the capture; sets SUPER to the number of super-packets it wrote down
# (on a loaded machine, fewer than it was handed: a lower bound).
capture_stop() {
  sleep 0.5 # what its filter took may still be on its way to it: stopped at once, it loses that
  kill -INT "$1" 2>/dev/null
  wait_exit "$1" 5 || fail "tcpdump ($2) did not stop within 5 s" || return 1
  SUPER=$(tcpdump -r "$TT_TEST_DIR/$2.pcap" -n 2>/dev/null | wc -l)
}

# probe_flows SRC_NS DST_NS HOST SENDER_OPTION... -- FLOW_OPTION...: the receiver in DST_NS, the
# sender in SRC_NS, both with the same flows; sets SENT and RECEIVED to their reports. Bounded: the
# sender gets 15 s, the receiver 15 s after it is ready (less once all has arrived or 2 s idle).
probe_flows() {
  local src=$1 dst=$2 host=$3 rlog="$TT_TEST_DIR/receiver.log" rout="$TT_TEST_DIR/receiver.json" rpid
  shift 3
  local send=()
  while (($#)) && [[ "$1" != -- ]]; do
    send+=("$1")
    shift
  done
  shift
  ip netns exec "$dst" timeout 20 python3 "$PROBE" recv "$host" --rcvbuf $((8 << 20)) --timeout 15 "$@" \
    >"$rout" 2>"$rlog" &
  rpid=$!
  tt_register_pid "$rpid"
  wait_for 5 grep -q "^ready" "$rlog" || fail "receiver did not bind: $(cat "$rlog")" || return 1
  SENT=$(nsx "$src" timeout 15 python3 "$PROBE" send "$host" "${send[@]}" "$@" 2>"$TT_TEST_DIR/sender.log") ||
    fail "sender failed: $(cat "$TT_TEST_DIR/sender.log")" || return 1
  tt_log "sender: $SENT"
  wait_exit "$rpid" 20 || fail "receiver still running after 20 s" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "receiver exited $TT_EXIT_CODE: $(cat "$rlog")" || return 1
  RECEIVED=$(cat "$rout")
  tt_log "receiver: $RECEIVED"
}

# two_nodes_queued: two_nodes_setup, the tunnel up, and a long queue on A's TUN. At the kernel's
# 500 packets, a tunctl that a loaded machine schedules a few milliseconds late loses the
# datagrams the sender wrote meanwhile (A's TUN counts them as TX dropped): the tunnel is tested
# here, not the scheduler.
two_nodes_queued() {
  two_nodes_setup || return 1
  nsx "$NS_A" ip link set dev "$IF_A" txqueuelen 10000 || fail "cannot lengthen A's TUN queue" || return 1
  ping_ok "$NS_A" 198.18.1.2 1 || fail "tunnel not up" || return 1
}

# loss_report: the counters of every place a datagram can be lost on the way, in both namespaces.
loss_report() {
  local ns
  for ns in "$NS_A" "$NS_B"; do
    tt_log "$ns UDP: $(nsx "$ns" cat /proc/net/snmp | awk '/^Udp:/ {
      if (h) { for (i = 2; i <= NF; i++) printf "%s=%s ", f[i], $i } else { h = 1; split($0, f) } }')"
    tt_log "$ns UDP6: $(nsx "$ns" cat /proc/net/snmp6 | awk '/^Udp6(InErrors|RcvbufErrors|SndbufErrors)/ {
      printf "%s=%s ", $1, $2 }')"
    tt_log "$ns links: $(nsx "$ns" ip -j -s link | python3 -c 'import json, sys
print(" ".join("%s rx_dropped=%d tx_dropped=%d" % (l["ifname"], l["stats64"]["rx"]["dropped"],
      l["stats64"]["tx"]["dropped"]) for l in json.load(sys.stdin)))')"
  done
  tt_log "tunctl drops A: $(tunctl_json "$NS_A" "$IF_A" drops)  B: $(tunctl_json "$NS_B" "$IF_B" drops)"
}

# received_intact: every datagram the plan holds arrived once, unaltered, in order within its flow.
received_intact() {
  local k
  for k in bad duplicates out_of_order missing; do
    [[ $(jf "$RECEIVED" "$k") == 0 ]] || fail "$k: $(jf "$RECEIVED" "$k") (first bad: $(jf "$RECEIVED" first_bad))" ||
      { loss_report; return 1; }
  done
  [[ $(jf "$RECEIVED" received) == "$(jf "$RECEIVED" expected)" ]] ||
    fail "received $(jf "$RECEIVED" received) of $(jf "$RECEIVED" expected) datagrams" || return 1
}

# no_offload_drops: neither tunctl counted a super-packet it could not cut or a bad inner packet.
no_offload_drops() {
  local n
  tt_log "drops A: $(tunctl_json "$NS_A" "$IF_A" drops)  B: $(tunctl_json "$NS_B" "$IF_B" drops)"
  n=$(tunctl_drops "$NS_A" "$IF_A" "offload|bad_inner")
  ((n == 0)) || fail "A dropped $n packets as bad offload or bad inner packets" || return 1
  n=$(tunctl_drops "$NS_B" "$IF_B" "offload|bad_inner")
  ((n == 0)) || fail "B dropped $n packets as bad offload or bad inner packets" || return 1
}

# gso_send HOST MAX: A sends to B's HOST with UDP_SEGMENT; MAX is the largest UDP payload that fits
# the tunnel MTU (1420 - 28 over IPv4, 1420 - 48 over IPv6).
gso_send() {
  local host=$1 max=$2 send=(--rate 500 --burst 4) cap_a cap_b super_a super_b
  two_nodes_queued || return 1
  # Off, the TUN offers no checksum offload, and a kernel older than "udp: Allow GSO transmit from
  # devices with no checksum offload" (2024) refuses UDP_SEGMENT there (EIO): the datagrams must
  # then cross all the same, one per send. On, every super-send must be taken.
  offload_on || send+=(--gso-fallback)
  # 200 super-sends, interleaved: the most segments a send takes (64), 40 KiB of 1000-byte
  # datagrams, 64 KiB of full-MTU ones, and an odd size whose last datagram is shorter still.
  local flows=(
    --flow "id=1,port=7001,count=3200,size=64,gso=64"
    --flow "id=2,port=7002,count=2000,size=1000,gso=40"
    --flow "id=3,port=7003,count=2350,size=$max,gso=47"
    --flow "id=4,port=7004,count=850,size=999,gso=17,last=333"
  )
  capture_super "$NS_A" "$IF_A" tun-a || return 1
  cap_a=$CAPTURE_PID
  capture_super "$NS_B" "$IF_B" tun-b || return 1
  cap_b=$CAPTURE_PID
  probe_flows "$NS_A" "$NS_B" "$host" "${send[@]}" -- "${flows[@]}" || return 1
  capture_stop "$cap_a" tun-a && super_a=$SUPER || return 1
  capture_stop "$cap_b" tun-b && super_b=$SUPER || return 1
  tt_log "super-packets: $super_a from A's kernel to tunctl, $super_b from B's tunctl to its kernel"
  received_intact || return 1
  [[ $(jf "$SENT" sent) == 8400 ]] || fail "the sender sent $(jf "$SENT" sent) of 8400 datagrams" || return 1
  if offload_on; then
    [[ $(jf "$SENT" super_sends) == 200 && $(jf "$SENT" gso_refused) == 0 ]] ||
      fail "the kernel did not take every UDP_SEGMENT send: $SENT" || return 1
  fi
  if tun_uso "$TT_TEST_DIR/$IF_A.0.log"; then
    ((super_a > 0)) || fail "A's kernel handed tunctl no UDP super-packet: the segmentation path did not run" ||
      return 1
  elif offload_on; then
    tt_log "A's TUN takes no UDP super-packets here (see $IF_A.0.log): the kernel cut them, not tunctl"
  else
    ((super_a == 0 && super_b == 0)) || fail "offloads are off, yet the TUNs carried super-packets" || return 1
  fi
  no_offload_drops
}

test_gso_send_ipv4() { gso_send 198.18.1.2 $((MTU - 28)); }
test_gso_send_ipv6() { gso_send 2001:db8:1::2 $((MTU - 48)); }

# A burst of small equal datagrams (and a last shorter one) in one flow, another flow of another
# size interleaved: tunctl in B gets them in batches and coalesces each flow's run.
test_burst_coalesced() {
  local cap_b super_b
  two_nodes_queued || return 1
  local flows=(
    --flow "id=1,port=7101,count=20001,size=100,last=37"
    --flow "id=2,port=7102,count=5000,size=700"
  )
  capture_super "$NS_B" "$IF_B" tun-b || return 1
  cap_b=$CAPTURE_PID
  probe_flows "$NS_A" "$NS_B" 198.18.1.2 --rate 50000 --burst 64 -- "${flows[@]}" || return 1
  capture_stop "$cap_b" tun-b && super_b=$SUPER || return 1
  tt_log "super-packets from B's tunctl to its kernel: $super_b"
  received_intact || return 1
  if tun_uso "$TT_TEST_DIR/$IF_B.0.log"; then
    ((super_b > 0)) || fail "B's tunctl wrote no UDP super-packet: the coalescing path did not run" || return 1
  elif offload_on; then
    tt_log "B's TUN takes no UDP super-packets here (see $IF_B.0.log): nothing to coalesce into"
  else
    ((super_b == 0)) || fail "offloads are off, yet B's TUN carried $super_b super-packets" || return 1
  fi
  no_offload_drops
}

# wg set listen-port on B opens a new socket: it must keep the offloads the old one had (it once
# came up with GSO alone, GRO lost for good) and carry the traffic after A learns the new port.
test_rebind_keeps_offload() {
  two_nodes_queued || return 1
  local before after want=true
  offload_on || want=false
  before="$(tunctl_json "$NS_B" "$IF_B" offload.udpSegmentation) $(tunctl_json "$NS_B" "$IF_B" offload.udpCoalescing)"
  [[ "$before" == "$want $want" ]] || fail "at start B's socket offloads are '$before', expected '$want $want'" || return 1
  nsx "$NS_B" wg set "$IF_B" listen-port 51999 || fail "wg set listen-port on B failed" || return 1
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" endpoint "$U_B:51999" || fail "wg set endpoint on A failed" ||
    return 1
  [[ $(tunctl_json "$NS_B" "$IF_B" listen_port) == 51999 ]] || fail "B does not listen on 51999" || return 1
  after="$(tunctl_json "$NS_B" "$IF_B" offload.udpSegmentation) $(tunctl_json "$NS_B" "$IF_B" offload.udpCoalescing)"
  tt_log "B's socket offloads (GSO GRO): before '$before', after the new port '$after'"
  [[ "$after" == "$before" ]] || fail "after wg set listen-port B's socket offloads are '$after', were '$before'" ||
    return 1
  ping_ok "$NS_A" 198.18.1.2 5 || fail "no ping through the tunnel after the new port" || return 1
  probe_flows "$NS_A" "$NS_B" 198.18.1.2 --rate 50000 --burst 64 -- --flow "id=1,port=7201,count=5000,size=600" ||
    return 1
  received_intact || return 1
  no_offload_drops
}

tt_require --tunctl wg python3 tcpdump ping
tt_init
run_test udp-gso-send-ipv4 test_gso_send_ipv4
run_test udp-gso-send-ipv6 test_gso_send_ipv6
run_test udp-burst-coalesced test_burst_coalesced
run_test udp-offload-after-new-listen-port test_rebind_keeps_offload
tt_summary
