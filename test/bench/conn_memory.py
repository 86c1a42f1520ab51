#!/usr/bin/python3
"""The intermediate's memory: resident set idle, and per idle client
connection (agents connected and registered, default 1000, by
build/zload: one process, each connection a real QUIC handshake with an
agent certificate and a registration).

    python3 test/bench/conn_memory.py [N]

Two figures per connection:
- per_connection_kb: what one more connection costs. N/2 connect, the
  resident size is read, N/2 more connect, read again: the difference
  over N/2. What the intermediate needs once, whatever the number of
  clients (the heap its handshakes in flight use, up to 32 at a time
  from one source here, is left behind as free space between the
  connections), is in neither reading's difference.
- average_kb: (resident size with N - idle) / N, the fixed part spread
  over the N connections; it tends to per_connection_kb as N grows.

Prints one JSON object; make bench shows it in its table."""
import json
import os
import pathlib
import socket
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from ztna import Intermediate, Pki, Zload, free_port, rss_kb  # noqa: E402


def settled_rss(pid):
    """The resident size once it stops moving (the last handshakes' and
    registrations' work done), at most 10 s."""
    last = rss_kb(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = rss_kb(pid)
        if abs(now - last) < 16:
            return now
        last = now
    return last


def measure(n):
    half = max(n // 2, 1)
    tmp = tempfile.mkdtemp(prefix="ztna-mem-")
    pki = Pki(os.path.join(tmp, "pki"))
    cert = pki.issue("agent", "a", "--service", "echo")
    port = free_port(socket.SOCK_DGRAM)
    inter = Intermediate(pki, port=port, metrics_port=free_port(),
                         bind="127.0.0.1",
                         extra=("--max-connections", str(max(n, 4096))))
    zs = []
    try:
        idle = settled_rss(inter.proc.pid)
        zs.append(Zload(pki.ca, cert, port, "echo", half, no_open=True))
        first = settled_rss(inter.proc.pid)
        zs.append(Zload(pki.ca, cert, port, "echo", n - half,
                        no_open=True))
        full = settled_rss(inter.proc.pid)
        conns = inter.metric("ztna_active_connections")
        assert conns == n, "%d connections, %d expected" % (conns, n)
    finally:
        for z in zs:
            z.quit()
        inter.stop()
    return {"clients": n, "idle_kb": idle, "with_half_kb": first,
            "with_clients_kb": full,
            "per_connection_kb": round((full - first) / (n - half), 1),
            "average_kb": round((full - idle) / n, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1
                             else 1000)))
