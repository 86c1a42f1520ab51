"""The cluster topology of the cluster e2e tests and make demo-cluster:
three intermediates and a Redis server, each in a namespace of its own,
an agent and a connector that find the intermediates by one name with
three addresses (their namespaces' /etc/hosts), in an order of their own:
the agent i1, i3, i2; the connector i2, i1, i3.

 agent 203.0.113.2 --+                +-- i1 198.51.100.2
 conn 203.0.113.18 --+-- inet ------- +-- i2 198.51.100.18
   |                 (router; no UDP  +-- i3 198.51.100.34
 backend 192.0.2.34   agent<->conn)   +-- redis 198.51.100.50:6379
"""
import os
import shutil
import signal
import subprocess

from datapath import World
from ztna import Intermediate, Pki, wait_for

REDIS = "198.51.100.50"
NODES = {"i1": "198.51.100.2", "i2": "198.51.100.18", "i3": "198.51.100.34"}
NAME = "relay.cluster.test"

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
        self.hosts(self.agent_ns, ("i1", "i3", "i2"))
        self.hosts(self.conn_ns, ("i2", "i1", "i3"))
        self.files = os.path.join(self.tmp, "www")
        os.makedirs(self.files, mode=0o755, exist_ok=True)
        self.start_backends()
        self.certs()
        self.start_redis()
        self.inters = {}
        for name in NODES:
            self.start_node(name)
        self.inter = self.inters["i1"]
        self.conn_extra = {"intermediate_server": {"host": NAME,
                                                   "port": 4433}}
        self.start_connector()
        self.agent = self.start_agent("agent", self.agent_ns, "alice",
                                      extra={"server": NAME + ":4433"})

    def hosts(self, ns, order):
        """The name's addresses in ns, in that order (ip netns exec
        mounts /etc/netns/<ns>/hosts over /etc/hosts)."""
        d = "/etc/netns/" + ns
        os.makedirs(d, exist_ok=True)
        with open(d + "/hosts", "w") as f:
            f.write("127.0.0.1 localhost\n")
            for n in order:
                f.write("%s %s\n" % (NODES[n], NAME))

    def kill_node(self, name):
        i = self.inters[name]
        i.proc.send_signal(signal.SIGKILL)
        i.proc.wait()

    def restart_node(self, name):
        i = self.inters[name]
        return self.start_node(name, creds=(i.cert, i.key))

    def on_node(self, name, metric):
        """1 when the node holds a connection that registered: the
        agent's or the connector's, by the registrations it counted."""
        return self.node_metric(name, metric)

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
        """i3 knows Redis by a name (its namespace's /etc/hosts), which it
        looks up off the loop; the others by its address."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        redis = REDIS
        if name == "i3":
            redis = "redis.cluster.test"
            os.makedirs("/etc/netns/" + self.node_ns[name], exist_ok=True)
            with open("/etc/netns/%s/hosts" % self.node_ns[name], "w") as f:
                f.write("127.0.0.1 localhost\n%s %s\n" % (REDIS, redis))
        self.inters[name] = Intermediate(
            self.pki, ns=self.node_ns[name], logdir=d, name=name,
            creds=creds,
            extra=("--cluster-redis", redis + ":6379", "--cluster-node", name,
                   "--cluster-advertise", NODES[name] + ":4433"))
        return self.inters[name]

    def node_metric(self, name, metric):
        return self.inters[name].metrics().get(metric, 0)

    def stop(self):
        for name, i in self.inters.items():
            if i is not self.inter:
                i.stop()
        World.stop(self)

    def agent_node(self):
        """The intermediate the agent's connection is at, by the address
        its log says it connected to last."""
        return self.node_of(self.procs["agent"].log.name)

    def node_of(self, log):
        with open(log) as f:
            text = f.read()
        last, where = -1, None
        for n, a in NODES.items():
            k = text.rfind("connected to %s:4433" % a)
            if k > last:
                last, where = k, n
        return where


def cleanup_hosts(net):
    """Removes the /etc/netns files of net's namespaces."""
    for ns in net.namespaces:
        shutil.rmtree("/etc/netns/" + ns, ignore_errors=True)


def zload_open(pki, port, agent, service, n):
    """n agents (build/zload) at the intermediate on loopback port, each
    registered for service and asking for a relay session; returns how
    many got one (OPENED)."""
    from ztna import Zload
    z = Zload(pki.ca, agent, port, service, n)
    z.quit()
    return int(z.stages["opened"][2])
