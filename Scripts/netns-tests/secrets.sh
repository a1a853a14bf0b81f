#!/usr/bin/env bash
# Secrets and silent failures (issue 14, items 5, 6 and 9):
# - a FIFO where a config or key file should be is refused at once with one line, by `up` and by
#   `check`; a FIFO at the config path on SIGHUP leaves the control socket answering and SIGTERM
#   honoured;
# - a key pasted on the wrong line (Address, DNS, Endpoint, AllowedIPs, ListenPort, MTU, Table,
#   unknown keys, ...) is reported by file, line and field, never echoed (no base64, no hex);
# - a read-only or full control directory, and an interface whose socket a tunctl in another
#   namespace serves, each say one line and exit non-zero; a stale socket file is replaced;
# - no key in a core dump, and no hex or base64 text of a key in the daemon's memory after start
#   and after a reload (Scripts/lib/scan-secrets.py; the one binary copy is allowed);
# - three back-to-back `wg-quick down; wg-quick up` cycles all succeed.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

SCAN="$TT_ROOT/Scripts/lib/scan-secrets.py"

# now_ms: a monotonic-enough wall clock in milliseconds, for the "within 1 s" figures.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# lines TEXT: the number of non-empty lines.
lines() { printf '%s\n' "$1" | grep -c .; }

# one_node: namespace A with `tunctl up`, its config holding the private key and a PSK inline and
# a second peer's PSK in a key file. Sets NS_A IF_A KEYS CONF_A PID_A.
one_node() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS"
  ns_create "$NS_A" || return 1
  tt_keypair "$KEYS" a && tt_keypair "$KEYS" b && tt_keypair "$KEYS" c || return 1
  tt_psk "$KEYS/ab.psk" && tt_psk "$KEYS/ac.psk" || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --psk "$KEYS/ab.psk" --endpoint 198.18.0.2:51821 --allowed 198.18.2.0/24 || return 1
  printf '\n[Peer]\nPublicKey = %s\nPresharedKeyFile = %s\nAllowedIPs = 198.18.3.0/24\n' \
    "$(cat "$KEYS/c.pub")" "$KEYS/ac.psk" >>"$CONF_A"
  start_tunctl "$NS_A" "$CONF_A" || return 1
  PID_A=$TT_LAST_PID
}

# refused_fast WHAT CMD...: CMD must fail within 1 s with exactly one line that names FIFO.
refused_fast() {
  local what=$1 out rc=0 start elapsed
  shift
  start=$(now_ms)
  out=$(timeout 10 "$@" 2>&1) || rc=$?
  elapsed=$(($(now_ms) - start))
  tt_log "$what: exit $rc after ${elapsed} ms: $out"
  ((rc != 0 && rc != 124)) || fail "$what: exit status $rc (expected a refusal)" || return 1
  ((elapsed < 1000)) || fail "$what: took ${elapsed} ms (limit 1000)" || return 1
  (($(lines "$out") == 1)) || fail "$what: $(lines "$out") lines of output, expected 1" || return 1
  has -i "fifo" <<<"$out" || fail "$what: the message does not say it is a FIFO" || return 1
}

test_fifo_refused() {
  local ns iface conf keyconf
  ns=$(ns_name a)
  iface=$(if_name a)
  ns_create "$ns" || return 1
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS" && tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  conf="$TT_TEST_DIR/$iface.conf"
  mkfifo -m 600 "$conf" || return 1
  tt_register_iface "$iface"
  refused_fast "check on a FIFO config" "$TUNCTL" check "$conf" || return 1
  refused_fast "up on a FIFO config" ip netns exec "$ns" "$TUNCTL" up "$conf" || return 1
  # A FIFO as the private key file and as a preshared key file.
  mkdir -p "$TT_TEST_DIR/k" && mkfifo -m 600 "$TT_TEST_DIR/k/a.key" "$TT_TEST_DIR/k/ab.psk" || return 1
  keyconf="$TT_TEST_DIR/k/$iface.conf"
  (umask 077 && printf '[Interface]\nPrivateKeyFile = a.key\n' >"$keyconf")
  refused_fast "check on a FIFO private key file" "$TUNCTL" check "$keyconf" || return 1
  refused_fast "up on a FIFO private key file" ip netns exec "$ns" "$TUNCTL" up "$keyconf" || return 1
  (umask 077 && printf '[Interface]\nPrivateKey = %s\n[Peer]\nPublicKey = %s\nPresharedKeyFile = ab.psk\n' \
    "$(cat "$KEYS/a.key")" "$(cat "$KEYS/b.pub")" >"$keyconf")
  refused_fast "check on a FIFO preshared key file" "$TUNCTL" check "$keyconf" || return 1
  nsx "$ns" ip link show "$iface" >/dev/null 2>&1 && { fail "a refused up left link $iface"; return 1; }
  return 0
}

test_fifo_reload() {
  one_node || return 1
  mv "$CONF_A" "$CONF_A.saved" && mkfifo -m 600 "$CONF_A" || return 1
  kill -HUP "$PID_A"
  sleep 0.3
  local i start elapsed worst=0
  for ((i = 0; i < 5; i++)); do
    start=$(now_ms)
    nsx "$NS_A" timeout 5 "$TUNCTL" show "$IF_A" --json >/dev/null 2>&1 ||
      fail "control socket did not answer after SIGHUP with a FIFO config (round $i)" || return 1
    elapsed=$(($(now_ms) - start))
    ((elapsed > worst)) && worst=$elapsed
    sleep 0.1
  done
  tt_log "after SIGHUP with a FIFO config: slowest of 5 show requests ${worst} ms"
  ((worst < 1000)) || fail "show took ${worst} ms after SIGHUP (limit 1000)" || return 1
  wait_for 5 grep -q "reload failed" "$TT_LAST_LOG" || fail "no 'reload failed' line in the log within 5 s" || return 1
  has -i "fifo" "$TT_LAST_LOG" || fail "the reload error does not say FIFO" || return 1
  kill -TERM "$PID_A"
  wait_exit "$PID_A" 5 || fail "SIGTERM not honoured within 5 s" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "exit status $TT_EXIT_CODE after SIGTERM" || return 1
}

test_key_on_wrong_line() {
  local iface conf key psk hex out rc variant field line text n=0
  iface=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS" && tt_keypair "$KEYS" a && tt_keypair "$KEYS" b && tt_psk "$KEYS/ab.psk" || return 1
  key=$(cat "$KEYS/a.key")
  psk=$(cat "$KEYS/ab.psk")
  hex=$(base64 -d <<<"$key" | od -An -tx1 | tr -d ' \n')
  conf="$TT_TEST_DIR/$iface.conf"
  # FIELD|SECTION|LINE TEXT: the line goes at line 3 ([Interface]) or 6 ([Peer], after its PublicKey).
  local variants=(
    "Address|Interface|Address = $key"
    "Address|Interface|Address = 198.18.1.1/24, $psk"
    "Address|Interface|Address = $hex"
    "DNS|Interface|DNS = $key"
    "Table|Interface|Table = $key"
    "ListenPort|Interface|ListenPort = $key"
    "MTU|Interface|MTU = $psk"
    "FwMark|Interface|FwMark = $key"
    "SaveConfig|Interface|SaveConfig = $key"
    "Adress|Interface|Adress = $key"
    "Endpoint|Peer|Endpoint = $key"
    "Endpoint|Peer|Endpoint = $key:51820"
    "Endpoint|Peer|Endpoint = [$psk]:51820"
    "AllowedIPs|Peer|AllowedIPs = $key"
    "AllowedIPs|Peer|AllowedIPs = 198.18.2.0/24, $psk"
    "PersistentKeepalive|Peer|PersistentKeepalive = $psk"
    "PublicKey|Peer|PublicKey = $hex"
    "Foo|Peer|Foo = $psk"
  )
  for variant in "${variants[@]}"; do
    IFS='|' read -r field section text <<<"$variant"
    n=$((n + 1))
    {
      printf '[Interface]\nPrivateKey = %s\n' "$key"
      if [[ "$section" == Interface ]]; then
        printf '%s\n' "$text"
        line=3
        printf '[Peer]\nPublicKey = %s\n' "$(cat "$KEYS/b.pub")"
      else
        printf 'Address = 198.18.1.1/24\n[Peer]\n'
        if [[ "$field" == PublicKey ]]; then
          printf '%s\n' "$text"
          line=5
        else
          printf 'PublicKey = %s\nPresharedKey = %s\n%s\n' "$(cat "$KEYS/b.pub")" "$psk" "$text"
          line=7
        fi
      fi
    } >"$conf"
    chmod 600 "$conf"
    rc=0
    out=$(timeout 10 "$TUNCTL" check "$conf" 2>&1) || rc=$?
    tt_log "variant $n ($field): $out"
    ((rc != 0 && rc != 124)) || fail "variant $n ($field): exit status $rc" || return 1
    (($(lines "$out") == 1)) || fail "variant $n ($field): $(lines "$out") lines" || return 1
    has -F "$conf:$line:" <<<"$out" || fail "variant $n ($field): does not name $conf:$line" || return 1
    has -F "$field" <<<"$out" || fail "variant $n ($field): does not name the field $field" || return 1
    local secret
    for secret in "$key" "${key%=}" "${key:0:16}" "${key:20:16}" "$psk" "${psk:0:16}" "$hex" "${hex:0:16}"; do
      has -F "$secret" <<<"$out" && { fail "variant $n ($field): the message holds key text"; return 1; }
    done
  done
  tt_log "$n variants: each names file:line:field, none echoes a key"
  ((n >= 16)) || fail "only $n variants"
}

# in_mount_ns CMD...: CMD in a private mount namespace (a tmpfs mounted there is seen by no one else).
in_mount_ns() { unshare -m --propagation private "$@"; }

# run_dir_case WHAT MOUNT_SCRIPT WORD: `tunctl up` with /run/wireguard replaced as MOUNT_SCRIPT
# says; must exit non-zero with one line containing WORD, and leave no link.
run_dir_case() {
  local what=$1 setup=$2 word=$3 out rc=0
  out=$(in_mount_ns sh -c "$setup && exec ip netns exec '$NS_A' timeout 20 '$TUNCTL' up '$CONF_A'" 2>&1) || rc=$?
  tt_log "$what: exit $rc: $out"
  ((rc != 0 && rc != 124)) || fail "$what: exit status $rc" || return 1
  (($(lines "$out") == 1)) || fail "$what: $(lines "$out") lines of output, expected 1" || return 1
  has -i "$word" <<<"$out" || fail "$what: the message does not say '$word'" || return 1
  has -F "/run/wireguard" <<<"$out" || fail "$what: the message does not name the directory" || return 1
  nsx "$NS_A" ip link show "$IF_A" >/dev/null 2>&1 && { fail "$what: link $IF_A left behind"; return 1; }
  return 0
}

test_run_dir_unusable() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS" && ns_create "$NS_A" && tt_keypair "$KEYS" a || return 1
  CONF_A="$TT_TEST_DIR/$IF_A.conf"
  write_conf "$CONF_A" --key "$KEYS/a.key" --address 198.18.1.1/24 || return 1
  tt_register_iface "$IF_A"
  run_dir_case "read-only /run/wireguard" "mount -t tmpfs -o ro,size=64k tmpfs /run/wireguard" "read-only" || return 1
  # Full: a tmpfs with two inodes, the root and a filler; the socket finds none left.
  run_dir_case "full /run/wireguard" \
    "mount -t tmpfs -o size=64k,nr_inodes=2 tmpfs /run/wireguard && touch /run/wireguard/filler" "full" || return 1
}

test_socket_elsewhere() {
  one_node || return 1
  # Another namespace, the same interface name: the socket directory is shared, the link is not.
  local ns2 out rc=0 start elapsed
  ns2=$(ns_name other)
  ns_create "$ns2" || return 1
  start=$(now_ms)
  out=$(ip netns exec "$ns2" timeout 20 "$TUNCTL" up "$CONF_A" 2>&1) || rc=$?
  elapsed=$(($(now_ms) - start))
  tt_log "second daemon for $IF_A: exit $rc after ${elapsed} ms: $out"
  ((rc != 0 && rc != 124)) || fail "exit status $rc" || return 1
  (($(lines "$out") == 1)) || fail "$(lines "$out") lines of output, expected 1" || return 1
  has "already running" <<<"$out" || fail "the message does not say another daemon runs" || return 1
  ((elapsed < 5000)) || fail "took ${elapsed} ms (limit 5000)" || return 1
  nsx "$NS_A" timeout 5 "$TUNCTL" show "$IF_A" --json >/dev/null || fail "the first daemon lost its socket" || return 1
  nsx "$ns2" ip link show "$IF_A" >/dev/null 2>&1 && { fail "the refused daemon left its link"; return 1; }
  # A stale socket file (its listener gone, as after kill -9) is replaced.
  kill -KILL "$PID_A"
  wait_exit "$PID_A" 5 || return 1
  [[ -S "$TT_SOCK_DIR/$IF_A.sock" ]] || fail "kill -9 did not leave the socket file" || return 1
  start_tunctl "$ns2" "$CONF_A" || fail "tunctl up did not replace a stale socket" || return 1
}

# scan_text WHEN: no hex or base64 copy of the private key or either PSK in the daemon's memory.
scan_text() {
  local out rc=0
  out=$(python3 "$SCAN" --forms hex,base64 "$PID_A" "$KEYS/a.key" "$KEYS/ab.psk" "$KEYS/ac.psk" 2>&1) || rc=$?
  tt_log "memory $1: $(tr '\n' ';' <<<"$out")"
  ((rc != 2)) || fail "scan-secrets could not read the daemon's memory: $out" || return 1
  ((rc == 0)) || fail "a key is in the daemon's memory as text $1: $(tr '\n' ';' <<<"$out")" || return 1
  # One binary copy of each key, not one per load.
  has -E "raw=([2-9]|[1-9][0-9])" <<<"$out" && { fail "more than one binary copy of a key $1"; return 1; }
  return 0
}

test_memory() {
  one_node || return 1
  scan_text "after start" || return 1
  kill -HUP "$PID_A"
  wait_for 10 grep -q "reloaded" "$TT_LAST_LOG" || fail "no reload within 10 s" || return 1
  scan_text "after reload" || return 1
}

# The kernel's core_pattern is global: pointed at this test's directory, restored on exit.
CORE_PATTERN_SAVED=""
restore_core_pattern() {
  [[ -n "$CORE_PATTERN_SAVED" ]] && printf '%s\n' "$CORE_PATTERN_SAVED" >/proc/sys/kernel/core_pattern
  CORE_PATTERN_SAVED=""
}

test_core_dump() {
  CORE_PATTERN_SAVED=$(cat /proc/sys/kernel/core_pattern)
  trap 'restore_core_pattern; tt_cleanup' EXIT
  local dir="$TT_TEST_DIR/cores"
  mkdir -p "$dir" && chmod 700 "$dir"
  printf '%s\n' "$dir/core.%p" >/proc/sys/kernel/core_pattern || fail "cannot set core_pattern" || return 1
  ulimit -c unlimited || fail "ulimit -c unlimited" || return 1
  # Swift's crash reporter would catch a SIGSEGV sent with kill and carry on: off, so the kernel's
  # default action (terminate and dump core) applies, as to a process without it.
  export SWIFT_BACKTRACE=enable=no
  one_node || return 1
  kill -SEGV "$PID_A"
  wait_exit "$PID_A" 10 || fail "still running 10 s after SIGSEGV" || return 1
  tt_log "exit status after SIGSEGV: $TT_EXIT_CODE"
  sleep 0.5
  restore_core_pattern
  local core found=0 out
  for core in "$dir"/core.*; do
    [[ -f "$core" ]] || continue
    found=1
    tt_log "core file $(basename "$core"): $(stat -c %s "$core") bytes"
    out=$(python3 "$SCAN" --file "$core" "$KEYS/a.key" "$KEYS/ab.psk" "$KEYS/ac.psk" 2>&1) ||
      fail "a key is in the core dump: $(tr '\n' ';' <<<"$out")" || return 1
  done
  ((found)) && { fail "a core file was written (PR_SET_DUMPABLE 0 forbids it)"; return 1; }
  tt_log "no core file after SIGSEGV"
}

test_wgquick_cycles() {
  NS_A=$(ns_name a)
  IF_A=$(if_name a)
  KEYS="$TT_TEST_DIR/keys"
  mkdir -p "$KEYS" && ns_create "$NS_A" && tt_keypair "$KEYS" a && tt_keypair "$KEYS" b || return 1
  tt_register_iface "$IF_A"
  local wrapper="$TT_TEST_DIR/tunctl-userspace" conf="$TT_TEST_DIR/$IF_A.conf" i log
  printf '#!/bin/sh\nexec %q userspace "$@"\n' "$TUNCTL" >"$wrapper"
  chmod 755 "$wrapper"
  write_conf "$conf" --key "$KEYS/a.key" --address 198.18.1.1/24 --port 51820 \
    --peer "$KEYS/b.pub" --allowed 198.18.2.0/24 || return 1
  wgq() {
    log="$TT_TEST_DIR/wg-quick-$1.$i.log"
    ip netns exec "$NS_A" env WG_QUICK_USERSPACE_IMPLEMENTATION="$wrapper" timeout 30 wg-quick "$1" "$conf" \
      </dev/null >"$log" 2>&1
  }
  i=0
  wgq up || fail "first wg-quick up: $(tail -3 "$log")" || return 1
  local start times=""
  for ((i = 1; i <= 3; i++)); do
    wgq down || fail "cycle $i: wg-quick down failed: $(tail -3 "$log")" || return 1
    start=$(now_ms)
    wgq up || fail "cycle $i: wg-quick up right after down failed: $(tail -3 "$log")" || return 1
    times+=" $(($(now_ms) - start)) ms"
    nsx "$NS_A" wg show "$IF_A" >/dev/null 2>&1 || fail "cycle $i: wg show $IF_A does not answer" || return 1
  done
  tt_log "3 back-to-back down/up cycles succeeded; wg-quick up took$times"
  i=last
  wgq down || fail "last wg-quick down: $(tail -3 "$log")" || return 1
  wait_for 10 sh -c "[ -z \"\$(ip netns pids '$NS_A')\" ]" || fail "daemon left after the last down" || return 1
}

tt_require --tunctl wg wg-quick python3 unshare mkfifo timeout
tt_init
run_test secrets-fifo-refused test_fifo_refused
run_test secrets-fifo-reload-keeps-control test_fifo_reload
run_test secrets-key-on-wrong-line-not-echoed test_key_on_wrong_line
run_test secrets-run-dir-read-only-or-full test_run_dir_unusable
run_test secrets-socket-held-in-other-namespace test_socket_elsewhere
run_test secrets-no-key-text-in-memory test_memory
run_test secrets-no-core-dump test_core_dump
run_test secrets-wgquick-down-up-cycles test_wgquick_cycles
tt_summary
