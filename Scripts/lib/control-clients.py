#!/usr/bin/env python3
"""Abusive and demanding clients of a tunctl control socket, for Scripts/netns-tests/control.sh.

Usage: control-clients.py MODE SOCKET [ARGS...]

  half SOCKET N            N clients, one after the other: connect, send half a request
                           ("get=1\\n", no blank line), close. Prints "done N failed F".
  early-close SOCKET N     N clients: connect, send a whole "get=1\\n\\n", close without reading
                           the reply. Prints "done N failed F".
  idle SOCKET N SECONDS    opens N connections and sends nothing; prints "open N refused R" once
                           all are connected, holds them SECONDS, then closes them and prints
                           "closed N". A connection the server dropped meanwhile
                           is fine (that is the point); one it refused to accept is counted.
  slow-read SOCKET BYTES DELAY
                           sends "get=1\\n\\n" and reads the reply BYTES at a time with DELAY
                           seconds between reads; prints "peers P bytes B complete yes|no".
  add-peers SOCKET N       one `set` request adding N peers (random public keys, no allowed
                           IPs); prints the reply's errno line.
  huge SOCKET BYTES        sends a request of BYTES bytes that never ends (no blank line);
                           prints the reply (the server must answer with an errno and close).

Every mode is bounded in time (socket timeouts of 10 s; idle by SECONDS).
"""

import os
import resource
import secrets
import select
import socket
import sys
import time

TIMEOUT = 10.0


def connect(path):
    """A connection, waiting (bounded) while the listener's backlog is full: a Unix stream
    connect then says EAGAIN at once, where a blocking `wg` would wait."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        except OSError:
            s.close()
            raise


def read_all(s):
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        chunks.append(data)
        if b"".join(chunks[-2:]).endswith(b"\n\n"):
            break
    return b"".join(chunks)


def one_shot(path, n, request):
    """N clients in turn: connect, send `request`, close without reading. Counts failures (a
    daemon that died or stopped accepting) instead of stopping at the first."""
    failed = 0
    for _ in range(n):
        try:
            s = connect(path)
            s.sendall(request)
            s.close()
        except OSError:
            failed += 1
    print(f"done {n - failed} failed {failed}", flush=True)


def idle(path, n, seconds):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    held = []
    refused = 0
    for _ in range(n):
        try:
            held.append(connect(path))
        except OSError:
            refused += 1
    print(f"open {len(held)} refused {refused}", flush=True)
    time.sleep(seconds)
    for s in held:
        s.close()
    print(f"closed {len(held)}", flush=True)


def slow_read(path, size, delay):
    s = connect(path)
    s.sendall(b"get=1\n\n")
    reply = bytearray()
    while True:
        try:
            data = s.recv(size)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        reply += data
        if reply.endswith(b"\n\n"):
            break
        time.sleep(delay)
    s.close()
    complete = reply.endswith(b"errno=0\n\n")
    peers = reply.count(b"\npublic_key=") + (1 if reply.startswith(b"public_key=") else 0)
    print(f"peers {peers} bytes {len(reply)} complete {'yes' if complete else 'no'}", flush=True)


def add_peers(path, n):
    lines = [b"set=1"]
    for _ in range(n):
        lines.append(b"public_key=" + secrets.token_hex(32).encode())
    request = b"\n".join(lines) + b"\n\n"
    s = connect(path)
    s.sendall(request)
    reply = read_all(s)
    s.close()
    print(reply.decode(errors="replace").strip(), flush=True)


def huge(path, size):
    s = connect(path)
    s.settimeout(1.0)
    chunk = b"set=1\n" + b"x" * 65530
    sent = 0
    started = time.monotonic()
    while sent < size and time.monotonic() - started < TIMEOUT:
        # Stop sending once the server has answered (it stops reading at its limit).
        readable, _, _ = select.select([s], [], [], 0)
        if readable:
            break
        try:
            sent += s.send(chunk[: min(len(chunk), size - sent)])
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
    s.settimeout(TIMEOUT)
    reply = read_all(s)
    s.close()
    print(f"sent {sent} reply {reply.decode(errors='replace').strip() or '(none)'}", flush=True)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mode, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "half":
        one_shot(path, int(args[0]), b"get=1\n")
    elif mode == "early-close":
        one_shot(path, int(args[0]), b"get=1\n\n")
    elif mode == "idle":
        idle(path, int(args[0]), float(args[1]))
    elif mode == "slow-read":
        slow_read(path, int(args[0]), float(args[1]))
    elif mode == "add-peers":
        add_peers(path, int(args[0]))
    elif mode == "huge":
        huge(path, int(args[0]))
    else:
        sys.exit(f"control-clients.py: unknown mode {mode}\n{__doc__}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
