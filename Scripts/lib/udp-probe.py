#!/usr/bin/env python3
"""Sends numbered UDP datagrams to an echo service and reports what came back; or is that echo.

usage: udp-probe.py HOST PORT COUNT [--size N] [--wait SECONDS]
       udp-probe.py --echo HOST PORT SECONDS   (answers every datagram to its sender, then exits)

Prints one JSON object: {"sent", "received", "unique", "duplicates", "out_of_order", "sequence"}
("sequence" = the first 64 sequence numbers received, for determinism checks). Stdlib only;
bounded: paces sending and waits at most --wait seconds (default 2) after the last reply.
"""
import json
import socket
import struct
import sys
import time


def echo(host: str, port: int, seconds: float) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, peer = sock.recvfrom(65536)
        except socket.timeout:
            return
        sock.sendto(data, peer)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--echo":
        echo(args[1], int(args[2]), float(args[3]))
        return
    size, wait = 64, 2.0
    if "--size" in args:
        i = args.index("--size")
        size = int(args[i + 1])
        del args[i : i + 2]
    if "--wait" in args:
        i = args.index("--wait")
        wait = float(args[i + 1])
        del args[i : i + 2]
    host, port, count = args[0], int(args[1]), int(args[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect((host, port))
    sock.setblocking(False)
    got = []
    pad = b"\0" * max(0, size - 8)

    def drain() -> None:
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if len(data) >= 8:
                got.append(struct.unpack("!Q", data[:8])[0])

    for seq in range(count):
        try:
            sock.send(struct.pack("!Q", seq) + pad)
        except ConnectionRefusedError:
            pass
        if seq % 50 == 49:
            time.sleep(0.005)  # pacing: the relay is measured, not the socket buffers
        drain()
    deadline = time.monotonic() + wait
    last = len(got)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        drain()
        if len(got) != last:
            last = len(got)
            deadline = max(deadline, time.monotonic() + 0.5)
    ooo = sum(1 for a, b in zip(got, got[1:]) if b < a)
    print(json.dumps({
        "sent": count,
        "received": len(got),
        "unique": len(set(got)),
        "duplicates": len(got) - len(set(got)),
        "out_of_order": ooo,
        "sequence": got[:64],
    }))


if __name__ == "__main__":
    main()
