# shellcheck shell=bash
# shellcheck disable=SC2034 # variables set here (PID_A, NS_A, …) are read by the scripts that source this
# Network-namespace test harness for tunctl. Source it; do not run it.
#
# Contract:
# - Every namespace, process and file a test makes is registered and removed by one cleanup
#   (tt_cleanup), run on EXIT/INT/TERM, including on failure. Each run_test body runs in a subshell
#   with its own cleanup trap, so one test's leftovers never leak into the next.
# - Names carry the run's PID: namespaces "tt<PID>n<SEQ><role>", interfaces "tt<PID>w<SEQ><role>".
#   A leftover is therefore traceable to its run, and tt_cleanup sweeps every namespace with the
#   run's prefix even if a test body was killed before its own trap ran.
# - Addresses only from 198.18.0.0/15 and 2001:db8::/32 (documentation/benchmarking ranges).
# - Every wait is bounded (wait_for takes a timeout in seconds).
# - Under CI=true nothing skips: a missing root, tool or capability is a failure.
#
# Environment: TUNCTL_BIN, UDPRELAY_BIN (default .build/release/…), TT_RESULTS (a file that
# run_test appends "PASS name"/"FAIL name" lines to, used by Scripts/test to add up the groups),
# TT_KEEP=1 keeps the run's temporary directory for inspection.

TT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TT_RUN="tt$$"
TT_TMP=""
TT_SEQ=0
TT_PASSED=0
TT_FAILED=0
TT_PIDS=()
TT_NS=()
TT_IFACES=()
TT_TEST_DIR=""
TT_CHILD=""
TUNCTL="${TUNCTL_BIN:-$TT_ROOT/.build/release/tunctl}"
UDPRELAY="${UDPRELAY_BIN:-$TT_ROOT/.build/release/udprelay}"
TT_SOCK_DIR=/var/run/wireguard

tt_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Records a failed check with its reason and returns non-zero, so a test body can say
# `cond || fail "why"` and stop there with `|| return 1`.
fail() {
  tt_log "CHECK FAILED: $*"
  return 1
}

tt_is_ci() { [[ "${CI:-}" == "true" ]]; }

# has ARGS...: grep that reads all of its input. Under `set -o pipefail`, `cmd | grep -q` fails
# at random when grep exits at the first match and cmd then dies of SIGPIPE.
has() { grep "$@" >/dev/null; }

# ---------------------------------------------------------------------------------------------
# Cleanup

tt_register_pid() { TT_PIDS+=("$1"); }
tt_register_ns() { TT_NS+=("$1"); }
tt_register_iface() { TT_IFACES+=("$1"); }

# Stops one process: TERM, up to 3 s grace, then KILL. Bounded.
tt_stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 30; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  sleep 0.1
}

# Kills every process still inside a namespace, then deletes it.
tt_delete_ns() {
  local ns=$1 pids
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null)
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086 # word splitting of the pid list is intended
    kill -KILL $pids 2>/dev/null
    sleep 0.2
  fi
  ip netns del "$ns" 2>/dev/null || tt_log "warning: could not delete namespace $ns"
}

# tt_descendants PID: every descendant of PID, deepest first.
tt_descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    tt_descendants "$child"
    echo "$child"
  done
}

# Stops a running test body (a background subshell) and everything it started: TERM to the whole
# tree so that a foreground command dies and the body's own cleanup trap can run, up to 5 s for
# that, then KILL to whatever is left.
tt_stop_tree() {
  local root=$1 pids i
  pid_alive "$root" || return 0
  pids="$(tt_descendants "$root") $root"
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    pid_alive "$root" || break
    sleep 0.1
  done
  pids="$(tt_descendants "$root") $root"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null
  wait "$root" 2>/dev/null
}

tt_cleanup() {
  local rc=$? pid ns iface
  trap - EXIT INT TERM
  [[ -n "${TT_CHILD:-}" ]] && tt_stop_tree "$TT_CHILD"
  TT_CHILD=""
  for pid in "${TT_PIDS[@]}"; do tt_stop_pid "$pid"; done
  TT_PIDS=()
  for ns in "${TT_NS[@]}"; do tt_delete_ns "$ns"; done
  TT_NS=()
  # Sweep: anything of this run that a killed subshell could not remove itself.
  if [[ "$BASH_SUBSHELL" -eq 0 ]]; then
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${TT_RUN}n" || true); do
      tt_delete_ns "$ns"
    done
    rm -f "$TT_SOCK_DIR/${TT_RUN}w"*.sock 2>/dev/null
  fi
  # Stale control sockets of registered interfaces (after kill -9 a daemon cannot remove its own).
  for iface in "${TT_IFACES[@]}"; do rm -f "$TT_SOCK_DIR/$iface.sock"; done
  TT_IFACES=()
  if [[ "$BASH_SUBSHELL" -eq 0 && -n "$TT_TMP" && -d "$TT_TMP" && "${TT_KEEP:-0}" != 1 ]]; then
    rm -rf "$TT_TMP"
  fi
  return "$rc"
}

tt_init() {
  TT_TMP=$(mktemp -d "/tmp/${TT_RUN}.XXXXXX")
  chmod 700 "$TT_TMP"
  trap tt_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------------------------
# Preconditions: skip only outside CI, fail under CI.

# tt_missing REASON: a precondition is missing: skip the group, or fail it under CI=true.
tt_missing() {
  if tt_is_ci; then
    tt_log "FAIL: $1 (CI=true: namespace tests must run, not skip)"
    [[ -n "${TT_RESULTS:-}" ]] && echo "FAIL precondition: $1" >>"$TT_RESULTS"
    echo "0 passed, 1 failed"
    exit 1
  fi
  tt_log "SKIP: $1"
  [[ -n "${TT_RESULTS:-}" ]] && echo "SKIP precondition: $1" >>"$TT_RESULTS"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
}

# tt_require [--tunctl] [--relay] TOOL...: root, the namespace capability and the named tools.
tt_require() {
  local t
  [[ $(id -u) -eq 0 ]] || tt_missing "namespace tests need root (run: sudo $0)"
  command -v ip >/dev/null || tt_missing "'ip' (iproute2) is not installed"
  for t in "$@"; do
    case "$t" in
      --tunctl) [[ -x "$TUNCTL" ]] || tt_missing "tunctl binary not found at $TUNCTL (swift build -c release, or set TUNCTL_BIN)" ;;
      --relay) [[ -x "$UDPRELAY" ]] || tt_missing "udprelay binary not found at $UDPRELAY (swift build -c release, or set UDPRELAY_BIN)" ;;
      *) command -v "$t" >/dev/null || tt_missing "'$t' is not installed" ;;
    esac
  done
  local probe="${TT_RUN}nprobe"
  if ! ip netns add "$probe" 2>/dev/null; then
    tt_missing "cannot create a network namespace (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)"
  fi
  ip netns del "$probe"
  [[ -c /dev/net/tun ]] || tt_missing "/dev/net/tun is missing"
}

# ---------------------------------------------------------------------------------------------
# Topology

# ns_name ROLE / if_name ROLE: names unique to this run and test.
ns_name() { echo "${TT_RUN}n${TT_SEQ}$1"; }
if_name() { echo "${TT_RUN}w${TT_SEQ}$1"; }

# ns_create NAME: a new namespace with lo up, registered for cleanup.
ns_create() {
  local ns=$1
  ip netns add "$ns" || return 1
  tt_register_ns "$ns"
  ip -n "$ns" link set lo up
  # v6 addresses usable at once: no duplicate address detection delay in a private namespace.
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

# veth_create NS1 IF1 NS2 IF2: a veth pair between two namespaces, both ends up.
veth_create() {
  ip -n "$1" link add "$2" type veth peer name "$4" netns "$3" || return 1
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}

# addr_add NS IF CIDR...: v4 or v6 (v6 with nodad).
addr_add() {
  local ns=$1 dev=$2 a
  shift 2
  for a in "$@"; do
    if [[ "$a" == *:* ]]; then
      ip -n "$ns" addr add "$a" dev "$dev" nodad || return 1
    else
      ip -n "$ns" addr add "$a" dev "$dev" || return 1
    fi
  done
}

# nsx NS CMD...: runs CMD in NS. A shell function: never background it with `&` (the job would
# be a subshell and $! its PID, not the command's); background `ip netns exec NS CMD &` instead.
nsx() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# ---------------------------------------------------------------------------------------------
# Waiting

# wait_for TIMEOUT_S CMD...: polls CMD every 0.1 s until it succeeds; fails after TIMEOUT_S.
wait_for() {
  local timeout=$1 i n
  shift
  n=$((timeout * 10))
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

pid_alive() { kill -0 "$1" 2>/dev/null; }
pid_dead() { ! kill -0 "$1" 2>/dev/null; }

# wait_exit PID TIMEOUT_S: waits for a child of this shell to exit and sets TT_EXIT_CODE to its
# exit status. Returns 1 if it is still running at the timeout. (Not usable inside $(…): a
# command substitution cannot wait for its parent's children.)
wait_exit() {
  local pid=$1 timeout=$2
  TT_EXIT_CODE=""
  wait_for "$timeout" pid_dead "$pid" || return 1
  TT_EXIT_CODE=0
  wait "$pid" 2>/dev/null || TT_EXIT_CODE=$?
}

# ping_ok NS DEST [COUNT]: all-of-COUNT replies within a bounded time. Picks ping -6 for v6.
ping_ok() {
  local ns=$1 dst=$2 count=${3:-3} fam=-4
  [[ "$dst" == *:* ]] && fam=-6
  nsx "$ns" ping "$fam" -n -q -c "$count" -i 0.2 -W 2 -w $((count + 5)) "$dst" >/dev/null 2>&1
}

# ping_until NS DEST TIMEOUT_S: one reply, retrying (each attempt 1 s) up to TIMEOUT_S.
ping_until() {
  local fam=-4
  [[ "$2" == *:* ]] && fam=-6
  wait_for "$3" nsx "$1" ping "$fam" -n -q -c 1 -W 1 "$2"
}

# ---------------------------------------------------------------------------------------------
# Keys and configs

# tt_keypair DIR NAME: writes DIR/NAME.key and DIR/NAME.pub. Uses `wg` (the reference tool, same
# format as `tunctl genkey`) so that a key bug in tunctl cannot hide behind its own keys.
tt_keypair() {
  (umask 077 && wg genkey >"$1/$2.key") || return 1
  wg pubkey <"$1/$2.key" >"$1/$2.pub"
}
tt_psk() { (umask 077 && wg genpsk >"$1"); }

# write_conf FILE [--key PRIVFILE] [--address A,...] [--port P] [--mtu M]
#            { --peer PUBFILE [--psk PSKFILE] [--endpoint H:P] [--allowed A,...] [--keepalive N] }...
# Writes a wg-quick style config. Each --peer starts a [Peer] section; options after it apply
# to that peer. Keys are read from the files given.
write_conf() {
  local file=$1
  shift
  local out="[Interface]" in_peer=0
  while (($#)); do
    case "$1" in
      --key) out+=$'\n'"PrivateKey = $(cat "$2")" ;;
      --address) out+=$'\n'"Address = $2" ;;
      --port) out+=$'\n'"ListenPort = $2" ;;
      --mtu) out+=$'\n'"MTU = $2" ;;
      --peer)
        out+=$'\n\n'"[Peer]"$'\n'"PublicKey = $(cat "$2")"
        in_peer=1
        ;;
      --psk) out+=$'\n'"PresharedKey = $(cat "$2")" ;;
      --endpoint) out+=$'\n'"Endpoint = $2" ;;
      --allowed) out+=$'\n'"AllowedIPs = $2" ;;
      --keepalive) out+=$'\n'"PersistentKeepalive = $2" ;;
      *)
        tt_log "write_conf: unknown option $1"
        return 1
        ;;
    esac
    case "$1" in --psk | --endpoint | --allowed | --keepalive)
      ((in_peer)) || {
        tt_log "write_conf: $1 before --peer"
        return 1
      }
      ;;
    esac
    shift 2
  done
  (umask 077 && printf '%s\n' "$out" >"$file")
}

# ---------------------------------------------------------------------------------------------
# The daemon

# start_tunctl NS CONF [EXTRA_ARGS...]: starts `tunctl up CONF --verbose` in NS in the background,
# stderr+stdout to $TT_TEST_DIR/<iface>.<n>.log, registered for cleanup. Sets TT_LAST_PID and
# TT_LAST_LOG. Waits until ready (socket exists, `show --json` works, link is up), 15 s at most;
# fails if the daemon exits before that.
start_tunctl() {
  local ns=$1 conf=$2
  shift 2
  local iface n=0
  iface=$(basename "$conf" .conf)
  tt_register_iface "$iface"
  while [[ -e "$TT_TEST_DIR/$iface.$n.log" ]]; do n=$((n + 1)); done
  TT_LAST_LOG="$TT_TEST_DIR/$iface.$n.log"
  # env --default-signal: a background job of a non-interactive shell starts with SIGINT ignored;
  # the daemon is started as a terminal or systemd would start it.
  ip netns exec "$ns" env --default-signal=INT,QUIT "$TUNCTL" up "$conf" --verbose "$@" >"$TT_LAST_LOG" 2>&1 &
  TT_LAST_PID=$!
  tt_register_pid "$TT_LAST_PID"
  local i
  for ((i = 0; i < 150; i++)); do
    if ! pid_alive "$TT_LAST_PID"; then
      fail "tunctl up $conf exited before it was ready (log: $TT_LAST_LOG)"
      return 1
    fi
    # Ready by the contract, and (so that tests need not race the configuration) the link is up.
    if [[ -S "$TT_SOCK_DIR/$iface.sock" ]] && nsx "$ns" "$TUNCTL" show "$iface" --json >/dev/null 2>&1 &&
      nsx "$ns" ip -o link show "$iface" 2>/dev/null | has "[<,]UP[,>]"; then
      return 0
    fi
    sleep 0.1
  done
  fail "tunctl up $conf not ready after 15 s (no $TT_SOCK_DIR/$iface.sock, show --json fails, or link not up)"
}

# tunctl_json NS IFACE [PATH]: prints a field of `tunctl show IFACE --json`. PATH is dotted with
# list indices, e.g. "peers.0.endpoint"; scalars print bare (null as "null", booleans as
# true/false), objects and lists as JSON. Without PATH prints the whole document.
tunctl_json() {
  local ns=$1 iface=$2 path=${3:-}
  nsx "$ns" "$TUNCTL" show "$iface" --json | python3 -c '
import json, sys
doc = json.load(sys.stdin)
path = sys.argv[1]
for part in (path.split(".") if path else []):
    doc = doc[int(part)] if isinstance(doc, list) else doc[part]
if doc is None: print("null")
elif isinstance(doc, bool): print("true" if doc else "false")
elif isinstance(doc, (dict, list)): print(json.dumps(doc, sort_keys=True))
else: print(doc)
' "$path"
}

# tunctl_peer_field NS IFACE PUBFILE FIELD: FIELD of the peer whose public key is in PUBFILE.
# Lists print sorted and comma-joined (order is not part of the contract), null as "null".
tunctl_peer_field() {
  local ns=$1 iface=$2 pub field=$4
  pub=$(cat "$3")
  nsx "$ns" "$TUNCTL" show "$iface" --json | python3 -c '
import json, sys
doc = json.load(sys.stdin)
for p in doc["peers"]:
    if p["public_key"] == sys.argv[1]:
        v = p[sys.argv[2]]
        if isinstance(v, list): v = ",".join(sorted(map(str, v)))
        print("null" if v is None else json.dumps(v) if isinstance(v, (dict, bool)) else v)
        sys.exit(0)
sys.exit("no peer with that public key")
' "$pub" "$field"
}

# tunctl_drops NS IFACE [REGEX]: sum of the drop counters whose reason matches REGEX
# (case-insensitive; default: all reasons).
tunctl_drops() {
  local ns=$1 iface=$2 re=${3:-.}
  nsx "$ns" "$TUNCTL" show "$iface" --json | python3 -c '
import json, re, sys
drops = json.load(sys.stdin).get("drops", {})
print(sum(int(v) for k, v in drops.items() if re.search(sys.argv[1], k, re.I)))
' "$re"
}

# underlay_pair V6: two namespaces A and B joined by veth (198.18.0.1/30 and 2001:db8::1/64 on A,
# .2 on B), keys a, b and a PSK ab in $KEYS. Sets NS_A NS_B IF_A IF_B KEYS, and U_A U_B (the
# underlay addresses to put in Endpoint: IPv6 in brackets when V6 is 1).
underlay_pair() {
  local v6=$1
  NS_A=$(ns_name a)
  NS_B=$(ns_name b)
  IF_A=$(if_name a)
  IF_B=$(if_name b)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" && ns_create "$NS_B" || return 1
  veth_create "$NS_A" veA "$NS_B" veB || return 1
  addr_add "$NS_A" veA 198.18.0.1/30 2001:db8::1/64 || return 1
  addr_add "$NS_B" veB 198.18.0.2/30 2001:db8::2/64 || return 1
  if ((v6)); then
    U_A="[2001:db8::1]"
    U_B="[2001:db8::2]"
  else
    U_A=198.18.0.1
    U_B=198.18.0.2
  fi
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b && tt_psk "$KEYS/ab.psk" || return 1
}

# ---------------------------------------------------------------------------------------------
# The seed's topology: two nodes joined by one veth (the underlay), each routing for a pod.
#
#   pod p1 198.18.10.2/24 -- vpod 198.18.10.1  n1 eth0 198.18.0.1/30 ==== 198.18.0.2/30 eth0 n2
#   vpod 198.18.20.1 -- pod p2 198.18.20.2/24
#
# seed_pods_setup: creates it, nodes forwarding, no tunnel yet. Sets the caller's n1 n2 p1 p2
# (namespaces) and if1 if2 (tunnel names for n1, n2), which the caller declares local first,
# and KEYS.
seed_pods_setup() {
  n1=$(ns_name n1)
  n2=$(ns_name n2)
  p1=$(ns_name p1)
  p2=$(ns_name p2)
  if1=$(if_name 1)
  if2=$(if_name 2)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$n1" && ns_create "$n2" && ns_create "$p1" && ns_create "$p2" || return 1
  veth_create "$n1" eth0 "$n2" eth0 || return 1
  addr_add "$n1" eth0 198.18.0.1/30 && addr_add "$n2" eth0 198.18.0.2/30 || return 1
  veth_create "$p1" eth0 "$n1" vpod || return 1
  veth_create "$p2" eth0 "$n2" vpod || return 1
  addr_add "$p1" eth0 198.18.10.2/24 && addr_add "$n1" vpod 198.18.10.1/24 || return 1
  addr_add "$p2" eth0 198.18.20.2/24 && addr_add "$n2" vpod 198.18.20.1/24 || return 1
  nsx "$p1" ip route add default via 198.18.10.1 && nsx "$p2" ip route add default via 198.18.20.1 || return 1
  nsx "$n1" sysctl -qw net.ipv4.ip_forward=1 && nsx "$n2" sysctl -qw net.ipv4.ip_forward=1
}

# ---------------------------------------------------------------------------------------------
# Common topology: two nodes joined by one veth, tunctl up on both.
#
#   A (ns $NS_A)  veA 198.18.0.1/30 2001:db8::1/64  ====  veB 198.18.0.2/30 2001:db8::2/64  B (ns $NS_B)
#   tunnel $IF_A 198.18.1.1/24 2001:db8:1::1/64          tunnel $IF_B 198.18.1.2/24 2001:db8:1::2/64
#
# two_nodes_setup [--v6-underlay] [--keepalive-b N] [--port-a P] [--port-b P] [--no-start]
# Sets NS_A NS_B IF_A IF_B CONF_A CONF_B KEYS, PORT_A PORT_B, U_A U_B (underlay addresses),
# PID_A PID_B. A knows B's endpoint and B knows A's; both use a preshared key.
two_nodes_setup() {
  local v6=0 ka_b=0 start=1
  PORT_A=51820
  PORT_B=51821
  while (($#)); do
    case "$1" in
      --v6-underlay) v6=1 ;;
      --keepalive-b)
        ka_b=$2
        shift
        ;;
      --port-a)
        PORT_A=$2
        shift
        ;;
      --port-b)
        PORT_B=$2
        shift
        ;;
      --no-start) start=0 ;;
      *) fail "two_nodes_setup: unknown option $1" || return 1 ;;
    esac
    shift
  done
  underlay_pair "$v6" || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  CONF_B="$TT_TEST_DIR/$IF_B.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24,2001:db8:1::1/64 --port "$PORT_A" \
    --peer "$KEYS/b.pub" --psk "$KEYS/ab.psk" --endpoint "$U_B:$PORT_B" \
    --allowed 198.18.1.2/32,2001:db8:1::2/128 || return 1
  local ka=()
  ((ka_b > 0)) && ka=(--keepalive "$ka_b")
  write_conf "$CONF_B" --key "$KEYS/b.key" --address 198.18.1.2/24,2001:db8:1::2/64 --port "$PORT_B" \
    --peer "$KEYS/a.pub" --psk "$KEYS/ab.psk" --endpoint "$U_A:$PORT_A" \
    --allowed 198.18.1.1/32,2001:db8:1::1/128 "${ka[@]}" || return 1
  ((start)) || return 0
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
  start_tunctl "$NS_B" "$CONF_B" || return 1
  PID_B=$TT_LAST_PID
}

# ---------------------------------------------------------------------------------------------
# wireguard-go, the reference peer and the anchor some figures are measured against

# start_wggo NS IFACE: wireguard-go in the foreground in NS, registered for cleanup; waits (10 s)
# for its control socket. Sets TT_LAST_PID. The TUN goes away with the process.
start_wggo() {
  local ns=$1 iface=$2 log i
  tt_register_iface "$iface"
  log="$TT_TEST_DIR/wireguard-go-$iface.log"
  rm -f "$TT_SOCK_DIR/$iface.sock"
  ip netns exec "$ns" env LOG_LEVEL=debug WG_PROCESS_FOREGROUND=1 wireguard-go -f "$iface" >>"$log" 2>&1 &
  TT_LAST_PID=$!
  tt_register_pid "$TT_LAST_PID"
  for ((i = 0; i < 100; i++)); do
    pid_alive "$TT_LAST_PID" || fail "wireguard-go $iface exited at start (log: $log)" || return 1
    if [[ -S "$TT_SOCK_DIR/$iface.sock" ]] && nsx "$ns" wg show "$iface" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "wireguard-go $iface: no usable socket after 10 s"
}

# strip_conf CONF OUT: CONF without the wg-quick-only keys (Address, MTU), for `wg setconf`.
strip_conf() { grep -Ev '^[[:space:]]*(Address|MTU|DNS|Table)[[:space:]]*=' "$1" >"$2"; }

# wggo_configure NS IFACE CONF: applies CONF with `wg setconf`, then addresses, MTU 1420, up.
# Routes come from the addresses' subnets (the peer's tunnel address is in them).
wggo_configure() {
  local ns=$1 iface=$2 conf=$3 stripped a
  stripped="$TT_TEST_DIR/$iface.wg.conf"
  strip_conf "$conf" "$stripped"
  nsx "$ns" wg setconf "$iface" "$stripped" || fail "wg setconf $iface (wireguard-go) failed" || return 1
  for a in $(sed -n 's/^Address = //p' "$conf" | tr ',' ' '); do
    addr_add "$ns" "$iface" "$a" || return 1
  done
  nsx "$ns" ip link set "$iface" mtu 1420 up
}

# ---------------------------------------------------------------------------------------------
# Bulk transfer with an end-to-end hash

# make_random_file FILE MIB
make_random_file() { head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1"; }

# tcp_transfer SRC_NS DST_NS DST_ADDR PORT FILE TIMEOUT_S: sends FILE from SRC_NS to a socat
# listener in DST_NS on DST_ADDR:PORT, then compares SHA-256 of both ends. Bounded by TIMEOUT_S.
tcp_transfer() {
  local src_ns=$1 dst_ns=$2 addr=$3 port=$4 file=$5 timeout=$6
  local out="$file.received" bind=$addr connect=$addr t0 t1 lpid v=4
  rm -f "$out"
  if [[ "$addr" == *:* ]]; then
    bind="[$addr]"
    connect="[$addr]"
    v=6
  fi
  ip netns exec "$dst_ns" timeout "$timeout" socat -u "TCP$v-LISTEN:$port,bind=$bind,reuseaddr" "CREATE:$out" \
    2>>"$TT_TEST_DIR/socat.log" &
  lpid=$!
  tt_register_pid "$lpid"
  wait_for 5 sh -c "ip netns exec '$dst_ns' ss -Htln 'sport = :$port' | grep -q ." ||
    fail "socat listener on $addr:$port did not come up" || return 1
  t0=$(date +%s.%N)
  nsx "$src_ns" timeout "$timeout" socat -u "OPEN:$file" "TCP$v:$connect:$port,connect-timeout=5" \
    2>>"$TT_TEST_DIR/socat.log" || fail "sender socat to $addr:$port failed or timed out after ${timeout}s" || return 1
  wait_exit "$lpid" "$timeout" || fail "receiver did not finish" || return 1
  t1=$(date +%s.%N)
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "receiver socat exited $TT_EXIT_CODE" || return 1
  local h1 h2 size
  h1=$(sha256sum <"$file" | cut -d' ' -f1)
  h2=$(sha256sum <"$out" | cut -d' ' -f1)
  size=$(stat -c %s "$out")
  rm -f "$out"
  [[ "$h1" == "$h2" ]] || fail "SHA-256 mismatch: sent $h1, received $h2 ($size bytes)" || return 1
  tt_log "transfer $src_ns -> $addr: $size bytes, hash ok, $(python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'{s:.1f} s, {int(sys.argv[3])*8/s/1e6:.0f} Mbit/s')" "$t0" "$t1" "$size")"
}

# ---------------------------------------------------------------------------------------------
# Running tests

# run_test NAME FUNC: runs FUNC in a subshell with its own cleanup trap and a fresh
# $TT_TEST_DIR; records PASS/FAIL; on failure prints the tail of every log of the test.
run_test() {
  # TT_TAG (e.g. "offload-off") names a second pass of the same tests under other settings.
  local name=$1${TT_TAG:+ [$TT_TAG]} func=$2 rc
  TT_SEQ=$((TT_SEQ + 1))
  TT_TEST_DIR="$TT_TMP/$TT_SEQ-$name"
  mkdir -p "$TT_TEST_DIR"
  tt_log "RUN  $name"
  # The body runs in the background and this shell waits: `wait` is interrupted by a signal at
  # once (a foreground child would defer our trap until it ends), and tt_cleanup then stops the
  # body's whole process tree before sweeping this run's namespaces.
  (
    TT_PIDS=()
    TT_NS=()
    TT_IFACES=()
    TT_CHILD=""
    trap tt_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    "$func"
  ) &
  TT_CHILD=$!
  rc=0
  wait "$TT_CHILD" || rc=$?
  TT_CHILD=""
  if ((rc == 0)); then
    TT_PASSED=$((TT_PASSED + 1))
    tt_log "PASS $name"
    [[ -n "${TT_RESULTS:-}" ]] && echo "PASS $name" >>"$TT_RESULTS"
  else
    TT_FAILED=$((TT_FAILED + 1))
    tt_log "FAIL $name (exit $rc)"
    [[ -n "${TT_RESULTS:-}" ]] && echo "FAIL $name" >>"$TT_RESULTS"
    local f
    for f in "$TT_TEST_DIR"/*.log; do
      [[ -f "$f" ]] || continue
      echo "----- tail of $(basename "$f") -----" >&2
      tail -n 25 "$f" >&2
    done
  fi
  ((rc == 130 || rc == 143)) && exit "$rc"
  return 0
}

# tt_summary: the closing line, exactly "N passed, N failed"; exit status non-zero on failure.
tt_summary() {
  echo "$TT_PASSED passed, $TT_FAILED failed"
  ((TT_FAILED == 0))
}
