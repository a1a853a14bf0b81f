#!/usr/bin/env bash
# tunctl against the reference: wireguard-go (Debian's 0.0.20220316) configured with `wg`, and
# `wg` itself driving tunctl over the UAPI socket.
#
#   A (ns $NS_A) tunctl  198.18.0.1 / 2001:db8::1  ====  198.18.0.2 / 2001:db8::2  B (ns $NS_B) wireguard-go
#   tunnel 198.18.1.1/24 2001:db8:1::1/64                tunnel 198.18.1.2/24 2001:db8:1::2/64
#
# - handshake in both roles (only the initiator is given the other's endpoint, so the responder
#   can only learn it from the initiation), PSK on and off, IPv4 and IPv6 underlay, pings both
#   ways on both inner families, 100 MiB each way with SHA-256 compared (TT_INTEROP_MB overrides);
# - wireguard-go restarts (new ephemeral keys, empty state): traffic resumes when it initiates
#   and when tunctl has to notice the silence and initiate itself;
# - `wg show dump` / `wg showconf` / `wg set` / `wg setconf` / `wg syncconf` against tunctl,
#   observed by traffic and compared field by field with `tunctl show --json`;
# - the kernel selftest's byte counts (tools/testing/selftests/wireguard/netns.sh): 10 pings on a
#   fresh tunnel, pinging side tx 1428 or 1460, rx 1372, against tunctl and against wireguard-go.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

MB=${TT_INTEROP_MB:-100}
PORT_A=51820
PORT_B=51821

# ---------------------------------------------------------------------------------------------
# Helpers local to this group

# dump_peer NS IFACE PUBFILE: the tab-separated `wg show IFACE dump` line of that peer.
dump_peer() {
  local pub
  pub=$(cat "$3")
  nsx "$1" wg show "$2" dump | awk -F'\t' -v k="$pub" 'NR > 1 && $1 == k'
}

# dump_field NS IFACE PUBFILE N: field N (1-based) of that peer's dump line:
# 1 public key, 2 psk, 3 endpoint, 4 allowed ips, 5 latest handshake, 6 rx, 7 tx, 8 keepalive.
dump_field() { dump_peer "$1" "$2" "$3" | cut -f"$4"; }

# pair_setup [--v6-underlay] [--no-psk] [--initiator tunctl|wggo|both|none] [--b tunctl|wggo]
#            [--keepalive-a N]
# A is tunctl; B is wireguard-go (default) or tunctl. Only the initiator's config names the
# other's endpoint ("both": each knows the other). Sets NS_A NS_B IF_A IF_B KEYS CONF_A CONF_B
# U_A U_B PID_A PID_B B_KIND.
pair_setup() {
  local v6=0 psk=1 initiator=both ka_a=0
  B_KIND=wggo
  while (($#)); do
    case "$1" in
      --v6-underlay) v6=1 ;;
      --no-psk) psk=0 ;;
      --initiator)
        initiator=$2
        shift
        ;;
      --b)
        B_KIND=$2
        shift
        ;;
      --keepalive-a)
        ka_a=$2
        shift
        ;;
      *) fail "pair_setup: unknown option $1" || return 1 ;;
    esac
    shift
  done
  underlay_pair "$v6" || return 1
  local pa=() pb=() ea=() eb=() ka=()
  ((psk)) && pa=(--psk "$KEYS/ab.psk") && pb=(--psk "$KEYS/ab.psk")
  [[ $initiator == tunctl || $initiator == both ]] && ea=(--endpoint "$U_B:$PORT_B")
  [[ $initiator == wggo || $initiator == both ]] && eb=(--endpoint "$U_A:$PORT_A")
  ((ka_a > 0)) && ka=(--keepalive "$ka_a")
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port "$PORT_A" \
    --peer "$KEYS/b.pub" "${pa[@]}" "${ea[@]}" --allowed 198.18.1.2/32,2001:db8:1::2/128 "${ka[@]}" || return 1
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24,2001:db8:1::2/64 --port "$PORT_B" \
    --peer "$KEYS/a.pub" "${pb[@]}" "${eb[@]}" --allowed 198.18.1.1/32,2001:db8:1::1/128 || return 1
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  if [[ $B_KIND == tunctl ]]; then
    start_tunctl "$NS_B" "$CONF_B" || return 1
    PID_B=$TT_LAST_PID
  else
    start_wggo "$NS_B" "$IF_B" || return 1
    PID_B=$TT_LAST_PID
    wggo_configure "$NS_B" "$IF_B" "$CONF_B" || return 1
  fi
}

# soft_fail WHY: a failed check after which the rest of the test still tells something (counts,
# transfers): logged now, and the test fails at the end (soft_result).
SOFT_FAILED=0
soft_fail() {
  fail "$@"
  SOFT_FAILED=1
  return 0
}
soft_result() { ((SOFT_FAILED == 0)) || fail "earlier checks failed (CHECK FAILED above)"; }

# four_pings: v4 and v6 inner, both ways.
four_pings() {
  ping_ok "$NS_A" 198.18.1.2 || fail "IPv4 ping tunctl -> wireguard-go" || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "IPv4 ping wireguard-go -> tunctl" || return 1
  ping_ok "$NS_A" 2001:db8:1::2 || fail "IPv6 ping tunctl -> wireguard-go" || return 1
  ping_ok "$NS_B" 2001:db8:1::1 || fail "IPv6 ping wireguard-go -> tunctl" || return 1
  # Full-size packets cross in both directions (padding, MTU 1420 on both sides).
  nsx "$NS_A" ping -4 -n -q -c 2 -W 2 -M "do" -s $((1420 - 28)) 198.18.1.2 >/dev/null ||
    fail "1420-byte IPv4 packet tunctl -> wireguard-go" || return 1
  nsx "$NS_B" ping -6 -n -q -c 2 -W 2 -M "do" -s $((1420 - 48)) 2001:db8:1::1 >/dev/null ||
    fail "1420-byte IPv6 packet wireguard-go -> tunctl" || return 1
}

# ---------------------------------------------------------------------------------------------
# Handshake roles, PSK, underlay family, bulk data

# interop_case INITIATOR PSK(psk|nopsk) UNDERLAY(v4|v6)
interop_case() {
  local initiator=$1 psk=$2 underlay=$3 opts=(--initiator "$1")
  [[ $psk == nopsk ]] && opts+=(--no-psk)
  [[ $underlay == v6 ]] && opts+=(--v6-underlay)
  pair_setup "${opts[@]}" || return 1
  # The first packet decides who initiates: the side that has no endpoint cannot.
  if [[ $initiator == tunctl ]]; then
    ping_until "$NS_A" 198.18.1.2 10 || fail "no handshake: tunctl initiating ($psk, $underlay underlay)" || return 1
    [[ $(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 3) == "$U_A:$PORT_A" ]] ||
      fail "wireguard-go did not learn tunctl's endpoint from the initiation: $(dump_peer "$NS_B" "$IF_B" "$KEYS/a.pub")" || return 1
  else
    ping_until "$NS_B" 198.18.1.1 10 || fail "no handshake: wireguard-go initiating ($psk, $underlay underlay)" || return 1
    local ep
    ep=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint)
    [[ "$ep" == "$U_B:$PORT_B" ]] || fail "tunctl did not learn wireguard-go's endpoint: '$ep', expected $U_B:$PORT_B" || return 1
  fi
  four_pings || return 1
  # Each side records the handshake; the PSK flag is what was configured.
  local hs
  hs=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  # A responder records the handshake when the initiator's first transport packet confirms it
  # (wireguard-go receive.go: ReceivedWithKeypair -> timersHandshakeComplete).
  ((hs > $(date +%s) - 60)) || soft_fail "tunctl latest_handshake $hs is not recent ($initiator initiated)"
  hs=$(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 5)
  ((hs > $(date +%s) - 60)) || fail "wireguard-go latest handshake $hs is not recent" || return 1
  local want_psk=true
  [[ $psk == nopsk ]] && want_psk=false
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" preshared_key) == "$want_psk" ]] ||
    fail "tunctl reports preshared_key != $want_psk" || return 1

  local f="$TT_TEST_DIR/payload"
  make_random_file "$f" "$MB" || fail "could not make a ${MB} MiB file" || return 1
  tcp_transfer "$NS_A" "$NS_B" 198.18.1.2 5001 "$f" 120 || fail "${MB} MiB tunctl -> wireguard-go (IPv4 inside)" || return 1
  tcp_transfer "$NS_B" "$NS_A" 2001:db8:1::1 5002 "$f" 120 || fail "${MB} MiB wireguard-go -> tunctl (IPv6 inside)" || return 1
  rm -f "$f"
  # Counters on both ends cover the data they carried (tx of one ≈ rx of the other).
  local rx_a tx_b
  rx_a=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" rx_bytes)
  tx_b=$(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 7)
  ((rx_a >= MB * 1024 * 1024)) || fail "tunctl rx_bytes $rx_a < ${MB} MiB received" || return 1
  tt_log "tunctl rx_bytes=$rx_a, wireguard-go tx_bytes=$tx_b"
  pid_alive "$PID_A" && pid_alive "$PID_B" || fail "a daemon died" || return 1
  soft_result
}

test_tunctl_init_psk_v4() { interop_case tunctl psk v4; }
test_tunctl_init_nopsk_v6() { interop_case tunctl nopsk v6; }
test_wggo_init_psk_v6() { interop_case wggo psk v6; }
test_wggo_init_nopsk_v4() { interop_case wggo nopsk v4; }

# ---------------------------------------------------------------------------------------------
# wireguard-go restarts: a new process has new ephemeral keys, no sessions and new indices.

# restart_wggo: SIGKILL B, start a fresh wireguard-go, configure it again.
restart_wggo() {
  kill -KILL "$PID_B"
  wait_exit "$PID_B" 5 || fail "wireguard-go survived SIGKILL" || return 1
  wait_for 5 sh -c "! ip netns exec '$NS_B' ip link show '$IF_B'" || fail "B's TUN lingers after SIGKILL" || return 1
  sleep 1 # TAI64N timestamps have 2^24 ns granularity: the new initiation must be strictly newer
  start_wggo "$NS_B" "$IF_B" || return 1
  PID_B=$TT_LAST_PID
  wggo_configure "$NS_B" "$IF_B" "$CONF_B"
}

# elapsed T0: seconds since T0 (date +%s.%N), one decimal.
elapsed() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }

# wireguard-go comes back and speaks first: it initiates at once, tunctl must accept.
test_wggo_restart_wggo_speaks() {
  pair_setup --initiator both || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "tunnel not up" || return 1
  local hs0 t0
  hs0=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  restart_wggo || return 1
  t0=$(date +%s.%N)
  ping_until "$NS_B" 198.18.1.1 10 || fail "wireguard-go -> tunctl did not resume within 10 s of the restart" || return 1
  tt_log "traffic resumed $(elapsed "$t0") s after wireguard-go restarted (wireguard-go speaking first)"
  ping_ok "$NS_A" 198.18.1.2 || fail "tunctl -> wireguard-go after the restart" || return 1
  local hs1
  hs1=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  ((hs1 > hs0)) || soft_fail "tunctl (the responder this time) latest_handshake did not advance ($hs0 -> $hs1)"
  soft_result
}

# tunctl speaks first: its session is dead on the other side (unknown receiver index, silently
# dropped). The protocol's answer: data sent and nothing received for KEEPALIVE_TIMEOUT +
# REKEY_TIMEOUT (15 s) starts a new handshake. Bound: 30 s.
test_wggo_restart_tunctl_speaks() {
  pair_setup --initiator both || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "tunnel not up" || return 1
  restart_wggo || return 1
  local t0
  t0=$(date +%s.%N)
  ping_until "$NS_A" 198.18.1.2 30 ||
    fail "tunctl -> wireguard-go did not resume within 30 s of the restart (tunctl never re-initiated)" || return 1
  tt_log "traffic resumed $(elapsed "$t0") s after wireguard-go restarted (tunctl speaking first)"
  ping_ok "$NS_B" 198.18.1.1 || fail "wireguard-go -> tunctl after the restart" || return 1
}

# ---------------------------------------------------------------------------------------------
# `wg` against tunctl

# compare_json_dump: every field `tunctl show --json` and `wg show dump` share, for every peer.
compare_json_dump() {
  local json dump
  json=$(nsx "$NS_A" "$TUNCTL" show "$IF_A" --json) || fail "tunctl show --json" || return 1
  dump=$(nsx "$NS_A" wg show "$IF_A" dump) || fail "wg show dump" || return 1
  python3 - "$json" "$dump" <<'PY' || fail "tunctl show --json and wg show dump disagree (above)"
import json, sys
doc = json.loads(sys.argv[1])
lines = sys.argv[2].splitlines()
dev = lines[0].split("\t")
bad = []
if int(dev[2]) != doc["listen_port"]:
    bad.append(f"listen_port: json {doc['listen_port']} dump {dev[2]}")
if dev[1] != doc["public_key"]:
    bad.append(f"public_key: json {doc['public_key']} dump {dev[1]}")
dumped = {}
for line in lines[1:]:
    f = line.split("\t")
    dumped[f[0]] = {
        "preshared_key": f[1] != "(none)",
        "endpoint": None if f[2] == "(none)" else f[2],
        "allowed_ips": sorted([] if f[3] == "(none)" else f[3].split(",")),
        "latest_handshake": int(f[4]),
        "rx_bytes": int(f[5]),
        "tx_bytes": int(f[6]),
        "persistent_keepalive": 0 if f[7] == "off" else int(f[7]),
    }
jpeers = {p["public_key"]: p for p in doc["peers"]}
if set(jpeers) != set(dumped):
    bad.append(f"peer sets differ: json {sorted(jpeers)} dump {sorted(dumped)}")
for k in set(jpeers) & set(dumped):
    j = dict(jpeers[k], allowed_ips=sorted(jpeers[k]["allowed_ips"]))
    for field, v in dumped[k].items():
        if j[field] != v:
            bad.append(f"peer {k[:8]}… {field}: json {j[field]!r} dump {v!r}")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# quiet_compare: counters move with traffic, so compare when nothing is in flight (no pings,
# no keepalives configured): retried a few times in case a stray packet crossed between reads.
quiet_compare() {
  local i
  for ((i = 0; i < 3; i++)); do
    compare_json_dump 2>"$TT_TEST_DIR/compare.err" && return 0
    sleep 1
  done
  cat "$TT_TEST_DIR/compare.err" >&2
  fail "tunctl show --json vs wg show dump"
}

test_wg_show_and_set() {
  pair_setup --initiator both || return 1
  ping_ok "$NS_A" 198.18.1.2 5 || fail "tunnel not up" || return 1
  # dump: the peer, with a recent handshake and byte counters.
  local line hs rx0 tx0 rx1 tx1
  line=$(dump_peer "$NS_A" "$IF_A" "$KEYS/b.pub")
  tt_log "wg show $IF_A dump (peer): $line"
  [[ -n "$line" ]] || fail "wg show dump does not list the peer" || return 1
  [[ $(cut -f2 <<<"$line") == "$(cat "$KEYS/ab.psk")" ]] || fail "dump: preshared key is not the configured one" || return 1
  [[ $(cut -f3 <<<"$line") == "198.18.0.2:$PORT_B" ]] || fail "dump: endpoint $(cut -f3 <<<"$line")" || return 1
  [[ $(cut -f4 <<<"$line" | tr ',' '\n' | sort | paste -sd,) == "198.18.1.2/32,2001:db8:1::2/128" ]] ||
    fail "dump: allowed ips $(cut -f4 <<<"$line")" || return 1
  [[ $(cut -f8 <<<"$line") == off ]] || fail "dump: keepalive should be off: $(cut -f8 <<<"$line")" || return 1
  hs=$(cut -f5 <<<"$line")
  ((hs > $(date +%s) - 30)) || fail "dump: latest handshake $hs is not recent" || return 1
  rx0=$(cut -f6 <<<"$line")
  tx0=$(cut -f7 <<<"$line")
  ((rx0 > 0 && tx0 > 0)) || fail "dump: rx=$rx0 tx=$tx0 after pings" || return 1
  ping_ok "$NS_A" 198.18.1.2 5 || return 1
  rx1=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 6)
  tx1=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  # 5 pings of 84 bytes: 5 × 128 bytes on the wire each way.
  ((rx1 - rx0 == 640 && tx1 - tx0 == 640)) ||
    fail "5 more pings moved rx by $((rx1 - rx0)) and tx by $((tx1 - tx0)), expected 640 each" || return 1
  nsx "$NS_A" wg show "$IF_A" | has "latest handshake" || fail "wg show (human) has no handshake line" || return 1
  nsx "$NS_A" wg show "$IF_A" | has "transfer:" || fail "wg show (human) has no transfer line" || return 1
  quiet_compare || return 1

  # Remove the peer: traffic stops; the peer is gone from both views.
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" remove || fail "wg set ... remove" || return 1
  [[ -z $(dump_peer "$NS_A" "$IF_A" "$KEYS/b.pub") ]] || fail "peer still in dump after remove" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" peers) == "[]" ]] || fail "peer still in show --json after remove" || return 1
  ping_ok "$NS_A" 198.18.1.2 2 && { fail "ping still crosses after the peer was removed"; return 1; }
  ping_ok "$NS_B" 198.18.1.1 2 && { fail "wireguard-go still reaches tunctl after the peer was removed"; return 1; }

  # Add it back (with PSK, endpoint, allowed ips): traffic resumes.
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" preshared-key "$KEYS/ab.psk" endpoint "198.18.0.2:$PORT_B" \
    allowed-ips 198.18.1.2/32,2001:db8:1::2/128 || fail "wg set ... (add back)" || return 1
  ping_until "$NS_A" 198.18.1.2 10 || fail "traffic did not resume within 10 s after adding the peer back" || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "wireguard-go -> tunctl after adding the peer back" || return 1

  # allowed-ips: drop the v4 address: v4 to B stops (no peer for it), v6 still crosses.
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" allowed-ips 2001:db8:1::2/128,198.18.7.0/24 ||
    fail "wg set allowed-ips" || return 1
  nsx "$NS_A" wg showconf "$IF_A" | has -x "AllowedIPs = 2001:db8:1::2/128, 198.18.7.0/24\|AllowedIPs = 198.18.7.0/24, 2001:db8:1::2/128" ||
    fail "showconf does not show the new AllowedIPs: $(nsx "$NS_A" wg showconf "$IF_A" | grep AllowedIPs)" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips) == "198.18.7.0/24,2001:db8:1::2/128" ]] ||
    fail "show --json allowed_ips: $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips)" || return 1
  ping_ok "$NS_A" 2001:db8:1::2 || fail "v6 ping after narrowing allowed-ips" || return 1
  ping_ok "$NS_A" 198.18.1.2 2 && { fail "v4 ping crosses although 198.18.1.2 left the peer's allowed-ips"; return 1; }
  # … and from B: tunctl must now drop B's v4 packets (source not in B's allowed ips).
  ping_ok "$NS_B" 198.18.1.1 2 && { fail "tunctl accepted v4 from a source outside the peer's allowed-ips"; return 1; }
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" allowed-ips 198.18.1.2/32,2001:db8:1::2/128 ||
    fail "wg set allowed-ips (restore)" || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "v4 ping after restoring allowed-ips" || return 1

  # endpoint: move to B's IPv6 underlay address; the next packets go there.
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" endpoint "[2001:db8::2]:$PORT_B" || fail "wg set endpoint" || return 1
  nsx "$NS_A" wg showconf "$IF_A" | has -x "Endpoint = \[2001:db8::2\]:$PORT_B" ||
    fail "showconf endpoint: $(nsx "$NS_A" wg showconf "$IF_A" | grep Endpoint)" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint) == "[2001:db8::2]:$PORT_B" ]] ||
    fail "show --json endpoint: $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" endpoint)" || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "ping after moving the endpoint to IPv6" || return 1
  # wireguard-go roams to follow (the endpoint follows authenticated packets).
  [[ $(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 3) == "[2001:db8::1]:$PORT_A" ]] ||
    fail "wireguard-go did not see tunctl's packets come from [2001:db8::1]: $(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 3)" || return 1

  # persistent keepalive: visible everywhere, and 32-byte keepalives appear without traffic.
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" persistent-keepalive 1 || fail "wg set persistent-keepalive" || return 1
  nsx "$NS_A" wg showconf "$IF_A" | has -x "PersistentKeepalive = 1" || fail "showconf keepalive" || return 1
  [[ $(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 8) == 1 ]] || fail "dump keepalive: $(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 8)" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" persistent_keepalive) == 1 ]] || fail "json keepalive" || return 1
  sleep 1.5
  tx0=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  sleep 4
  tx1=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  (((tx1 - tx0) >= 3 * 32 && (tx1 - tx0) % 32 == 0 && (tx1 - tx0) <= 6 * 32)) ||
    fail "with keepalive 1 s, 4 quiet seconds sent $((tx1 - tx0)) bytes (expected 3..6 keepalives of 32)" || return 1
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" persistent-keepalive off || fail "wg set keepalive off" || return 1
  [[ $(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 8) == off ]] || fail "keepalive not off in dump" || return 1
  sleep 1.5
  tx0=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  sleep 3
  tx1=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  ((tx1 == tx0)) || fail "keepalive off, yet $((tx1 - tx0)) bytes were sent in 3 quiet seconds" || return 1

  # listen-port: tunctl rebinds; wireguard-go is told the new endpoint and traffic crosses.
  local newport=$((PORT_A + 7))
  nsx "$NS_A" wg set "$IF_A" listen-port "$newport" || fail "wg set listen-port" || return 1
  wait_for 5 sh -c "ip netns exec '$NS_A' ss -Huln 'sport = :$newport' | grep -q ." || fail "tunctl does not listen on $newport" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" listen_port) == "$newport" ]] || fail "json listen_port after wg set" || return 1
  nsx "$NS_B" wg set "$IF_B" peer "$(cat "$KEYS/a.pub")" endpoint "198.18.0.1:$newport" || return 1
  ping_ok "$NS_B" 198.18.1.1 || fail "wireguard-go -> tunctl on the new listen port" || return 1

  quiet_compare
}

# setconf replaces everything (peers included), syncconf changes only what differs.
test_wg_setconf_syncconf() {
  pair_setup --initiator both || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "tunnel not up" || return 1
  tt_keypair "$KEYS" c || return 1
  local cfg="$TT_TEST_DIR/setconf.conf" hs0 hs1
  # B without PSK (B still has it: must fail), plus a second peer C.
  printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nEndpoint = 198.18.0.2:%s\nAllowedIPs = 198.18.1.2/32, 2001:db8:1::2/128\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.18.9.0/24\nPersistentKeepalive = 15\n' \
    "$(cat "$KEYS/a.key")" "$PORT_A" "$(cat "$KEYS/b.pub")" "$PORT_B" "$(cat "$KEYS/c.pub")" >"$cfg"
  nsx "$NS_A" wg setconf "$IF_A" "$cfg" || fail "wg setconf against tunctl failed" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 2 ]] ||
    fail "setconf: expected 2 peers in show --json" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" preshared_key) == false ]] || fail "setconf did not clear B's PSK" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/c.pub" persistent_keepalive) == 15 ]] || fail "setconf: C's keepalive" || return 1
  # PSKs now differ: a fresh handshake cannot complete (the old session was dropped with the peer).
  ping_ok "$NS_A" 198.18.1.2 2 && { fail "ping crosses with mismatched PSKs after setconf (old session kept?)"; return 1; }
  # Put the PSK back with setconf: the handshake completes.
  printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nPresharedKey = %s\nEndpoint = 198.18.0.2:%s\nAllowedIPs = 198.18.1.2/32, 2001:db8:1::2/128\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 198.18.9.0/24\nPersistentKeepalive = 15\n' \
    "$(cat "$KEYS/a.key")" "$PORT_A" "$(cat "$KEYS/b.pub")" "$(cat "$KEYS/ab.psk")" "$PORT_B" "$(cat "$KEYS/c.pub")" >"$cfg"
  nsx "$NS_A" wg setconf "$IF_A" "$cfg" || fail "second wg setconf failed" || return 1
  ping_until "$NS_A" 198.18.1.2 15 || fail "no traffic after setconf restored the PSK" || return 1
  ping_ok "$NS_A" 2001:db8:1::2 || fail "v6 after setconf" || return 1
  # showconf round-trips what setconf was given (peer order aside).
  local show
  show=$(nsx "$NS_A" wg showconf "$IF_A")
  tt_log "wg showconf after setconf:"$'\n'"$show"
  has -x "ListenPort = $PORT_A" <<<"$show" || fail "showconf ListenPort" || return 1
  has -x "PrivateKey = $(cat "$KEYS/a.key")" <<<"$show" || fail "showconf PrivateKey" || return 1
  has -x "PresharedKey = $(cat "$KEYS/ab.psk")" <<<"$show" || fail "showconf PresharedKey" || return 1
  has -x "PersistentKeepalive = 15" <<<"$show" || fail "showconf C's keepalive" || return 1

  # syncconf: drop C, change nothing about B: the session to B survives (no new handshake).
  hs0=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nPresharedKey = %s\nEndpoint = 198.18.0.2:%s\nAllowedIPs = 198.18.1.2/32, 2001:db8:1::2/128, 198.18.8.0/24\n' \
    "$(cat "$KEYS/a.key")" "$PORT_A" "$(cat "$KEYS/b.pub")" "$(cat "$KEYS/ab.psk")" "$PORT_B" >"$cfg"
  sleep 1.2 # a new handshake would show as a later second
  nsx "$NS_A" wg syncconf "$IF_A" "$cfg" || fail "wg syncconf against tunctl failed" || return 1
  [[ $(tunctl_json "$NS_A" "$IF_A" peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == 1 ]] ||
    fail "syncconf did not remove C" || return 1
  [[ $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips) == "198.18.1.2/32,198.18.8.0/24,2001:db8:1::2/128" ]] ||
    fail "syncconf allowed_ips: $(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" allowed_ips)" || return 1
  ping_ok "$NS_A" 198.18.1.2 || fail "ping after syncconf" || return 1
  hs1=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" latest_handshake)
  ((hs1 == hs0)) || fail "syncconf with B unchanged forced a new handshake ($hs0 -> $hs1)" || return 1
  quiet_compare
}

# ---------------------------------------------------------------------------------------------
# The kernel selftest's byte counts

# selftest_bytes RECEIVER(tunctl|wggo): 10 pings from A (tunctl) on a fresh tunnel. As in the
# kernel's netns.sh, the endpoints are given with `wg set` once both ends run: a config with an
# endpoint makes tunctl initiate at start (restart recovery), which would spend the handshake
# this count includes before the first ping.
selftest_bytes() {
  pair_setup --initiator none --b "$1" || return 1
  nsx "$NS_A" wg set "$IF_A" peer "$(cat "$KEYS/b.pub")" endpoint "$U_B:$PORT_B" || fail "wg set endpoint on A" || return 1
  nsx "$NS_B" wg set "$IF_B" peer "$(cat "$KEYS/a.pub")" endpoint "$U_A:$PORT_A" || fail "wg set endpoint on B" || return 1
  [[ $(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 5) == 0 ]] || fail "tunnel not fresh: a handshake already happened" || return 1
  [[ $(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7) == 0 ]] || fail "tunnel not fresh: tx_bytes != 0" || return 1
  # The selftest uses ping -f; -i 0.2 is the unprivileged-friendly equivalent here (any ping
  # whose reply is lost would change the count, so all 10 must come back).
  nsx "$NS_A" ping -4 -n -q -c 10 -i 0.2 -W 2 198.18.1.2 >"$TT_TEST_DIR/ping.out" 2>&1 ||
    fail "10 pings: $(tail -2 "$TT_TEST_DIR/ping.out")" || return 1
  sleep 0.5
  local rx tx jrx jtx brx btx
  rx=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 6)
  tx=$(dump_field "$NS_A" "$IF_A" "$KEYS/b.pub" 7)
  jrx=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" rx_bytes)
  jtx=$(tunctl_peer_field "$NS_A" "$IF_A" "$KEYS/b.pub" tx_bytes)
  brx=$(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 6)
  btx=$(dump_field "$NS_B" "$IF_B" "$KEYS/a.pub" 7)
  tt_log "pinging side (tunctl): rx=$rx tx=$tx (json rx=$jrx tx=$jtx); receiver ($1): rx=$brx tx=$btx"
  [[ "$rx" == "$jrx" && "$tx" == "$jtx" ]] || fail "wg show dump and show --json disagree" || return 1
  ((rx == 1372)) || fail "pinging side rx_bytes $rx, expected 1372 (response 92 + 10 x 128)" || return 1
  ((tx == 1428 || tx == 1460)) || fail "pinging side tx_bytes $tx, expected 1428 or 1460 (initiation 148 + 10 x 128 [+ keepalive 32])" || return 1
  # The receiver counts the same bytes from its side.
  ((brx == tx && btx == rx)) || fail "receiver counted rx=$brx tx=$btx, the pinger rx=$rx tx=$tx" || return 1
}
test_selftest_bytes_tunctl() { selftest_bytes tunctl; }
test_selftest_bytes_wggo() { selftest_bytes wggo; }

tt_require --tunctl wg wireguard-go socat python3 ping ss tcpdump
tt_init
run_test interop-tunctl-initiates-psk-v4 test_tunctl_init_psk_v4
run_test interop-tunctl-initiates-nopsk-v6 test_tunctl_init_nopsk_v6
run_test interop-wggo-initiates-psk-v6 test_wggo_init_psk_v6
run_test interop-wggo-initiates-nopsk-v4 test_wggo_init_nopsk_v4
run_test interop-wggo-restart-wggo-speaks test_wggo_restart_wggo_speaks
run_test interop-wggo-restart-tunctl-speaks test_wggo_restart_tunctl_speaks
run_test interop-wg-show-and-set test_wg_show_and_set
run_test interop-wg-setconf-syncconf test_wg_setconf_syncconf
run_test interop-selftest-bytes-tunctl-receiver test_selftest_bytes_tunctl
run_test interop-selftest-bytes-wggo-receiver test_selftest_bytes_wggo
tt_summary
