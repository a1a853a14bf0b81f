#!/usr/bin/env python3
"""Sends self-checking UDP datagrams, optionally as UDP_SEGMENT super-sends; or receives and checks them.

usage: udp-gso-probe.py send HOST FLOW... [--rate UNITS_PER_S] [--burst UNITS] [--gso-fallback]
       udp-gso-probe.py recv HOST FLOW... [--rcvbuf BYTES] [--idle S] [--timeout S]

FLOW is `--flow id=I,port=P,count=C,size=S[,gso=N][,last=L]`, the same list on both sides:
  - flow I goes to HOST:P from a socket of its own, C datagrams numbered 0..C-1;
  - gso=N: each sendmsg carries N datagrams (setsockopt UDP_SEGMENT = S), so C is a multiple of
    N; without gso, one datagram per send;
  - last=L: the last datagram of each super-send (with gso) or of the flow (without) is L bytes,
    S otherwise; L < S, as the kernel only lets the last segment be shorter.

Every datagram is (big-endian) magic u32, flow u16, length u16 (of the whole datagram), sequence
u32, an 8-byte BLAKE2b of the header and body, then a body of deterministic pseudo-random bytes
chosen by (flow, sequence, length): the receiver rebuilds each datagram from its header and the
plan and compares all of it, so a datagram cut at the wrong place, merged, shortened or altered
counts as bad.

send prints {"sent", "super_sends", "gso_refused", "seconds"}: it sends every unit (a super-send,
or one datagram) of the flows interleaved in proportion, paced to --rate units per second in
bursts of --burst. A kernel that refuses UDP_SEGMENT is a failure (exit 1, said on stderr), unless
--gso-fallback: then that super-send goes out one datagram at a time, counted in gso_refused (for a
device without checksum offload, which kernels before 2024's "udp: Allow GSO transmit from devices
with no checksum offload" refuse with EIO).

recv binds HOST:P for every flow, prints "ready" on stderr, and prints {"expected", "received"
(distinct good datagrams), "bad", "duplicates", "out_of_order" (datagrams that arrived after a
higher sequence of their flow), "missing", "datagrams" (all that arrived), "flows" (per flow:
received, bad, duplicates, out_of_order, missing), "first_bad" (up to 5 reasons), "seconds"
(first to last arrival)}.
It returns once every expected datagram has arrived (plus 0.3 s for duplicates), after --idle
seconds (default 2) without a datagram, or at --timeout (default 20). Exit 0 with a report,
2 on bad arguments. Stdlib only.
"""
import errno
import hashlib
import json
import random
import selectors
import socket
import struct
import sys
import time

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
SO_RCVBUFFORCE = 33  # asm-generic/socket.h: SO_RCVBUF past net.core.rmem_max (needs CAP_NET_ADMIN)

MAGIC = 0x55534F31  # "USO1"
HEADER = struct.Struct("!IHHI")  # magic, flow, length, sequence
DIGEST = 8
MINIMUM = HEADER.size + DIGEST  # the smallest datagram: header and digest, empty body
MAXIMUM = 65507  # the largest UDP payload over IPv4
# Bodies are windows into one fixed pseudo-random pool, at an offset picked by flow and sequence.
POOL = random.Random(0x75736F).randbytes(1 << 17)
WINDOW = len(POOL) - MAXIMUM


def die(message: str, status: int = 2) -> None:
    print(f"udp-gso-probe: {message}", file=sys.stderr)
    sys.exit(status)


class Flow:
    def __init__(self, spec: str) -> None:
        try:
            fields = dict(part.split("=", 1) for part in spec.split(","))
            self.id = int(fields.pop("id"))
            self.port = int(fields.pop("port"))
            self.count = int(fields.pop("count"))
            self.size = int(fields.pop("size"))
            self.gso = int(fields.pop("gso", "0"))
            self.last = int(fields.pop("last", "0"))
        except (KeyError, ValueError) as error:
            die(f"bad --flow {spec!r}: {error}")
        if fields:
            die(f"bad --flow {spec!r}: unknown {', '.join(fields)}")
        if not (0 <= self.id < 1 << 16 and 0 < self.port < 1 << 16 and self.count > 0):
            die(f"bad --flow {spec!r}: id, port or count out of range")
        if not MINIMUM <= self.size <= MAXIMUM or (self.last and not MINIMUM <= self.last < self.size):
            die(f"bad --flow {spec!r}: sizes must be {MINIMUM}..{MAXIMUM}, last shorter than size")
        if self.gso and (self.gso < 2 or self.count % self.gso):
            die(f"bad --flow {spec!r}: gso must be at least 2 and divide count")
        self.group = self.gso or self.count  # the run whose last datagram is `last` bytes

    def length(self, seq: int) -> int:
        return self.last if self.last and seq % self.group == self.group - 1 else self.size

    def datagram(self, seq: int) -> bytes:
        length = self.length(seq)
        header = HEADER.pack(MAGIC, self.id, length, seq)
        start = (seq * 7919 + self.id * 104729) % WINDOW
        body = POOL[start : start + length - MINIMUM]
        return header + hashlib.blake2b(header + body, digest_size=DIGEST).digest() + body


def parse(args: list[str]) -> tuple[str, str, list[Flow], dict[str, str]]:
    if len(args) < 2 or args[0] not in ("send", "recv"):
        die(__doc__.split("\n\n")[1])
    mode, host, rest = args[0], args[1], args[2:]
    flows, options = [], {}
    while rest:
        if rest[0] == "--gso-fallback":
            options["gso-fallback"] = "1"
            rest = rest[1:]
            continue
        if len(rest) < 2 or not rest[0].startswith("--"):
            die(f"unexpected argument {rest[0]!r}")
        if rest[0] == "--flow":
            flows.append(Flow(rest[1]))
        else:
            options[rest[0][2:]] = rest[1]
        rest = rest[2:]
    if not flows:
        die("no --flow given")
    if len({f.id for f in flows}) != len(flows) or len({f.port for f in flows}) != len(flows):
        die("every flow needs its own id and port")
    return mode, host, flows, options


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def send(host: str, flows: list[Flow], options: dict[str, str]) -> None:
    rate = float(options.pop("rate", "1000"))
    burst = int(options.pop("burst", "4"))
    fallback = options.pop("gso-fallback", None) is not None
    if options:
        die(f"send: unknown option --{', --'.join(options)}")
    sockets = {}
    for flow in flows:
        sock = socket.socket(family(host), socket.SOCK_DGRAM)
        sock.connect((host, flow.port))
        if flow.gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, flow.size)
            except OSError as error:
                die(f"the kernel refuses UDP_SEGMENT {flow.size} on flow {flow.id}: {error}", 1)
        sockets[flow.id] = sock
    units = {f.id: f.count // (f.gso or 1) for f in flows}
    done = {f.id: 0 for f in flows}
    sent = super_sends = refused = 0
    start = time.monotonic()
    for unit in range(sum(units.values())):
        # The flow furthest behind its share goes next, so the flows interleave over the whole run.
        flow = min((f for f in flows if done[f.id] < units[f.id]), key=lambda f: done[f.id] / units[f.id])
        sock = sockets[flow.id]
        first = done[flow.id] * (flow.gso or 1)
        datagrams = [flow.datagram(seq) for seq in range(first, first + (flow.gso or 1))]
        try:
            sock.send(b"".join(datagrams))
            super_sends += flow.gso > 0
        except OSError as error:
            # EIO: no checksum offload on the route's device; EINVAL: a size the kernel will not cut.
            if not flow.gso or error.errno not in (errno.EIO, errno.EINVAL):
                die(f"send on flow {flow.id}, sequence {first}: {error}", 1)
            if not fallback:
                die(f"the kernel refuses a UDP_SEGMENT send on flow {flow.id} ({len(datagrams)} x "
                    f"{flow.size} bytes): {error}", 1)
            refused += 1
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
            for datagram in datagrams:
                sock.send(datagram)
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, flow.size)
        sent += len(datagrams)
        done[flow.id] += 1
        if unit % burst == burst - 1:
            # Pacing: the tunnel is tested, not the socket buffers, so none should overflow.
            ahead = start + (unit + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    print(json.dumps({"sent": sent, "super_sends": super_sends, "gso_refused": refused,
                      "seconds": round(time.monotonic() - start, 3)}))


def receive(host: str, flows: list[Flow], options: dict[str, str]) -> None:
    rcvbuf = int(options.pop("rcvbuf", str(8 << 20)))
    idle = float(options.pop("idle", "2"))
    timeout = float(options.pop("timeout", "20"))
    if options:
        die(f"recv: unknown option --{', --'.join(options)}")
    selector = selectors.DefaultSelector()
    for flow in flows:
        sock = socket.socket(family(host), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, flow.port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, flow)
    print("ready", file=sys.stderr, flush=True)

    expected = sum(f.count for f in flows)
    seen = {f.id: bytearray(f.count) for f in flows}
    stats = {f.id: {"received": 0, "bad": 0, "duplicates": 0, "out_of_order": 0} for f in flows}
    highest = {f.id: -1 for f in flows}
    first_bad: list[str] = []
    good = datagrams = 0
    deadline = time.monotonic() + timeout
    first_arrival = last_arrival = None

    def bad(flow: Flow, reason: str) -> None:
        stats[flow.id]["bad"] += 1
        if len(first_bad) < 5:
            first_bad.append(f"port {flow.port}: {reason}")

    def check(flow: Flow, data: bytes) -> None:
        nonlocal good
        if len(data) < MINIMUM:
            return bad(flow, f"{len(data)}-byte datagram, shorter than a header")
        magic, flow_id, length, seq = HEADER.unpack_from(data)
        if magic != MAGIC or flow_id != flow.id or seq >= flow.count:
            return bad(flow, f"{len(data)} bytes with header magic {magic:#x} flow {flow_id} sequence {seq}")
        if len(data) != flow.length(seq) or length != len(data):
            return bad(flow, f"sequence {seq}: {len(data)} bytes, header says {length}, plan {flow.length(seq)}")
        if data != flow.datagram(seq):
            return bad(flow, f"sequence {seq}: content differs from what was sent")
        s = stats[flow.id]
        if seen[flow.id][seq]:
            s["duplicates"] += 1
            return None
        seen[flow.id][seq] = 1
        s["received"] += 1
        good += 1
        if seq < highest[flow.id]:
            s["out_of_order"] += 1
        highest[flow.id] = max(highest[flow.id], seq)
        return None

    complete_at = None
    while True:
        now = time.monotonic()
        if complete_at is None and good == expected:
            complete_at = now + 0.3  # a moment more, for any duplicate behind the last datagram
        ends = [deadline] + ([complete_at] if complete_at else []) + ([last_arrival + idle] if last_arrival else [])
        left = min(ends) - now
        if left <= 0:
            break
        for key, _ in selector.select(left):
            while True:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    break
                datagrams += 1
                check(key.data, data)
            last_arrival = time.monotonic()
            first_arrival = first_arrival or last_arrival

    for flow in flows:
        stats[flow.id]["missing"] = flow.count - stats[flow.id]["received"]
    total = {k: sum(s[k] for s in stats.values()) for k in ("bad", "duplicates", "out_of_order", "missing")}
    print(json.dumps({"expected": expected, "received": good, **total, "datagrams": datagrams,
                      "flows": {str(k): v for k, v in stats.items()}, "first_bad": first_bad,
                      "seconds": round((last_arrival or 0) - (first_arrival or 0), 3)}))


def main() -> None:
    mode, host, flows, options = parse(sys.argv[1:])
    (send if mode == "send" else receive)(host, flows, options)


if __name__ == "__main__":
    main()
