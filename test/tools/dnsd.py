"""A small authoritative DNS server for the tests: A records from the
command line, NODATA for other types of a known name, NXDOMAIN otherwise.

    python3 dnsd.py BIND_ADDR NAME=IPV4...

Prints "ready" once listening on BIND_ADDR:53 (UDP) and one line per
question it answers, so a test can see that a lookup went through it.
"""
import socket
import struct
import sys


def qname(msg, off):
    labels = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels).lower(), off + 1
        if n & 0xC0:
            raise ValueError("compression in a question")
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


def answer(msg, records):
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if qd != 1 or flags & 0x8000:
        return None, None
    name, off = qname(msg, 12)
    qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
    question = msg[12:off + 4]
    rd = flags & 0x0100
    if name not in records:
        hdr = struct.pack("!HHHHHH", qid, 0x8400 | rd | 3, 1, 0, 0, 0)
        return hdr + question, "%s %d NXDOMAIN" % (name, qtype)
    ans = b""
    if qtype == 1 and qclass == 1:
        ans = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4)
               + socket.inet_aton(records[name]))
    hdr = struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 1 if ans else 0, 0, 0)
    return hdr + question + ans, "%s %d %s" % (
        name, qtype, records[name] if ans else "NODATA")


def main():
    records = dict(a.lower().split("=", 1) for a in sys.argv[2:])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 53))
    print("ready", flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            out, what = answer(msg, records)
        except (ValueError, IndexError, struct.error):
            continue
        if out:
            s.sendto(out, peer)
            print(what, flush=True)


if __name__ == "__main__":
    main()
