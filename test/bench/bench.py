#!/usr/bin/python3
"""make bench: throughput and latency of ztna's paths against a baseline
measured in the same run, on the data-path topology of the e2e tests.

  baseline  iperf3 and ping over the connector's own LAN to the backend
            (kernel TCP on a veth: what the machine can do at all)
  wg-go     wireguard-go (Debian's package) between the agent's and the
            connector's namespaces through the same two NATs (a port
            forward on the connector's NAT stands in for the punch), to
            the same backend: the userspace tunnel to compare with
  direct    agent -> connector over the punched direct QUIC path
  relay     the same through the intermediate (the direct path blocked)

Figures vary with the machine's load; the ratios to the baseline of the
same run are what to compare between versions. Needs root."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from datapath import (BACKEND, SERVICES, World, stop_world,  # noqa: E402
                      unwireguard, wireguard)
from netns import Net  # noqa: E402
from ztna import wait_for  # noqa: E402
import conn_memory  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
def iperf(w, ns, host, reverse=False):
    args = ["iperf3", "-c", host, "-t", str(SECONDS), "-J"]
    if reverse:
        args.append("-R")
    p = w.run(args, ns=ns, check=False, timeout=SECONDS + 60)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]


def ping(w, ns, host):
    p = w.run(["ping", "-q", "-c", "100", "-i", "0.01", "-W", "2", host],
              ns=ns, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("rtt"):
            return float(line.split("=")[1].split("/")[1])  # avg ms
    return None


def measure(w, name, ns, host):
    up = iperf(w, ns, host)
    down = iperf(w, ns, host, reverse=True)
    rtt = ping(w, ns, host)
    return name, up, down, rtt


def main():
    if os.geteuid() != 0:
        sys.exit("make bench needs root (network namespaces, a TUN device)")
    net = Net(tag="bench")
    tmp = tempfile.mkdtemp(prefix="ztna-bench-")
    w = None
    rows = []
    try:
        w = World(net, tmp)
        vip = SERVICES["iperf"][0]
        rows.append(measure(w, "baseline (LAN, no tunnel)", w.conn_ns,
                            BACKEND))
        wg = wireguard(w, tmp)
        try:
            rows.append(measure(w, "wireguard-go", w.agent_ns, BACKEND))
        finally:
            unwireguard(w, wg)
        wait_for(lambda: w.path("iperf") == "direct", timeout=30, what="direct")
        rows.append(measure(w, "ztna direct path", w.agent_ns, vip))
        w.block_direct()
        wait_for(lambda: w.path("iperf") == "relay", timeout=30, what="relay")
        time.sleep(1)
        rows.append(measure(w, "ztna relay path", w.agent_ns, vip))
    finally:
        stop_world(w, net)
    base = rows[0]
    wgrow = rows[1]

    def mbit(v):
        return "%8.0f" % (v / 1e6) if v else "  failed"

    def ratio(v, b):
        return "%5.2f" % (v / b) if v and b else "    -"

    mem = conn_memory.measure(int(os.environ.get("BENCH_CLIENTS", "200")))
    out = {"seconds": SECONDS, "paths": [
        {"path": n, "up_bps": u, "down_bps": d, "rtt_ms": r}
        for n, u, d, r in rows], "intermediate_memory": mem}
    json_path = os.environ.get("BENCH_JSON", "build/bench.json")
    os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nztna bench (%d s per iperf3 run, this machine, this run)" %
          SECONDS)
    print("%-28s %9s %6s %9s %6s %9s" % ("path", "up Mbit/s", "/wg-go",
                                          "down Mb/s", "/wg-go", "rtt ms"))
    for name, up, down, rtt in rows:
        print("%-28s %9s %6s %9s %6s %9s" % (
            name, mbit(up), ratio(up, wgrow[1]), mbit(down),
            ratio(down, wgrow[2]), "%.3f" % rtt if rtt else "-"))
    print("\nintermediate memory: %d KB idle, %.1f KB per idle connection "
          "(%d clients connected and registered)" % (
              mem["idle_kb"], mem["per_connection_kb"], mem["clients"]))
    print("figures also in %s" % json_path)


if __name__ == "__main__":
    main()
