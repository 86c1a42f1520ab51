#!/usr/bin/python3
"""make demo-cluster: a cluster of three intermediates on Redis losing a
member, in network namespaces (docs/cluster.md).

The agent reaches the intermediates by one name with three addresses and
lands on i1; the connector lands on i2. The demo shows the registry in
Redis, a download whose packets cross i1's link to i2, then kills i1 (kill
-9) in the middle of a second download: the agent moves to i3, its
end-to-end connection to the connector moves to a session through i3's
link to i2, and the download completes intact. Then it tears everything
down."""
import json
import os
import pathlib
import sys
import tempfile
import shutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "test"
                       / "e2e"))
from cluster import NODES, ClusterWorld, cleanup_hosts  # noqa: E402
from datapath import download_across, sha256, stop_world  # noqa: E402
from netns import Net  # noqa: E402
from ztna import wait_for  # noqa: E402


def show(title, cmd, w, ns=None):
    print("\n$ " + " ".join(cmd) + "    # " + title, flush=True)
    p = w.run(cmd, ns=ns, check=False)
    print((p.stdout + p.stderr).rstrip(), flush=True)
    return p


def metrics(w, node, names):
    for line in (w.inters[node].http("/metrics") or "").splitlines():
        if line.startswith(names):
            print("  %s: %s" % (node, line))


def agent_log(w, words):
    with open(w.procs["agent"].log.name) as f:
        for line in f:
            if any(k in line for k in words):
                print("  " + line.rstrip().split(" agent ", 1)[-1])


def main():
    if os.geteuid() != 0:
        sys.exit("make demo-cluster needs root (network namespaces, TUN)")
    net = Net(tag="demo-cl")
    tmp = tempfile.mkdtemp(prefix="ztna-demo-cluster-")
    w = None
    try:
        print("Building: intermediates i1 %s, i2 %s, i3 %s, Redis, an agent "
              "and a connector\nthat know them as relay.cluster.test..."
              % tuple(NODES.values()), flush=True)
        w = ClusterWorld(net, tmp)
        wait_for(lambda: w.redis("GET", "ztna:svc:web").startswith("1 i2 "),
                 what="the registry")
        print("Up: the agent at %s, the connector at %s."
              % (w.agent_node(), w.node_of(w.conn_log.name)))
        show("the registry: members and where each service's connector is",
             ["redis-cli", "-h", "198.51.100.50", "--scan", "--pattern",
              "ztna:*"], w, ns=w.redis_ns)
        show("one entry", ["redis-cli", "-h", "198.51.100.50", "GET",
                           "ztna:svc:web"], w, ns=w.redis_ns)
        src = w.make_file("demo.bin", 5 << 20)
        show("HTTP from nginx behind the connector, through i1 and i2",
             ["curl", "-s", "-o", os.path.join(tmp, "demo.got"), "-w",
              "HTTP %{http_code}, %{size_download} bytes\\n",
              "http://10.100.0.2/demo.bin"], w)
        print("SHA-256 matches: %s" % (sha256(src) == sha256(
            os.path.join(tmp, "demo.got"))))
        print("\nThe members' cluster metrics:")
        for n in NODES:
            metrics(w, n, ("ztna_cluster_sessions_forwarded_total",
                           "ztna_cluster_sessions_for_peers_total",
                           "ztna_cluster_peer_links ",
                           "ztna_cluster_redis_up"))
        print("\ni1's status, cluster part:")
        print(json.dumps(json.loads(w.inters["i1"].http("/v1/status"))
                         ["cluster"], indent=1))
        print("\nNow a 100 MB download at 8 MB/s, and kill -9 of i1 once "
              "20 MB have arrived...", flush=True)
        big = w.make_file("big.bin", 100 << 20)
        rc, err, out, at = download_across(w, "big.bin", "8M", 20 << 20,
                                           lambda: w.kill_node("i1"))
        print("curl exit %d after i1 died at %d MB; SHA-256 matches: %s"
              % (rc, at >> 20, sha256(out) == sha256(big)))
        print("The agent meanwhile (its log):")
        agent_log(w, ("connection lost", "trying relay.cluster.test",
                      "connected to", "carries the connection"))
        print("\nNow the agent is at %s; the session crosses i3's link:"
              % w.agent_node())
        for n in ("i2", "i3"):
            metrics(w, n, ("ztna_cluster_sessions_forwarded_total",
                           "ztna_cluster_sessions_for_peers_total"))
        print("\nDemo done; tearing down.")
    finally:
        try:
            stop_world(w, net)
        finally:
            cleanup_hosts(net)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
