#!/usr/bin/env python3
"""Counts copies of WireGuard keys in a running process's memory (or in a file, e.g. a core).

    scan-secrets.py [--forms raw,hex,base64] PID KEYFILE...
    scan-secrets.py [--forms ...] --file PATH KEYFILE...

Each KEYFILE holds one base64 key as `wg genkey` / `wg genpsk` print it. Every readable region
listed in /proc/PID/maps is read through /proc/PID/mem (root, or ptrace rights over PID) and
searched for each key in three forms: the raw 32 bytes, lowercase hex (the UAPI's form) and
base64 (the config's form). Prints one line per key file and form with the count, naming the
key FILE only: no key material is ever printed.

--forms limits which forms count towards the exit status (all three are still reported), e.g.
`--forms hex,base64` for a daemon that may hold its one binary copy but no text copy.

Exit status: 0 no copy of the counted forms found, 1 found, 2 memory (or the file) could not be
read or a key file is not a base64 key of 32 bytes.
"""

import base64
import binascii
import os
import sys

CHUNK = 8 << 20
FORMS = ("raw", "hex", "base64")


def usage(message):
    print(f"scan-secrets.py: {message}", file=sys.stderr)
    print("usage: scan-secrets.py [--forms raw,hex,base64] (PID | --file PATH) KEYFILE...", file=sys.stderr)
    sys.exit(2)


def load_key(path):
    """The key's three forms, from a file holding base64 (whitespace around it ignored)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(4096).strip()
    except OSError as error:
        print(f"scan-secrets.py: {path}: cannot read: {error.strerror}", file=sys.stderr)
        sys.exit(2)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        print(f"scan-secrets.py: {path}: not a base64 key of 32 bytes", file=sys.stderr)
        sys.exit(2)
    return {"raw": raw, "hex": raw.hex().encode(), "base64": base64.b64encode(raw)}


def count_in(window, needle, tail_length):
    """Occurrences of needle in window that end past its first tail_length bytes (those were
    counted with the previous chunk), so none is counted twice."""
    count = 0
    start = 0
    while True:
        index = window.find(needle, start)
        if index < 0:
            return count
        if index + len(needle) > tail_length:
            count += 1
        start = index + 1


def scan_stream(chunks, keys):
    """chunks yields byte strings of one contiguous area at a time (None starts a new area)."""
    counts = {name: {form: 0 for form in FORMS} for name in keys}
    longest = max(len(forms[form]) for forms in keys.values() for form in FORMS)
    tail = b""
    for data in chunks:
        if data is None:
            tail = b""
            continue
        window = tail + data
        for name, forms in keys.items():
            for form in FORMS:
                counts[name][form] += count_in(window, forms[form], len(tail))
        tail = window[-(longest - 1) :]
    return counts


def process_chunks(pid):
    try:
        maps = open(f"/proc/{pid}/maps", encoding="ascii", errors="replace").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError as error:
        print(f"scan-secrets.py: /proc/{pid}: cannot read memory: {error.strerror}", file=sys.stderr)
        sys.exit(2)
    readable = 0
    with mem:
        for line in maps:
            fields = line.split()
            if len(fields) < 2 or not fields[1].startswith("r"):
                continue
            # The kernel's own pages (vvar, vsyscall) cannot be read through mem.
            if len(fields) >= 6 and fields[5] in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            yield None
            address = start
            while address < end:
                size = min(CHUNK, end - address)
                try:
                    mem.seek(address)
                    data = mem.read(size)
                except OSError:
                    break
                if not data:
                    break
                readable += len(data)
                yield data
                address += len(data)
    if readable == 0:
        print(f"scan-secrets.py: /proc/{pid}/mem: no readable memory", file=sys.stderr)
        sys.exit(2)


def file_chunks(path):
    try:
        handle = open(path, "rb")
    except OSError as error:
        print(f"scan-secrets.py: {path}: cannot read: {error.strerror}", file=sys.stderr)
        sys.exit(2)
    with handle:
        yield None
        while True:
            data = handle.read(CHUNK)
            if not data:
                return
            yield data


def main(argv):
    counted = set(FORMS)
    target_file = None
    arguments = list(argv)
    while arguments and arguments[0].startswith("--"):
        option = arguments.pop(0)
        if option == "--forms" and arguments:
            counted = set(arguments.pop(0).split(","))
            if not counted <= set(FORMS):
                usage("--forms takes raw, hex and base64, separated by commas")
        elif option == "--file" and arguments:
            target_file = arguments.pop(0)
        else:
            usage(f"unknown option {option}")
    if target_file is None:
        if not arguments or not arguments[0].isdigit():
            usage("give a PID or --file PATH")
        pid = arguments.pop(0)
    if not arguments:
        usage("give at least one key file")

    keys = {}
    for path in arguments:
        keys[os.path.basename(path) if os.path.basename(path) not in keys else path] = load_key(path)
    chunks = file_chunks(target_file) if target_file is not None else process_chunks(pid)
    counts = scan_stream(chunks, keys)

    found = False
    for name, forms in counts.items():
        print(f"{name}: " + " ".join(f"{form}={forms[form]}" for form in FORMS))
        found = found or any(forms[form] > 0 for form in counted)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
