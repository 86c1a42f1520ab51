#!/usr/bin/python3
"""make demo: the main job of ztna on this machine, in network namespaces.

An agent host behind a NAT, the intermediate on the "internet", a connector
behind another NAT with nginx, redis and a UDP echo next to it. Shows ping,
curl and redis-cli reaching the private services through the tunnel, prints
the metrics that prove the path, and tears everything down."""
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "test"
                       / "e2e"))
from datapath import SERVICES, World, sha256  # noqa: E402
from netns import Net  # noqa: E402


def show(title, cmd, w, ns=None):
    print("\n$ " + " ".join(cmd) + "    # " + title, flush=True)
    p = w.run(cmd, ns=ns, check=False)
    print((p.stdout + p.stderr).rstrip(), flush=True)
    return p


def main():
    if os.geteuid() != 0:
        sys.exit("make demo needs root (network namespaces and a TUN device)")
    net = Net(tag="demo")
    tmp = tempfile.mkdtemp(prefix="ztna-demo-")
    w = None
    try:
        print("Building: agent host 192.0.2.2 behind NAT 198.51.100.2, "
              "intermediate 198.51.100.10/203.0.113.10,\nconnector 192.0.2.18 "
              "behind NAT 203.0.113.2, backends on 192.0.2.34 "
              "(nginx, redis, UDP echo)...", flush=True)
        w = World(net, tmp)
        print("Up. Services in the agent's TUN: " + ", ".join(
            "%s=%s" % (k, v[0]) for k, v in SERVICES.items()), flush=True)
        show("only the virtual IPs go into the tunnel",
             ["ip", "route", "show", "dev", "ztna0"], w)
        show("ICMP, answered by the connector",
             ["ping", "-c", "3", SERVICES["web"][0]], w)
        src = w.make_file("demo.bin", 5 << 20)
        show("HTTP from nginx behind the connector",
             ["curl", "-s", "-o", os.path.join(tmp, "demo.got"), "-w",
              "HTTP %{http_code}, %{size_download} bytes, "
              "%{speed_download} B/s\\n",
              "http://%s/demo.bin" % SERVICES["web"][0]], w)
        print("SHA-256 matches: %s" % (sha256(src) == sha256(
            os.path.join(tmp, "demo.got"))))
        w.run(["redis-cli", "-h", SERVICES["redis"][0], "SET", "greeting",
               "hello through ztna"])
        show("redis through the tunnel",
             ["redis-cli", "-h", SERVICES["redis"][0], "GET", "greeting"], w)
        print("\nThe intermediate's metrics (the path the bytes took):")
        for line in (w.inter.http("/metrics") or "").splitlines():
            if line.startswith(("ztna_active_connections",
                                "ztna_datagrams_relayed_total",
                                "ztna_relay_bytes_total",
                                "ztna_registrations_total",
                                "ztna_service_connector_present")):
                print("  " + line)
        print("The connector's:")
        p = net.exec(w.conn_ns, ["curl", "-s",
                                 "http://127.0.0.1:9091/metrics"])
        for line in p.stdout.splitlines():
            if line.startswith(("ztna_connector_forwarded_packets_total",
                                "ztna_connector_tcp_sessions_total",
                                "ztna_connector_icmp_echo_total")):
                print("  " + line)
        print("\nDemo done; tearing down.")
    finally:
        if w:
            w.stop()
        net.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
