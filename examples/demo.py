#!/usr/bin/python3
"""make demo: the main job of ztna on this machine, in network namespaces.

An agent host behind a NAT, the intermediate on the "internet", a connector
behind another NAT with nginx, redis and a UDP echo next to it. Shows the
agent punching through both NATs and moving to the direct path, ping, curl
and redis-cli reaching the private services, then a firewall closing the
direct path and traffic falling back to the relay, with the metrics that
prove which path the bytes took; then tears everything down."""
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "test"
                       / "e2e"))
from datapath import SERVICES, World, sha256, stop_world  # noqa: E402
from netns import Net  # noqa: E402
from ztna import wait_for  # noqa: E402

def relayed(w):
    return w.inter.metrics().get("ztna_relay_bytes_total", 0)


def agent_log(w, words):
    log = w.procs["agent"].log
    log.flush()
    log.seek(0)
    for line in log.read().splitlines():
        if " web: " in line and any(k in line for k in words):
            print("  " + line.split(" agent ", 1)[-1])


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
        wait_for(lambda: w.path() == "direct", timeout=30,
                 what="the direct path")
        print("\nThe agent punched through both NATs (its log):")
        agent_log(w, ("punch", "path:"))
        before = relayed(w)
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
        print("\nBytes through the intermediate meanwhile: %d (the direct "
              "path carried the data)" % (relayed(w) - before))
        print("\nNow a firewall at the agent's NAT drops UDP to anything but "
              "the intermediate...", flush=True)
        w.block_direct()
        wait_for(lambda: w.path() == "relay", timeout=30,
                 what="the fall back to the relay")
        agent_log(w, ("path: relay", "next punch"))
        before = relayed(w)
        show("the same download, now through the relay",
             ["curl", "-s", "-o", os.path.join(tmp, "demo2.got"), "-w",
              "HTTP %{http_code}, %{size_download} bytes\\n",
              "http://%s/demo.bin" % SERVICES["web"][0]], w)
        print("Bytes through the intermediate: %d, inside the agent's own "
              "end-to-end connections to the connector, which the "
              "intermediate forwards without being able to read them"
              % (relayed(w) - before))
        print("\nThe intermediate's metrics:")
        for line in (w.inter.http("/metrics") or "").splitlines():
            if line.startswith(("ztna_active_connections",
                                "ztna_datagrams_relayed_total",
                                "ztna_relay_bytes_total",
                                "ztna_relay_sessions_active",
                                "ztna_relay_session_datagrams_total",
                                "ztna_registrations_total",
                                "ztna_service_connector_present")):
                print("  " + line)
        print("The connector's:")
        p = net.exec(w.conn_ns, ["curl", "-s",
                                 "http://127.0.0.1:9091/metrics"])
        for line in p.stdout.splitlines():
            if line.startswith(("ztna_connector_forwarded_packets_total",
                                "ztna_connector_tcp_sessions_total",
                                "ztna_connector_icmp_echo_total",
                                "ztna_connector_e2e_connections_total",
                                "ztna_connector_direct_connections_total",
                                "ztna_connector_direct_lost_total",
                                "ztna_connector_punches_total")):
                print("  " + line)
        print("\nDemo done; tearing down.")
    finally:
        stop_world(w, net)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
