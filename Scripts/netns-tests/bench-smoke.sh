#!/usr/bin/env bash
# Smoke test of Scripts/bench: a --quick run (veth, VXLAN, and tunctl when built) must produce a
# results.json with every figure for every system it measured, a results.md row per system and an
# SVG that parses, and must leave no namespace or process behind — also when it is interrupted.
# No speed thresholds: CI machines differ; this only proves the benchmark still measures.
set -uo pipefail
source "$(dirname "$0")/../lib/netns.sh"

BENCH="$TT_ROOT/Scripts/bench"

# bench_leftovers PID: namespaces or daemons of the bench run with that PID still present.
bench_leftovers() {
  local pid=$1 left
  left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^bn${pid}[ab]$")
  left+=$(ls "$TT_SOCK_DIR"/b[twm]"${pid}"[ab].sock 2>/dev/null)
  left+=$(pgrep -f "(wireguard-go -f|tunctl up .*)b[twm]${pid}[ab]" 2>/dev/null)
  [[ -n "$left" ]] && echo "$left"
}

# check_results DIR [SYSTEMS]: every field of every measured system, machine facts, reports that
# parse. SYSTEMS (comma-separated) defaults to what --quick measures.
check_results() {
  python3 - "$1" "$TUNCTL" "${2:-}" <<'EOF'
import json, os, sys
import xml.etree.ElementTree as ET

out, tunctl, wanted = sys.argv[1], sys.argv[2], sys.argv[3]
problems = []
with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    doc = json.load(f)

if wanted:
    expected = wanted.split(",")
else:
    expected = ["veth", "vxlan"] + (["tunctl"] if os.access(tunctl, os.X_OK) else [])
systems = doc["settings"]["systems"]
if systems != expected:
    problems.append(f"systems measured {systems}, expected {expected}")
if doc["settings"]["runs"] != 1 or doc["settings"]["duration_s"] != 1:
    problems.append(f"--quick should be 1 run of 1 s, got {doc['settings']}")

for key in ("cpu_model", "cores", "kernel", "iperf3_version", "tunctl_commit"):
    if not doc["machine"].get(key):
        problems.append(f"machine.{key} is missing")

always = ["tcp1_gbps", "tcp4_gbps", "udp64_pps", "udp64_loss_pct", "udp1400_pps", "udp1400_loss_pct", "ping_rtt_ms"]
userspace = ["cpu_s_per_gb", "peak_rss_mib"]
for name in systems:
    s = doc["systems"].get(name)
    if s is None:
        problems.append(f"{name}: no entry in systems")
        continue
    if len(s["runs"]) != 1:
        problems.append(f"{name}: {len(s['runs'])} runs recorded, expected 1")
    for run in s["runs"]:
        for e in run["errors"]:
            problems.append(f"{name} run {run['run']}: {e}")
        for key in always + userspace:
            if key not in run:
                problems.append(f"{name} run {run['run']}: field {key} absent")
    for key in always:
        m = s["summary"].get(key, {}).get("median")
        if not isinstance(m, (int, float)) or m < 0:
            problems.append(f"{name}: {key} median is {m!r}, expected a number")
    for key in ("tcp1_gbps", "tcp4_gbps", "udp64_pps", "udp1400_pps"):
        if (s["summary"][key]["median"] or 0) <= 0:
            problems.append(f"{name}: {key} is zero: nothing got through")
    for key in userspace:
        m = s["summary"].get(key, {}).get("median")
        if s["runs_in"] == "kernel":
            if m is not None or any(r.get("cpu_kind") != "kernel" for r in s["runs"]):
                problems.append(f"{name}: kernel carrier should report {key} null and cpu_kind 'kernel'")
        elif not isinstance(m, (int, float)) or m <= 0:
            problems.append(f"{name}: {key} median is {m!r}, expected a positive number")

if "libsodium" not in doc["ceiling"] or "tunctl" not in doc["ceiling"]:
    problems.append("ceiling.libsodium / ceiling.tunctl absent")
elif not doc["ceiling"]["libsodium"] or not doc["ceiling"]["libsodium"].get("1420"):
    problems.append(f"libsodium ceiling not measured: {doc['ceiling']['notes']}")
for key in ("tcp1_gbps.tunctl/wireguard-go-modern", "tcp1_gbps.tunctl/wireguard-go", "tcp1_gbps.tunctl/vxlan",
            "tcp1_gbps.vxlan-in-tunctl/tunctl", "tcp1_gbps.vxlan-in-tunctl/vxlan-in-wireguard-go-modern"):
    if key not in doc["ratios"]:
        problems.append(f"ratio {key} absent")

with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
    md = f.read()
for name in systems:
    label = doc["systems"][name]["label"] if name in doc["systems"] else name
    if f"| {label} |" not in md:
        problems.append(f"results.md has no row for {label}")

try:
    root = ET.parse(os.path.join(out, "throughput.svg")).getroot()
    if not root.tag.endswith("svg"):
        problems.append(f"throughput.svg root is <{root.tag}>, not <svg>")
    bars = [r for r in root.iter() if r.tag.endswith("rect") and r.find("{http://www.w3.org/2000/svg}title") is not None]
    if len(bars) != 2 * len(systems):
        problems.append(f"throughput.svg has {len(bars)} bars, expected {2 * len(systems)}")
except ET.ParseError as e:
    problems.append(f"throughput.svg does not parse: {e}")

for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

test_quick_run_is_complete() {
  local out="$TT_TEST_DIR/out" bpid
  "$BENCH" --quick --out "$out" >"$TT_TEST_DIR/bench-stdout.log" 2>"$TT_TEST_DIR/bench.log" &
  bpid=$!
  tt_register_pid "$bpid"
  wait_exit "$bpid" 240 || fail "Scripts/bench --quick still running after 240 s" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "Scripts/bench --quick exited $TT_EXIT_CODE (log: bench.log)" || return 1
  local left
  left=$(bench_leftovers "$bpid")
  [[ -z "$left" ]] || fail "bench left behind: $left" || return 1
  check_results "$out" 2>>"$TT_TEST_DIR/bench.log" || fail "results incomplete (see the tail of bench.log)" || return 1
  tt_log "quick bench: $(grep -c '^| ' "$out/results.md") table rows, results.json complete, SVG parses"
}

# Both wireguard-go anchors beside tunctl, as the full benchmark runs them: Debian 13's build is
# fetched (once, into the cache) by Scripts/lib/fetch-wireguard-go.sh. With the VXLAN-inside rows
# (flannel-style VXLAN over tunctl and over the modern wireguard-go).
test_anchors_measure() {
  local out="$TT_TEST_DIR/out" bpid systems=tunctl,vxlan-in-tunctl,wireguard-go-modern,vxlan-in-wireguard-go-modern,wireguard-go
  "$BENCH" --quick --systems "$systems" --out "$out" >"$TT_TEST_DIR/bench-stdout.log" 2>"$TT_TEST_DIR/bench.log" &
  bpid=$!
  tt_register_pid "$bpid"
  wait_exit "$bpid" 300 || fail "Scripts/bench --systems $systems still running after 300 s" || return 1
  [[ "$TT_EXIT_CODE" == 0 ]] || fail "Scripts/bench --systems $systems exited $TT_EXIT_CODE (log: bench.log)" || return 1
  local left
  left=$(bench_leftovers "$bpid")
  [[ -z "$left" ]] || fail "bench left behind: $left" || return 1
  check_results "$out" "$systems" 2>>"$TT_TEST_DIR/bench.log" || fail "results incomplete (see the tail of bench.log)" || return 1
  grep -q "modern anchor wireguard-go_0.0.2023" "$out/results.md" || fail "results.md does not name the modern anchor's package" || return 1
  tt_log "anchors: $(grep -E '^\| (tunctl|wireguard-go[^|]*|VXLAN inside[^|]*) \|' "$out/results.md" | cut -d'|' -f2,6 | tr '\n' ';')"
}

test_interrupted_run_cleans_up() {
  local out="$TT_TEST_DIR/out" bpid
  # A background job of a script ignores SIGINT, so TERM stands in for Ctrl-C here; both go
  # through the same trap.
  "$BENCH" --quick --systems veth,vxlan --out "$out" >/dev/null 2>"$TT_TEST_DIR/bench.log" &
  bpid=$!
  tt_register_pid "$bpid"
  wait_for 20 sh -c "ip netns list | grep -q '^bn${bpid}b'" || fail "bench made no namespace within 20 s" || return 1
  sleep 2
  kill -TERM "$bpid"
  wait_exit "$bpid" 15 || fail "bench did not exit within 15 s of SIGTERM" || return 1
  [[ "$TT_EXIT_CODE" == 143 ]] || fail "bench exited $TT_EXIT_CODE after SIGTERM, expected 143" || return 1
  local left
  left=$(bench_leftovers "$bpid")
  [[ -z "$left" ]] || fail "interrupted bench left behind: $left" || return 1
}

test_bad_arguments_are_refused() {
  local rc
  "$BENCH" --runs 0 --out "$TT_TEST_DIR/out" >/dev/null 2>"$TT_TEST_DIR/bench.log"
  rc=$?
  [[ $rc == 2 ]] || fail "--runs 0 exited $rc, expected 2" || return 1
  "$BENCH" --systems veth,ipsec --out "$TT_TEST_DIR/out" >/dev/null 2>>"$TT_TEST_DIR/bench.log"
  rc=$?
  [[ $rc == 2 ]] || fail "an unknown system exited $rc, expected 2" || return 1
  grep -q "unknown system 'ipsec'" "$TT_TEST_DIR/bench.log" || fail "the error does not name the system" || return 1
}

tt_init
tt_require iperf3 python3 ss cc
[[ -x "$BENCH" ]] || tt_missing "$BENCH is missing or not executable"
[[ -x "$TUNCTL" ]] && tt_require wg
run_test bench_args test_bad_arguments_are_refused
run_test bench_quick test_quick_run_is_complete
run_test bench_interrupt test_interrupted_run_cleans_up
[[ -x "$TUNCTL" ]] && run_test bench_anchors test_anchors_measure
tt_summary
