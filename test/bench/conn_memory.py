#!/usr/bin/python3
"""The intermediate's memory: resident set idle, and per idle client
connection (N test clients connected and registered, default 200).

    python3 test/bench/conn_memory.py [N]

Prints one JSON object; make bench shows it in its table."""
import json
import os
import pathlib
import socket
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from ztna import (Client, Intermediate, Pki, free_port,  # noqa: E402
                  wait_for)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def measure(n):
    tmp = tempfile.mkdtemp(prefix="ztna-mem-")
    pki = Pki(os.path.join(tmp, "pki"))
    cert = pki.issue("agent", "a", "--service", "echo")
    mport = free_port()
    port = free_port(socket.SOCK_DGRAM)
    inter = Intermediate(pki, port=port, metrics_port=mport, bind="127.0.0.1",
                         extra=("--max-connections", str(max(n, 4096))))
    clients = []
    try:
        time.sleep(0.5)
        idle = rss_kb(inter.proc.pid)
        # in waves of 32: handshakes in progress from one source address
        # are bounded (64)
        while len(clients) < n:
            wave = [Client("127.0.0.1:%d" % port, pki, cert=cert)
                    for _ in range(min(32, n - len(clients)))]
            for c in wave:
                c.expect("up", timeout=60)
                c.send("reg agent echo")
            clients += wave
        for c in clients:
            c.expect("ack", timeout=60)
        wait_for(lambda: inter.metric("ztna_active_connections") == n,
                 timeout=60, what="%d connections" % n)
        time.sleep(1)
        full = rss_kb(inter.proc.pid)
    finally:
        for c in clients:
            c.close()
        inter.stop()
    return {"clients": n, "idle_kb": idle, "with_clients_kb": full,
            "per_connection_kb": round((full - idle) / n, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1
                             else 200)))
