#!/usr/bin/env bash
# fetch-wireguard-go.sh [CACHE_DIR]: prints the path of Debian 13 (trixie)'s wireguard-go binary,
# downloading and unpacking its package on first use. Debian 12's wireguard-go (0.0.20220316)
# predates wireguard-go's TUN offloads and UDP GSO/GRO; trixie's (0.0.20231211) has them, so the
# benchmark compares against it. The system's apt sources are never touched: apt reads a private
# sources list, state and cache in a temporary directory, and only `apt-get download` runs.
# Exit status: 0 with the path on stdout; 1 with one line on stderr saying what failed.
set -euo pipefail

CACHE=${1:-/var/cache/tunctl-bench}
BIN="$CACHE/wireguard-go-trixie/usr/bin/wireguard-go"
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

fail() {
  echo "fetch-wireguard-go: $*" >&2
  exit 1
}
command -v apt-get >/dev/null || fail "apt-get is missing: cannot fetch Debian 13's wireguard-go"
command -v dpkg-deb >/dev/null || fail "dpkg-deb is missing: cannot unpack Debian 13's wireguard-go"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r "$KEYRING" ]] || fail "$KEYRING is missing (apt-get install debian-archive-keyring)"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/lists/partial" "$TMP/archives/partial" "$TMP/etc/preferences.d" "$TMP/pkg"
cat >"$TMP/etc/sources.list" <<SOURCES
deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main
SOURCES
: >"$TMP/etc/sources.list.d.empty"
APT_OPTS=(
  -o "Dir::Etc::SourceList=$TMP/etc/sources.list"
  -o "Dir::Etc::SourceParts=$TMP/etc/sources.list.d.empty"
  -o "Dir::Etc::Preferences=$TMP/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$TMP/etc/preferences.d"
  -o "Dir::State::Lists=$TMP/lists"
  -o "Dir::State::Status=$TMP/status"
  -o "Dir::Cache=$TMP/cache"
  -o "Dir::Cache::Archives=$TMP/archives"
  -o "APT::Architecture=$(dpkg --print-architecture)"
  -o "Debug::NoLocking=1"
)
: >"$TMP/status"
apt-get -qq "${APT_OPTS[@]}" update >"$TMP/update.log" 2>&1 ||
  fail "apt-get update of the trixie index failed: $(tail -n1 "$TMP/update.log")"
(cd "$TMP/pkg" && apt-get -qq "${APT_OPTS[@]}" download wireguard-go) >"$TMP/download.log" 2>&1 ||
  fail "apt-get download wireguard-go (trixie) failed: $(tail -n1 "$TMP/download.log")"
deb=$(find "$TMP/pkg" -name 'wireguard-go_*.deb' | head -n1)
[[ -n "$deb" ]] || fail "apt-get download left no wireguard-go .deb"
mkdir -p "$CACHE"
rm -rf "$CACHE/wireguard-go-trixie.tmp"
dpkg-deb -x "$deb" "$CACHE/wireguard-go-trixie.tmp" || fail "dpkg-deb -x $(basename "$deb") failed"
[[ -x "$CACHE/wireguard-go-trixie.tmp/usr/bin/wireguard-go" ]] || fail "$(basename "$deb") holds no usr/bin/wireguard-go"
basename "$deb" >"$CACHE/wireguard-go-trixie.tmp/PACKAGE"
rm -rf "$CACHE/wireguard-go-trixie"
mv "$CACHE/wireguard-go-trixie.tmp" "$CACHE/wireguard-go-trixie"
echo "$BIN"
