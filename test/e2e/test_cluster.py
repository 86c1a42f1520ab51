"""A cluster of intermediates on Redis (docs/cluster.md): three
intermediates and a Redis server, each in a namespace of its own; the
agent connects to one, the connector to another, and the service's
packets cross the link between the two.

 agent 203.0.113.2 --+                +-- i1 198.51.100.2
 conn 203.0.113.18 --+-- inet ------- +-- i2 198.51.100.18
   |                 (router; no UDP  +-- i3 198.51.100.34
 backend 192.0.2.34   agent<->conn)   +-- redis 198.51.100.50:6379
"""
import os
import subprocess
import time

import pytest

from datapath import World, sha256, stop_world
from netns import Net
from ztna import Intermediate, wait_for

REDIS = "198.51.100.50"
NODES = {"i1": "198.51.100.2", "i2": "198.51.100.18", "i3": "198.51.100.34"}

# No UDP between the agent and the connector: the relay path only.
NO_DIRECT = """
table ip no_direct {
 chain no_direct_udp {
  type filter hook forward priority 0;
  ip saddr 203.0.113.0/28 ip daddr 203.0.113.16/28 meta l4proto udp drop
  ip saddr 203.0.113.16/28 ip daddr 203.0.113.0/28 meta l4proto udp drop
 }
}
"""


class ClusterWorld(World):
    def __init__(self, net, tmp):
        self.net, self.tmp = net, str(tmp)
        self.conn_extra = {}
        from ztna import Pki
        self.pki = Pki(os.path.join(self.tmp, "pki"))
        self.procs = {}
        self.inet = net.ns("inet")
        net.router(self.inet)
        self.agent_ns = net.ns("agent")
        self.conn_ns = net.ns("conn")
        self.backend_ns = net.ns("backend")
        self.redis_ns = net.ns("redis")
        self.node_ns = {}
        links = [(self.agent_ns, "203.0.113.1/28", "203.0.113.2/28"),
                 (self.conn_ns, "203.0.113.17/28", "203.0.113.18/28"),
                 (self.redis_ns, "198.51.100.49/28", REDIS + "/28")]
        for name, addr in NODES.items():
            self.node_ns[name] = net.ns(name)
            gw = addr.rsplit(".", 1)[0] + "." + str(int(addr.rsplit(".", 1)[1]) - 1)
            links.append((self.node_ns[name], gw + "/28", addr + "/28"))
        for ns, inet_addr, addr in links:
            net.link(self.inet, inet_addr, ns, addr)
            net.route(ns, "default", inet_addr.split("/")[0])
        net.link(self.conn_ns, "192.0.2.33/28", self.backend_ns,
                 "192.0.2.34/28")
        net.exec(self.inet, ["nft", "-f", "-"], input=NO_DIRECT)
        self.files = os.path.join(self.tmp, "www")
        os.makedirs(self.files, mode=0o755, exist_ok=True)
        self.start_backends()
        self.certs()
        self.start_redis()
        self.inters = {}
        for name in NODES:
            self.start_node(name)
        self.inter = self.inters["i1"]
        self.conn_extra = {"intermediate_server": {"host": NODES["i2"],
                                                   "port": 4433}}
        self.start_connector()
        self.agent = self.start_agent("agent", self.agent_ns, "alice",
                                      extra={"server": NODES["i1"] +
                                             ":4433"})

    def start_redis(self):
        self.procs["redis-registry"] = self.net.popen(
            self.redis_ns, ["redis-server", "--bind", REDIS, "--port", "6379",
                            "--protected-mode", "no", "--save", "",
                            "--appendonly", "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL)
        wait_for(lambda: self.redis("PING") == "PONG", what="redis")

    def redis(self, *args):
        return self.net.exec(self.redis_ns, ["redis-cli", "-h", REDIS] +
                             list(args), check=False).stdout.strip()

    def start_node(self, name, creds=None):
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        self.inters[name] = Intermediate(
            self.pki, ns=self.node_ns[name], logdir=d, name=name,
            creds=creds,
            extra=("--cluster-redis", REDIS + ":6379", "--cluster-node", name,
                   "--cluster-advertise", NODES[name] + ":4433"))
        return self.inters[name]

    def node_metric(self, name, metric):
        return self.inters[name].metrics().get(metric, 0)

    def stop(self):
        for name, i in self.inters.items():
            if i is not self.inter:
                i.stop()
        World.stop(self)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces and TUN devices")
    net = Net(tag="cl")
    w = None
    try:
        w = ClusterWorld(net, tmp_path_factory.mktemp("cluster"))
        yield w
    finally:
        stop_world(w, net)


def test_agent_and_connector_on_different_intermediates(cluster):
    w = cluster
    # The registry knows where the service is, and every member.
    wait_for(lambda: w.redis("GET", "ztna:svc:web").startswith("1 i2 "),
             what="web's registry entry")
    for name, addr in NODES.items():
        assert w.redis("GET", "ztna:node:" + name).startswith(
            "1 %s:4433 " % addr)
    path = w.make_file("cl-10m", 10 << 20)
    out = os.path.join(w.tmp, "cl-10m.out")
    wait_for(lambda: w.run(["curl", "-s", "-m", "5", "-o", "/dev/null",
                            "http://10.100.0.2/"], check=False).returncode
             == 0, timeout=60, what="web through the cluster")
    w.run(["curl", "-sf", "-m", "120", "-o", out,
           "http://10.100.0.2/cl-10m"])
    assert sha256(out) == sha256(path)
    assert w.path("web") == "relay"
    # Through i1's link to i2: the session was made at i2 for i1.
    assert w.node_metric("i1", "ztna_cluster_sessions_forwarded_total") >= 1
    assert w.node_metric("i2", "ztna_cluster_sessions_for_peers_total") >= 1
    assert w.node_metric("i1", "ztna_cluster_peer_datagrams_total") > 7000
    assert w.node_metric("i2", "ztna_cluster_peer_datagrams_total") > 100
    assert w.node_metric("i3", "ztna_cluster_sessions_for_peers_total") == 0
    assert w.node_metric("i1", "ztna_cluster_redis_up") == 1
