#!/usr/bin/env bash
# The systemd unit: `systemd-analyze verify` finds nothing to say about Systemd/tunctl@.service,
# and its offline security exposure stays at or below 3.0. The unit is checked unchanged: its
# ExecStart=/usr/local/bin/tunctl is satisfied inside a private mount namespace whose
# /usr/local/bin is a tmpfs holding the built tunctl (or, before it exists, an executable stub),
# so nothing is installed on the machine. A control run with a misspelt directive shows that the
# check does catch problems.
set -uo pipefail
# shellcheck source=../lib/netns.sh
source "$(dirname "$0")/../lib/netns.sh"

UNIT="$TT_ROOT/Systemd/tunctl@.service"

# in_private_bin CMD...: runs CMD with /usr/local/bin/tunctl present, in a private mount namespace.
in_private_bin() {
  local src="$TUNCTL"
  if [[ ! -x "$src" ]]; then
    src="$TT_TEST_DIR/tunctl-stub"
    printf '#!/bin/sh\nexit 0\n' >"$src"
    chmod 755 "$src"
  fi
  # shellcheck disable=SC2016 # $1/$@ belong to the inner sh
  unshare -m --propagation private sh -c '
    mount -t tmpfs -o mode=755 tmpfs /usr/local/bin && cp "$1" /usr/local/bin/tunctl && shift && exec "$@"
  ' sh "$src" "$@"
}

test_verify() {
  [[ -f "$UNIT" ]] || fail "$UNIT is missing" || return 1
  local out rc=0
  out=$(in_private_bin systemd-analyze verify "$UNIT" 2>&1) || rc=$?
  [[ $rc == 0 && -z "$out" ]] || fail "systemd-analyze verify (exit $rc): $out" || return 1
  # Control: a misspelt directive must be reported.
  mkdir -p "$TT_TEST_DIR/bad"
  sed 's/^ProtectHome=yes$/ProtectHome=yes\nProtectHomme=yes/' "$UNIT" >"$TT_TEST_DIR/bad/tunctl@.service"
  out=$(in_private_bin systemd-analyze verify "$TT_TEST_DIR/bad/tunctl@.service" 2>&1)
  [[ "$out" == *ProtectHomme* ]] || fail "control: verify did not flag a misspelt directive: $out" || return 1
}

test_contract() {
  # What the unit promises, read back from the file: tunctl@wg0 reads /etc/tunctl/wg0.conf.
  local want
  # shellcheck disable=SC2016 # $MAINPID is literal unit text
  for want in "Type=notify" "ExecStart=/usr/local/bin/tunctl up /etc/tunctl/%i.conf" 'ExecReload=/bin/kill -HUP $MAINPID' \
    "NoNewPrivileges=yes" "ProtectSystem=strict" "ReadWritePaths=/run/wireguard" "ProtectHome=yes" "PrivateTmp=yes" \
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX" "DeviceAllow=/dev/net/tun rw" "LimitCORE=0"; do
    grep -qxF "$want" "$UNIT" || fail "unit lacks '$want'" || return 1
  done
  # Room for the 64 control clients the daemon allows and its own descriptors, but bounded.
  local nofile
  nofile=$(sed -n 's/^LimitNOFILE=//p' "$UNIT")
  [[ "$nofile" =~ ^[0-9]+$ ]] && ((nofile >= 128 && nofile <= 65536)) || fail "LimitNOFILE '$nofile' not in 128-65536" || return 1
  grep -Eq '^CapabilityBoundingSet=CAP_NET_ADMIN( CAP_NET_BIND_SERVICE)?$' "$UNIT" || fail "CapabilityBoundingSet" || return 1
  grep -Eq '^AmbientCapabilities=CAP_NET_ADMIN( CAP_NET_BIND_SERVICE)?$' "$UNIT" || fail "AmbientCapabilities" || return 1
}

test_exposure() {
  local out rc=0
  out=$(in_private_bin systemd-analyze security --offline=true --threshold=30 "$UNIT" 2>&1) || rc=$?
  tt_log "$(printf '%s\n' "$out" | grep "Overall exposure")"
  ((rc == 0)) || fail "security exposure above 3.0: $(printf '%s\n' "$out" | tail -1)" || return 1
}

tt_require systemd-analyze unshare
tt_init
run_test systemd-unit-verifies test_verify
run_test systemd-unit-contract test_contract
run_test systemd-unit-exposure test_exposure
tt_summary
