#!/usr/bin/env bash
# A lossy, reordering, duplicating path (udprelay between the nodes, netem's stand-in): a TCP
# transfer through the tunnel still completes with a matching SHA-256, and the duplicates show up
# as replayed packets in `show --json` drops.
#
#   A  veA 198.18.0.1/30 ── veM1 198.18.0.2/30  M  veM2 198.18.0.5/30 ── veB 198.18.0.6/30  B
#   udprelay in M: --listen 198.18.0.2:40000 --to 198.18.0.6:51821. M does not forward, so the
#   relay is the only path: A's Endpoint for B is the relay; B has no Endpoint for A and learns
#   the relay's address from A's first authenticated packet.
# TT_IMPAIR_MB overrides the size (default 50), TT_IMPAIR_ARGS the relay's impairment options.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

MB=${TT_IMPAIR_MB:-50}
read -r -a IMPAIR <<<"${TT_IMPAIR_ARGS:---loss 0.02 --reorder 0.05 --duplicate 0.05}"

test_impaired_path() {
  NS_A=$(ns_name a)
  NS_M=$(ns_name m)
  NS_B=$(ns_name b)
  IF_A=$(if_name a)
  IF_B=$(if_name b)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && ns_create "$NS_M" && ns_create "$NS_B" || return 1
  veth_create "$NS_A" veA "$NS_M" veM1 && veth_create "$NS_M" veM2 "$NS_B" veB || return 1
  addr_add "$NS_A" veA 198.18.0.1/30 && addr_add "$NS_M" veM1 198.18.0.2/30 &&
    addr_add "$NS_M" veM2 198.18.0.5/30 && addr_add "$NS_B" veB 198.18.0.6/30 || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --endpoint 198.18.0.2:40000 --allowed 198.18.1.2/32 || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24 --port 51821 \
    --peer "$KEYS/a.pub" --allowed 198.18.1.1/32 || return 1

  local relay_log="$TT_TEST_DIR/relay.log" relay_pid
  ip netns exec "$NS_M" "$UDPRELAY" --listen 198.18.0.2:40000 --to 198.18.0.6:51821 "${IMPAIR[@]}" --seed 1 \
    2>"$relay_log" &
  relay_pid=$!
  tt_register_pid "$relay_pid"
  wait_for 5 sh -c "ip netns exec '$NS_M' ss -Huln 'sport = :40000' | grep -q ." || fail "relay did not start" || return 1

  start_tunctl "$NS_A" "$CONF_A" && start_tunctl "$NS_B" "$CONF_B" || return 1
  # A initiates (B does not know where A is); lossy path: allow retries.
  ping_until "$NS_A" 198.18.1.2 20 || fail "no ping through the relay within 20 s" || return 1
  [[ $(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" endpoint) == 198.18.0.5:* ]] ||
    fail "B should see A at the relay's address, sees $(tunctl_peer_field "$NS_B" "$IF_B" "$KEYS/a.pub" endpoint)" || return 1

  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" "$MB" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" 240 || fail "A -> B over the impaired path" || return 1
  tcp_transfer "$NS_B" "$NS_A" 198.18.1.1 5002 "$f" 240 || fail "B -> A over the impaired path" || return 1
  rm -f "$f"

  kill -TERM "$relay_pid"
  wait_exit "$relay_pid" 5
  cat "$relay_log" >&2
  grep -Eq "to-server: .* dropped [1-9][0-9]* duplicated [1-9][0-9]* reordered [1-9]" "$relay_log" ||
    fail "the relay did not actually lose, duplicate and reorder" || return 1

  local ra rb
  ra=$(tunctl_drops "$NS_A" "$IF_A" "replay|duplicat")
  rb=$(tunctl_drops "$NS_B" "$IF_B" "replay|duplicat")
  tt_log "drops A: $(tunctl_json "$NS_A" "$IF_A" drops)  B: $(tunctl_json "$NS_B" "$IF_B" drops)"
  ((rb > 0)) || fail "B received duplicated packets but counts no replay drops" || return 1
  ((ra > 0)) || fail "A received duplicated packets but counts no replay drops" || return 1
}

tt_require --tunctl --relay wg socat python3 ss ping
tt_init
run_test impaired-path-transfer test_impaired_path
tt_summary
