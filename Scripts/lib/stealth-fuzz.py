#!/usr/bin/env python3
"""Throws garbage at a WireGuard-protocol listen port and counts the replies (there must be none).

usage: stealth-fuzz.py HOST PORT PCAP [--random N] [--mutated N] [--seed S] [--wait SECONDS]

- N random datagrams (default 10000): a quarter fully random (0..1500 bytes, including empty
  ones), the rest shaped like the real messages (type 1..4 with zero reserved bytes and the exact
  sizes 148/92/64, or a transport header) so they get past the cheap checks to mac1/index/AEAD.
- N mutated copies (default 1000) of real tunnel datagrams read from PCAP (Ethernet or raw-IP
  pcap from tcpdump): truncated, or with 1..8 bytes changed (never left unchanged).
Sends from one UDP socket, paced (about 20,000 datagrams/s), then waits --wait seconds (default 3)
for anything coming back. Prints JSON: {"sent", "replies", "captured"}. Stdlib only.
"""
import json
import random
import socket
import struct
import sys
import time


def udp_payloads(path: str, port: int) -> list:
    """UDP payloads to or from `port` in a little-endian or big-endian classic pcap file."""
    data = open(path, "rb").read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8 : off + 12])[0]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if linktype == 1:  # Ethernet
            if len(pkt) < 14:
                continue
            ethertype = struct.unpack("!H", pkt[12:14])[0]
            ip = pkt[14:]
        elif linktype in (101, 12):  # raw IP
            ip = pkt
            ethertype = 0x86DD if ip and ip[0] >> 4 == 6 else 0x0800
        elif linktype == 113:  # Linux cooked
            ethertype = struct.unpack("!H", pkt[14:16])[0]
            ip = pkt[16:]
        else:
            continue
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 17:
            udp = ip[(ip[0] & 0x0F) * 4 :]
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 17:
            udp = ip[40:]
        else:
            continue
        if len(udp) < 8:
            continue
        sport, dport = struct.unpack("!HH", udp[:4])
        if port in (sport, dport):
            out.append(udp[8:])
    return out


def shaped(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1501))
    if kind in (1, 2, 3):
        size = {1: 148, 2: 92, 3: 64}[kind]
        return struct.pack("<I", kind) + rng.randbytes(size - 4)
    # transport: type 4, random receiver index and counter, 0..1400 bytes of "ciphertext" + tag
    return struct.pack("<I", 4) + rng.randbytes(12 + 16 + rng.randrange(0, 1401))


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    if len(pkt) > 1 and rng.random() < 0.4:
        return pkt[: rng.randrange(0, len(pkt))]  # truncated
    b = bytearray(pkt)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= rng.randrange(1, 256)  # nonzero xor: the byte always changes
    return bytes(b)


def main() -> None:
    args = sys.argv[1:]
    opts = {"--random": 10000, "--mutated": 1000, "--seed": 1, "--wait": 3.0}
    for name in list(opts):
        if name in args:
            i = args.index(name)
            opts[name] = type(opts[name])(args[i + 1])
            del args[i : i + 2]
    host, port, pcap = args[0], int(args[1]), args[2]
    rng = random.Random(opts["--seed"])
    captured = [p for p in udp_payloads(pcap, port) if p]
    if opts["--mutated"] and not captured:
        sys.exit(f"no UDP payloads to/from port {port} in {pcap}")
    datagrams = [shaped(rng) for _ in range(opts["--random"])]
    datagrams += [mutate(rng, rng.choice(captured)) for _ in range(opts["--mutated"])]
    if captured:
        # No mutated datagram may equal a captured one: that would be a legitimate replay test.
        originals = set(captured)
        datagrams = [d for d in datagrams if d not in originals]

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)
    replies = 0

    def drain() -> None:
        nonlocal replies
        while True:
            try:
                sock.recvfrom(65536)
                replies += 1
            except (BlockingIOError, ConnectionRefusedError):
                return

    sent = 0
    for n, d in enumerate(datagrams):
        while True:
            try:
                sock.sendto(d, (host, port))
                sent += 1
                break
            except BlockingIOError:
                time.sleep(0.001)
            except ConnectionRefusedError:
                break  # an ICMP port-unreachable came back: counted by the caller (daemon gone)
        if n % 100 == 99:
            time.sleep(0.005)
            drain()
    end = time.monotonic() + opts["--wait"]
    while time.monotonic() < end:
        time.sleep(0.05)
        drain()
    print(json.dumps({"sent": sent, "replies": replies, "captured": len(captured)}))


if __name__ == "__main__":
    main()
