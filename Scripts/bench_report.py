#!/usr/bin/env python3
"""Turns the raw output of Scripts/bench into results.json, results.md and throughput.svg.

    bench_report.py --raw DIR/raw --out DIR     the reports (what Scripts/bench calls at the end)
    bench_report.py --brief IPERF3_JSON_FILE    one progress line for an iperf3 -J result
    bench_report.py --brief-crypto JSON_TEXT    one line for a bench-crypto result; exit 1 if invalid

Raw layout (written by Scripts/bench):
    raw/meta.env                      key=value: settings, versions, skipped systems
    raw/crypto.env                    libsodium.SIZE / tunctl.SIZE = JSON from bench-crypto
    raw/SYSTEM/runN.env               cpu_ticks.tcp1, cpu_ticks.tcp4, rss_kb.a, rss_kb.b, setup_failed
    raw/SYSTEM/runN-{tcp1,tcp4,udp64,udp1400}.json   iperf3 client JSON (receiver figures inside)
    raw/SYSTEM/runN-ping.txt          ping output

Standard library only. A figure that could not be measured is null, never a guess.
"""

import argparse
import json
import os
import platform
import statistics
import sys
from xml.sax.saxutils import escape

SCHEMA_VERSION = 1

# Kernel carriers have no process of their own: their CPU is spent in softirq and in the
# iperf3 processes' system calls, so it is not comparable and reported as null ("kernel").
SYSTEM_INFO = {
    "veth": {"label": "raw veth", "runs_in": "kernel", "carries": "none (the underlay)", "encrypts": False},
    "vxlan": {"label": "kernel VXLAN", "runs_in": "kernel", "carries": "L2 Ethernet frames", "encrypts": False},
    "tunctl": {"label": "tunctl", "runs_in": "userspace", "carries": "L3 IP packets (TUN)", "encrypts": True},
    # The anchor: Debian 13's build, with wireguard-go's own TUN offloads and UDP GSO/GRO.
    "wireguard-go-modern": {
        "label": "wireguard-go 0.0.20231211 (Debian 13)",
        "runs_in": "userspace",
        "carries": "L3 IP packets (TUN)",
        "encrypts": True,
    },
    # Flannel-style VXLAN (MTU 1370) inside each encrypted tunnel, measured through the VXLAN.
    "vxlan-in-tunctl": {
        "label": "VXLAN inside tunctl",
        "runs_in": "userspace",
        "carries": "L2 frames in VXLAN in L3 (TUN)",
        "encrypts": True,
    },
    "vxlan-in-wireguard-go-modern": {
        "label": "VXLAN inside wireguard-go 0.0.20231211",
        "runs_in": "userspace",
        "carries": "L2 frames in VXLAN in L3 (TUN)",
        "encrypts": True,
    },
    # Debian 12's build predates those offloads: kept as the older anchor.
    "wireguard-go": {
        "label": "wireguard-go 0.0.20220316 (Debian 12)",
        "runs_in": "userspace",
        "carries": "L3 IP packets (TUN)",
        "encrypts": True,
    },
}

# Every per-run figure, in table order: (key, unit, description).
FIELDS = [
    ("tcp1_gbps", "Gbit/s", "iperf3 TCP, 1 stream, A to B, receiver side"),
    ("tcp4_gbps", "Gbit/s", "iperf3 TCP, 4 parallel streams (-P 4), receiver side, summed"),
    ("udp64_pps", "packets/s", "iperf3 UDP, 64-byte payload, -b 0: datagrams delivered to the receiver per second"),
    ("udp64_loss_pct", "%", "share of the 64-byte datagrams sent that the receiver never got"),
    ("udp1400_pps", "packets/s", "iperf3 UDP, 1400-byte payload, -b 0: datagrams delivered per second"),
    ("udp1400_loss_pct", "%", "share of the 1400-byte datagrams sent that the receiver never got"),
    ("ping_rtt_ms", "ms", "median ICMP echo round trip through the carrier, idle, before the bulk tests"),
    ("cpu_s_per_gb", "CPU s/GB", "utime+stime of both tunnel processes during the 1-stream TCP test per 10^9 bytes "
     "received; null for kernel carriers"),
    ("peak_rss_mib", "MiB", "largest VmHWM of the two tunnel processes at the end of the run; null for kernel carriers"),
]
USERSPACE_ONLY = {"cpu_s_per_gb", "peak_rss_mib"}
# Ratios tunctl/other of the medians; the modern wireguard-go is the anchor the README quotes.
RATIO_KEYS = ("tcp1_gbps", "tcp4_gbps", "udp64_pps", "udp1400_pps", "cpu_s_per_gb", "peak_rss_mib")
RATIO_LABELS = {
    "tcp1_gbps": "TCP 1 stream",
    "tcp4_gbps": "TCP 4 streams",
    "udp64_pps": "UDP 64 B packets/s",
    "udp1400_pps": "UDP 1400 B packets/s",
    "cpu_s_per_gb": "CPU s/GB (lower is better)",
    "peak_rss_mib": "peak RSS (lower is better)",
}
RATIO_OTHERS = ("wireguard-go-modern", "wireguard-go", "vxlan")
# VXLAN inside the tunnel: against TCP straight over the same tunnel (the goal is >= 0.8) and
# against the same overlay inside wireguard-go.
VXLAN_RATIOS = (("vxlan-in-tunctl", "tunctl"), ("vxlan-in-tunctl", "vxlan-in-wireguard-go-modern"),
                ("vxlan-in-wireguard-go-modern", "wireguard-go-modern"))


def read_env(path):
    out = {}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


def load_json(path):
    """The iperf3 document, or (None, reason)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None, "not run"
    except (OSError, ValueError) as e:
        return None, f"unreadable iperf3 output: {e}"
    if not isinstance(doc, dict):
        return None, "iperf3 output is not a JSON object"
    if doc.get("error"):
        return None, f"iperf3: {doc['error']}"
    return doc, None


def iperf_figures(doc):
    """Receiver-side figures of one iperf3 client document: a dict, or raises KeyError."""
    end = doc["end"]
    udp = doc.get("start", {}).get("test_start", {}).get("protocol") == "UDP" or "jitter_ms" in end.get("sum", {})
    if not udp:
        r = end["sum_received"]
        sent = end.get("sum_sent", {})
        return {
            "gbps": r["bits_per_second"] / 1e9,
            "bytes": r["bytes"],
            "seconds": r["seconds"],
            "retransmits": sent.get("retransmits"),
        }
    s = end["sum"]
    r = end.get("sum_received", s)
    seconds = r["seconds"] or s["seconds"]
    sent, lost = s["packets"], s["lost_packets"]
    delivered = max(sent - lost, 0)
    return {
        "pps": delivered / seconds if seconds else None,
        "sent_pps": sent / seconds if seconds else None,
        "packets_sent": sent,
        "packets_lost": lost,
        "loss_pct": s["lost_percent"],
        "goodput_gbps": r["bits_per_second"] / 1e9,
        "seconds": seconds,
    }


def brief(path):
    doc, err = load_json(path)
    if doc is None:
        print(err)
        return 1
    try:
        f = iperf_figures(doc)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        print(f"no receiver figures in iperf3 output ({e})")
        return 1
    if "gbps" in f:
        retr = f" , {f['retransmits']} retransmits" if f.get("retransmits") is not None else ""
        print(f"{f['gbps']:.2f} Gbit/s (receiver){retr.replace(' ,', ',')}")
    else:
        print(
            f"{f['pps'] / 1e3:.1f} kpps delivered of {f['sent_pps'] / 1e3:.1f} kpps sent, "
            f"{f['loss_pct']:.1f} % lost"
        )
    return 0


def crypto_doc(text):
    """The bench-crypto JSON object; a whole document, or else its last line that is one."""
    try:
        doc = json.loads(text)
    except ValueError:
        lines = [ln for ln in text.splitlines() if ln.strip().startswith("{")]
        if not lines:
            raise
        doc = json.loads(lines[-1])
    bps = doc["bytes_per_second"]
    if not isinstance(bps, (int, float)) or isinstance(bps, bool) or bps <= 0:
        raise ValueError("bytes_per_second is not a positive number")
    return doc


def brief_crypto(text):
    try:
        doc = crypto_doc(text)
    except (ValueError, KeyError, TypeError) as e:
        print(f"not a bench-crypto result: {e}")
        return 1
    print(f"{doc['bytes_per_second'] * 8 / 1e9:.2f} Gbit/s ({doc['bytes_per_second'] / 1e6:.0f} MB/s)")
    return 0


def ping_figures(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None, [], "not run"
    rtts = []
    for line in text.splitlines():
        if " time=" in line:
            try:
                rtts.append(float(line.split(" time=")[1].split()[0]))
            except (IndexError, ValueError):
                pass
    if not rtts:
        return None, [], "no replies"
    return statistics.median(rtts), rtts, None


def one_run(sysdir, system, run, clk_tck):
    env = read_env(os.path.join(sysdir, f"run{run}.env"))
    prefix = os.path.join(sysdir, f"run{run}")
    userspace = SYSTEM_INFO[system]["runs_in"] == "userspace"
    rec = {"run": run, "errors": []}
    if env.get("setup_failed"):
        rec["errors"].append("the system did not come up")
    raw = {}
    for test in ("tcp1", "tcp4", "udp64", "udp1400"):
        doc, err = load_json(f"{prefix}-{test}.json")
        if doc is not None:
            try:
                raw[test] = iperf_figures(doc)
            except (KeyError, TypeError, ZeroDivisionError) as e:
                err = f"no receiver figures ({e})"
        if err:
            if not env.get("setup_failed"):
                rec["errors"].append(f"{test}: {err}")
            raw[test] = None
    get = lambda test, key: raw[test][key] if raw[test] else None  # noqa: E731
    rec["tcp1_gbps"] = get("tcp1", "gbps")
    rec["tcp4_gbps"] = get("tcp4", "gbps")
    rec["udp64_pps"] = get("udp64", "pps")
    rec["udp64_loss_pct"] = get("udp64", "loss_pct")
    rec["udp1400_pps"] = get("udp1400", "pps")
    rec["udp1400_loss_pct"] = get("udp1400", "loss_pct")
    median, rtts, perr = ping_figures(f"{prefix}-ping.txt")
    if perr and not env.get("setup_failed"):
        rec["errors"].append(f"ping: {perr}")
    rec["ping_rtt_ms"] = median
    rec["cpu_s_per_gb"] = None
    rec["peak_rss_mib"] = None
    rec["cpu_kind"] = "process" if userspace else "kernel"
    if userspace:
        for test in ("tcp1", "tcp4"):
            ticks = env.get(f"cpu_ticks.{test}")
            b = get(test, "bytes")
            val = None
            if ticks is not None and b:
                val = int(ticks) / clk_tck / (b / 1e9)
            elif raw[test] is not None and not env.get("setup_failed"):
                rec["errors"].append(f"cpu: no utime/stime readings around {test}")
            rec["cpu_s_per_gb" if test == "tcp1" else "cpu_s_per_gb_tcp4"] = val
        rss = {side: int(env[f"rss_kb.{side}"]) for side in ("a", "b") if env.get(f"rss_kb.{side}", "").isdigit()}
        rec["peak_rss_kb_per_process"] = rss
        if rss:
            rec["peak_rss_mib"] = max(rss.values()) / 1024
        elif not env.get("setup_failed"):
            rec["errors"].append("rss: no VmHWM reading")
    if userspace:
        rec["stop_status"] = {side: env.get(f"stop_status.{side}") for side in ("a", "b")}
    rec["loadavg_1m"] = {
        k: float(env[f"loadavg_{k}"]) for k in ("before", "after") if env.get(f"loadavg_{k}")
    }
    rec["raw"] = {
        "tcp1": raw["tcp1"],
        "tcp4": raw["tcp4"],
        "udp64": raw["udp64"],
        "udp1400": raw["udp1400"],
        "ping_rtts_ms": rtts,
        "cpu_ticks_tcp1": int(env["cpu_ticks.tcp1"]) if "cpu_ticks.tcp1" in env else None,
        "cpu_ticks_tcp4": int(env["cpu_ticks.tcp4"]) if "cpu_ticks.tcp4" in env else None,
    }
    return rec


def summarize(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def build(raw_dir):
    meta = read_env(os.path.join(raw_dir, "meta.env"))
    crypto = read_env(os.path.join(raw_dir, "crypto.env"))
    clk_tck = int(meta.get("clk_tck", "100"))
    systems = [s for s in meta.get("systems", "").split(",") if s]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "started": meta.get("started"),
        "finished": meta.get("finished"),
        "settings": {
            "duration_s": int(meta.get("duration", "0")),
            "runs": int(meta.get("runs", "0")),
            "quick": meta.get("quick") == "1",
            "ping_count": int(meta.get("ping_count", "0")),
            "systems": systems,
            "skipped": {k[len("skipped."):]: v for k, v in meta.items() if k.startswith("skipped.")},
            "tunnel_mtu": 1420,
            "vxlan_mtu": 1450,
        },
        "machine": {
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "iperf3_version": meta.get("iperf3_version"),
            "wireguard_go_version": meta.get("wireguard_go_version"),
            "wireguard_go_modern_version": meta.get("wireguard_go_modern_version"),
            "wireguard_go_modern_package": meta.get("wireguard_go_modern_package"),
            "tunctl_commit": meta.get("tunctl_commit"),
            "tunctl_tree": meta.get("tunctl_tree"),
            "tunctl_binary": meta.get("tunctl_binary"),
            "tunctl_binary_mtime": meta.get("tunctl_binary_mtime"),
            "tunctl_binary_sha256": meta.get("tunctl_binary_sha256"),
        },
        "fields": {k: {"unit": u, "description": d} for k, u, d in FIELDS},
        "systems": {},
    }
    for system in systems:
        sysdir = os.path.join(raw_dir, system)
        runs = [one_run(sysdir, system, n, clk_tck) for n in range(1, doc["settings"]["runs"] + 1)]
        entry = dict(SYSTEM_INFO[system])
        entry["runs"] = runs
        entry["summary"] = {k: summarize(runs, k) for k, _, _ in FIELDS}
        if entry["runs_in"] == "userspace":
            entry["summary"]["cpu_s_per_gb_tcp4"] = summarize(runs, "cpu_s_per_gb_tcp4")
        doc["systems"][system] = entry

    ceiling = {"libsodium": {}, "tunctl": {}, "notes": []}
    for impl in ("libsodium", "tunctl"):
        for size in ("1420", "65536"):
            text = crypto.get(f"{impl}.{size}")
            val = None
            if text:
                try:
                    c = crypto_doc(text)
                    val = {"bytes_per_second": c["bytes_per_second"], "gbps": c["bytes_per_second"] * 8 / 1e9, "raw": c}
                except (ValueError, KeyError, TypeError) as e:
                    ceiling["notes"].append(f"{impl} {size} B: unparsable result ({e})")
            ceiling[impl][size] = val
        if crypto.get(f"{impl}_note"):
            ceiling["notes"].append(f"{impl}: {crypto[impl + '_note']}")
        if all(v is None for v in ceiling[impl].values()):
            ceiling[impl] = None
    if ceiling["libsodium"]:
        impl = ceiling["libsodium"]["1420"] or ceiling["libsodium"]["65536"]
        doc["machine"]["libsodium"] = impl["raw"].get("implementation") if impl else None
    doc["ceiling"] = ceiling

    def med(system, key):
        s = doc["systems"].get(system)
        return s["summary"][key]["median"] if s else None

    ratios = {}
    for key in RATIO_KEYS:
        for other in RATIO_OTHERS:
            a, b = med("tunctl", key), med(other, key)
            ratios[f"{key}.tunctl/{other}"] = a / b if a is not None and b else None
    for key in ("tcp1_gbps", "tcp4_gbps"):
        for one, other in VXLAN_RATIOS:
            a, b = med(one, key), med(other, key)
            ratios[f"{key}.{one}/{other}"] = a / b if a is not None and b else None
    doc["ratios"] = ratios
    return doc


# ---------------------------------------------------------------------------------------------
# Markdown


def fmt(v, digits):
    return "–" if v is None else f"{v:.{digits}f}"


def cell(summary, scale=1.0, digits=2, single=False):
    if summary["median"] is None:
        return "n/a"
    m = summary["median"] * scale
    if single or summary["n"] <= 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(summary['min'] * scale, digits)}–{fmt(summary['max'] * scale, digits)})"


def markdown(doc):
    st, mc = doc["settings"], doc["machine"]
    lines = [
        "# tunctl benchmark",
        "",
        f"{st['runs']} run(s) × {st['duration_s']} s per iperf3 test; each cell is the median (min–max) over runs. "
        f"Two network namespaces on one veth pair; tunnels at MTU {st['tunnel_mtu']}, VXLAN at {st['vxlan_mtu']}.",
        "",
        f"Machine: {mc['cpu_model']}, {mc['cores']} cores, kernel {mc['kernel']}; {mc['iperf3_version']}; "
        f"modern anchor {mc.get('wireguard_go_modern_package') or 'not measured'} "
        f"({mc.get('wireguard_go_modern_version') or '-'}); Debian 12's "
        f"{mc['wireguard_go_version'] or 'wireguard-go not installed'}; tunctl commit "
        f"{(mc['tunctl_commit'] or 'unknown')[:12]} ({mc['tunctl_tree']} tree"
        f"{', binary ' + mc['tunctl_binary_mtime'] if mc.get('tunctl_binary_mtime') else ', no binary'}).",
        "",
        "| System | Carries | Runs in | Encrypts | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | "
        "UDP 64 B kpps | UDP 64 B loss % | UDP 1400 B kpps | UDP 1400 B loss % | Ping RTT ms | "
        "CPU s/GB | Peak RSS MiB |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in doc["systems"].items():
        sm = s["summary"]
        kernel = s["runs_in"] == "kernel"
        lines.append(
            "| "
            + " | ".join(
                [
                    s["label"],
                    s["carries"],
                    s["runs_in"],
                    "yes" if s["encrypts"] else "no",
                    cell(sm["tcp1_gbps"]),
                    cell(sm["tcp4_gbps"]),
                    cell(sm["udp64_pps"], 1e-3, 0),
                    cell(sm["udp64_loss_pct"], digits=1),
                    cell(sm["udp1400_pps"], 1e-3, 0),
                    cell(sm["udp1400_loss_pct"], digits=1),
                    cell(sm["ping_rtt_ms"], digits=3),
                    "kernel" if kernel else cell(sm["cpu_s_per_gb"], digits=2),
                    "kernel" if kernel else cell(sm["peak_rss_mib"], digits=1),
                ]
            )
            + " |"
        )
    for name, reason in sorted(st["skipped"].items()):
        lines.append(f"| {SYSTEM_INFO[name]['label']} | not measured: {reason} |" + " |" * 11)
    loads = [v for s in doc["systems"].values() for r in s["runs"] for v in r.get("loadavg_1m", {}).values()]
    if loads:
        busy = max(loads) > (mc["cores"] or 1)
        lines += [
            "",
            f"1-minute load average around the runs: {min(loads):.1f}–{max(loads):.1f} on {mc['cores']} cores"
            + (" — other work shared the CPUs, so throughput is lower and noisier than on an idle machine; "
               "CPU s/GB is the figure least affected." if busy else "."),
        ]
    lines += ["", "Ratios of medians:"]
    for key in RATIO_KEYS:
        label = RATIO_LABELS[key]
        parts = []
        for other in RATIO_OTHERS:
            if key in USERSPACE_ONLY and other == "vxlan":
                continue
            r = doc["ratios"][f"{key}.tunctl/{other}"]
            parts.append(f"tunctl/{other} {'n/a' if r is None else f'{r:.2f}×'}")
        lines.append(f"- {label}: " + ", ".join(parts))
    for one, other in VXLAN_RATIOS:
        parts = []
        for key in ("tcp1_gbps", "tcp4_gbps"):
            r = doc["ratios"].get(f"{key}.{one}/{other}")
            parts.append(f"{RATIO_LABELS[key]} {'n/a' if r is None else f'{r:.2f}×'}")
        lines.append(f"- {one}/{other}: " + ", ".join(parts))
    c = doc["ceiling"]
    lines += ["", "Ceiling, ChaCha20-Poly1305 seal on one core (Gbit/s of plaintext per second of CPU time):", ""]
    lines += ["| Through | 1420 B | 64 KB |", "|---|--:|--:|"]
    for impl, label in (("libsodium", "libsodium directly (Scripts/bench-crypto.c)"),
                        ("tunctl", "tunctl's crypto layer (tunctl bench-crypto)")):
        vals = c[impl] or {}
        g = lambda size: fmt(vals[size]["gbps"], 2) if vals.get(size) else "n/a"  # noqa: E731
        lines.append(f"| {label} | {g('1420')} | {g('65536')} |")
    for note in c["notes"]:
        lines.append(f"\nNote: {note}")
    errors = [(n, r["run"], e) for n, s in doc["systems"].items() for r in s["runs"] for e in r["errors"]]
    if errors:
        lines += ["", "Failed measurements (null in results.json):", ""]
        lines += [f"- {n} run {run}: {e}" for n, run, e in errors]
    lines += [
        "",
        "CPU s/GB: user+system CPU seconds of both tunnel processes (sender and receiver side) per 10^9 bytes "
        "delivered in the 1-stream TCP test. Kernel carriers have no process of their own (their work is in "
        "softirq and the iperf3 processes), so they show \"kernel\".",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# SVG


def nice_step(top, ticks=5):
    raw = top / ticks
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def svg(doc):
    systems = list(doc["systems"].items())
    # Wider and taller once the VXLAN-inside rows (and their ratio line) are there.
    W, H = (820, 500) if len(systems) <= 5 else (1100, 520)
    left, right, top, bottom = 70, 20, 106 if len(systems) <= 5 else 124, 110
    pw, ph = W - left - right, H - top - bottom
    series = [("tcp1_gbps", "TCP, 1 stream", "#4c72b0"), ("tcp4_gbps", "TCP, 4 streams", "#dd8452")]
    ceiling = (doc["ceiling"]["libsodium"] or {}).get("1420")
    peak = 0.0
    for _, s in systems:
        for key, _, _ in series:
            v = s["summary"][key]["max"]
            peak = max(peak, v or 0.0)
    if ceiling:
        peak = max(peak, ceiling["gbps"])
    peak = peak or 1.0
    step = nice_step(peak * 1.08)
    ymax = step * (int(peak * 1.08 / step) + 1)
    y = lambda v: top + ph - v / ymax * ph  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
        "iperf3 TCP throughput by carrier (receiver side)</text>",
        f'<text x="{W / 2}" y="42" text-anchor="middle" fill="#555">'
        f"median of {doc['settings']['runs']} run(s) × {doc['settings']['duration_s']} s, bars show min–max; "
        f"{escape(doc['machine']['cpu_model'] or '')}, {doc['machine']['cores']} cores</text>",
    ]
    ratio_lines = []
    for other, label in (("wireguard-go-modern", "wireguard-go (Debian 13)"), ("wireguard-go", "wireguard-go (Debian 12)"),
                         ("vxlan", "VXLAN")):
        parts = []
        for key, name in (("tcp1_gbps", "1 stream"), ("tcp4_gbps", "4 streams")):
            r = doc["ratios"][f"{key}.tunctl/{other}"]
            parts.append(f"{name} {'n/a' if r is None else f'{r:.2f}×'}")
        ratio_lines.append(f"tunctl / {label}: " + ", ".join(parts))
    r = doc["ratios"].get("tcp1_gbps.vxlan-in-tunctl/tunctl")
    w = doc["ratios"].get("tcp1_gbps.vxlan-in-tunctl/vxlan-in-wireguard-go-modern")
    if r is not None or w is not None:
        ratio_lines.append(
            "VXLAN inside tunctl, 1 stream: / tunctl " + ("n/a" if r is None else f"{r:.2f}×")
            + ", / VXLAN inside wireguard-go " + ("n/a" if w is None else f"{w:.2f}×"))
    for i, text in enumerate(ratio_lines):
        out.append(f'<text x="{W / 2}" y="{62 + i * 16}" text-anchor="middle" font-weight="bold">{escape(text)}</text>')
    # Axis and grid.
    v = 0.0
    while v <= ymax + 1e-9:
        yy = y(v)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{W - right}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{W - right}" y2="{top + ph}" stroke="#333"/>')
    out.append(
        f'<text x="18" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 18 {top + ph / 2})">Gbit/s</text>'
    )
    n = max(len(systems), 1)
    gw = pw / n
    bw = min(60.0, gw * 0.32)
    for i, (name, s) in enumerate(systems):
        gx = left + gw * i + gw / 2
        for j, (key, _, color) in enumerate(series):
            sm = s["summary"][key]
            x = gx - bw + j * bw
            if sm["median"] is None:
                out.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - 6}" text-anchor="middle" fill="#999">n/a</text>')
                continue
            yy = y(sm["median"])
            out.append(
                f'<rect x="{x + 2:.1f}" y="{yy:.1f}" width="{bw - 4:.1f}" height="{top + ph - yy:.1f}" fill="{color}">'
                f"<title>{escape(s['label'])} {key}: {sm['median']:.3f} Gbit/s</title></rect>"
            )
            if sm["n"] > 1:
                cx = x + bw / 2
                out.append(
                    f'<line x1="{cx:.1f}" y1="{y(sm["min"]):.1f}" x2="{cx:.1f}" y2="{y(sm["max"]):.1f}" stroke="#222"/>'
                )
                for b in (sm["min"], sm["max"]):
                    out.append(f'<line x1="{cx - 5:.1f}" y1="{y(b):.1f}" x2="{cx + 5:.1f}" y2="{y(b):.1f}" stroke="#222"/>')
            label_y = min(yy, y(sm["max"])) - 5
            out.append(f'<text x="{x + bw / 2:.1f}" y="{label_y:.1f}" text-anchor="middle">{sm["median"]:.2f}</text>')
        out.append(f'<text x="{gx:.1f}" y="{top + ph + 18}" text-anchor="middle" font-weight="bold">{escape(s["label"])}</text>')
        sub = f"{s['runs_in']}, {'encrypted' if s['encrypts'] else 'plain'}"
        out.append(f'<text x="{gx:.1f}" y="{top + ph + 34}" text-anchor="middle" fill="#555">{escape(sub)}</text>')
    if ceiling:
        yy = y(ceiling["gbps"])
        out.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{W - right}" y2="{yy:.1f}" stroke="#c44e52" stroke-dasharray="6 4"/>'
        )
    # Legend: the two series, the ceiling line, then what was not measured.
    lx = left
    ly = H - 52
    for j, (_, label, color) in enumerate(series):
        out.append(f'<rect x="{lx + j * 130}" y="{ly - 11}" width="14" height="14" fill="{color}"/>')
        out.append(f'<text x="{lx + j * 130 + 20}" y="{ly}">{escape(label)}</text>')
    if ceiling:
        cx = lx + 2 * 130
        out.append(
            f'<line x1="{cx}" y1="{ly - 4}" x2="{cx + 28}" y2="{ly - 4}" stroke="#c44e52" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{cx + 34}" y="{ly}">ceiling: ChaCha20-Poly1305 seal on 1 core, 1420 B, libsodium '
            f"({ceiling['gbps']:.2f} Gbit/s)</text>"
        )
    skipped = doc["settings"]["skipped"]
    if skipped:
        text = "Not measured: " + "; ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
        out.append(f'<text x="{lx}" y="{H - 22}" fill="#777">{escape(text[:120])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--raw", help="the raw/ directory Scripts/bench wrote")
    g.add_argument("--brief", metavar="IPERF3_JSON")
    g.add_argument("--brief-crypto", metavar="JSON_TEXT")
    p.add_argument("--out", help="where results.json, results.md and throughput.svg go (with --raw)")
    a = p.parse_args(argv)
    if a.brief:
        return brief(a.brief)
    if a.brief_crypto is not None:
        return brief_crypto(a.brief_crypto)
    if not a.out:
        p.error("--raw needs --out")
    doc = build(a.raw)
    write_atomic(os.path.join(a.out, "results.json"), json.dumps(doc, indent=2, sort_keys=False) + "\n")
    write_atomic(os.path.join(a.out, "results.md"), markdown(doc))
    write_atomic(os.path.join(a.out, "throughput.svg"), svg(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
