"""The data-path topology of testing.md, with real servers and the three
applets, for the end-to-end tests and for make demo.

 agent 192.0.2.2 -- nat-a -- inet (intermediate 198.51.100.10 / 203.0.113.10)
   -- nat-c -- conn 192.0.2.18 / 192.0.2.33 -- backend 192.0.2.34
"""
import hashlib
import os
import subprocess
import sys
import time

import pytest

from netns import Net
from ztna import ZCLIENT, ZTNA, Intermediate, Pki, wait_for  # noqa: F401

BACKEND = "192.0.2.34"
SERVICES = {  # id: (virtual IP, backend, protocol)
    "web": ("10.100.0.2", BACKEND + ":80", "tcp"),
    "redis": ("10.100.0.3", BACKEND + ":6379", "tcp"),
    "echo": ("10.100.0.4", BACKEND + ":7", "udp"),
    "iperf": ("10.100.0.5", BACKEND + ":5201", "both"),
    "closed": ("10.100.0.6", BACKEND + ":81", "tcp"),  # nothing listens
    "hc": ("10.100.0.7", BACKEND + ":9000", "tcp"),  # HALF_CLOSE below
    # IPv6 virtual IPs in front of the same (IPv4) backends.
    "web6": ("fd10:100::2", BACKEND + ":80", "tcp"),
    "echo6": ("fd10:100::4", BACKEND + ":7", "udp"),
    "closed6": ("fd10:100::6", BACKEND + ":81", "tcp"),
}

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 7))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(d, a)
"""

# Reads a request until the client's FIN, then answers 100,000 copies of
# the request's first byte and closes: a client that half-closes must get
# every byte, and nobody else any. A request of "H..." is held open,
# unanswered, for a minute instead.
HALF_CLOSE = r"""
import socket, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000))
s.listen(128)
print("ready", flush=True)
def serve(c):
    with c:
        req = b""
        while True:
            d = c.recv(4096)
            if not d:
                break
            req += d
        if req[:1] == b"H":
            time.sleep(60)
        elif req:
            c.sendall(req[:1] * 100000)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def download_across(world, name, rate, after, action):
    """Downloads name from the web service at rate, and runs action once
    more than after bytes have arrived. Returns curl's exit code, its
    stderr, the output file and how much had arrived at the action."""
    out = os.path.join(world.tmp, name + ".got")
    p = world.net.popen(world.agent_ns,
                        ["curl", "-s", "-S", "-m", "300", "--limit-rate",
                         rate, "-o", out, "http://%s/%s"
                         % (SERVICES["web"][0], name)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(out) and
                 os.path.getsize(out) > after, timeout=120,
                 what="the download under way")
        at = os.path.getsize(out)
        action()
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err, out, at


class World:
    def __init__(self, net, tmp, nat_a="easy", nat_c="easy", inter_env=None,
                 inter_extra=(), agent_extra=None, conn_extra=None):
        """nat_a, nat_c: the agent's and the connector's NAT: "easy"
        (masquerade, dropping unsolicited packets to itself), "open"
        (plain masquerade, no input filter), "hard" (endpoint-dependent)
        or "none" (a plain router: the host's own address is public)."""
        self.net, self.tmp = net, str(tmp)
        self.nat_kinds = (nat_a, nat_c)
        self.conn_extra = conn_extra or {}
        self.pki = Pki(os.path.join(self.tmp, "pki"))
        self.procs = {}
        self.agent_ns = net.ns("agent")
        self.nat_a = net.ns("nat-a")
        self.inet = net.ns("inet")
        self.nat_c = net.ns("nat-c")
        self.conn_ns = net.ns("conn")
        self.backend_ns = net.ns("backend")
        net.link(self.agent_ns, "192.0.2.2/28", self.nat_a, "192.0.2.1/28")
        _, self.nat_a_out = net.link(self.inet, "198.51.100.10/24",
                                     self.nat_a, "198.51.100.2/24")
        _, self.nat_c_out = net.link(self.inet, "203.0.113.10/24",
                                     self.nat_c, "203.0.113.2/24")
        net.link(self.conn_ns, "192.0.2.18/28", self.nat_c, "192.0.2.17/28")
        net.link(self.conn_ns, "192.0.2.33/28", self.backend_ns,
                 "192.0.2.34/28")
        net.route(self.agent_ns, "default", "192.0.2.1")
        net.route(self.conn_ns, "default", "192.0.2.17")
        # The "internet" routes between the NATs' outside addresses, so the
        # agent and the connector can reach each other's public address.
        net.router(self.inet)
        net.route(self.nat_a, "default", "198.51.100.10")
        net.route(self.nat_c, "default", "203.0.113.10")
        for ns, out, kind, lan, gw in (
                (self.nat_a, self.nat_a_out, nat_a, "192.0.2.0/28",
                 "198.51.100.2"),
                (self.nat_c, self.nat_c_out, nat_c, "192.0.2.16/28",
                 "203.0.113.2")):
            if kind == "none":
                net.nat(ns, out, action="accept")
                net.route(self.inet, lan, gw)
            else:
                net.nat(ns, out, hard=(kind == "hard"),
                        firewall=(kind != "open"))
        self.files = os.path.join(self.tmp, "www")
        os.makedirs(self.files, mode=0o755, exist_ok=True)
        self.start_backends()
        self.certs()
        self.inter = Intermediate(self.pki, ns=self.inet, logdir=self.tmp,
                                  extra=("--diag-port", "4435") +
                                  tuple(inter_extra),
                                  env=inter_env)
        self.start_connector()
        self.agent = self.start_agent("agent", self.agent_ns, "alice",
                                      extra=agent_extra)

    # --- servers -------------------------------------------------------------
    def start_backends(self):
        net, ns = self.net, self.backend_ns
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write("""user root;
daemon off;
master_process off;
pid %(t)s/nginx.pid;
error_log %(t)s/nginx-error.log;
events { worker_connections 256; }
http {
  access_log %(t)s/nginx-access.log;
  sendfile on;
  server {
    listen %(b)s:80;
    root %(t)s/www;
    location = /whoami { return 200 "$remote_addr:$remote_port\\n"; }
  }
}
""" % {"t": self.tmp, "b": BACKEND})
        self.procs["nginx"] = net.popen(ns, ["nginx", "-c", conf],
                                        stderr=subprocess.DEVNULL)
        self.procs["redis"] = net.popen(
            ns, ["redis-server", "--bind", BACKEND, "--port", "6379",
                 "--protected-mode", "no", "--save", "", "--appendonly",
                 "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL)
        echo = net.popen(ns, [sys.executable, "-c", UDP_ECHO, BACKEND],
                         stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        self.procs["echo"] = echo
        hc = net.popen(ns, [sys.executable, "-c", HALF_CLOSE, BACKEND],
                       stdout=subprocess.PIPE, text=True)
        assert hc.stdout.readline().strip() == "ready"
        self.procs["halfclose"] = hc
        self.procs["iperf3"] = net.popen(
            ns, ["iperf3", "-s", "-B", BACKEND, "-p", "5201"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: net.exec(self.conn_ns, [
            "curl", "-s", "-o", "/dev/null", "-m", "2",
            "http://%s/" % BACKEND], check=False).returncode == 0,
            what="nginx")
        wait_for(lambda: net.exec(self.conn_ns, [
            "redis-cli", "-h", BACKEND, "ping"], check=False).stdout.strip()
            == "PONG", what="redis")

    def certs(self):
        args = []
        for s in SERVICES:
            args += ["--service", s]
        self.conn_cert = self.pki.issue("connector", "conn", *args)
        self.agent_certs = {
            "alice": self.pki.issue("agent", "alice", *args),
            "bob": self.pki.issue("agent", "bob", *args),
            "eve": self.pki.issue("agent", "eve", "--service", "other"),
        }

    def start_connector(self):
        import json
        cfg = {
            "intermediate_server": {"host": "203.0.113.10", "port": 4433},
            "services": [{"id": k, "backend": v[1], "protocol": v[2]}
                         for k, v in SERVICES.items()],
            "cert": self.conn_cert[0], "key": self.conn_cert[1],
            "ca_cert": self.pki.ca, "metrics_port": 9091,
        }
        cfg.update(self.conn_extra)
        path = os.path.join(self.tmp, "connector.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.conn_log = open(os.path.join(self.tmp, "connector.log"), "w+")
        wrap = os.environ.get("ZTNA_CONNECTOR_WRAP", "").split()
        self.procs["connector"] = self.net.popen(
            self.conn_ns, wrap + [ZTNA, "connector", "-c", path, "-v"],
            stdout=self.conn_log, stderr=self.conn_log)
        wait_for(lambda: self.metric(self.conn_ns, 9091, 'ztna_connector_'
                                     'service_up{service="web"}') == 1,
                 what="connector registered")

    def start_agent(self, name, ns, who, tunnel="100.64.0.1", port=9092,
                    services=None, extra=None, metrics_from=None, args=()):
        """extra: more configuration keys; metrics_from: (namespace,
        address) to reach its metrics from, when not its own loopback;
        args: more command-line options."""
        import json
        key = who
        services = services or {k: v[0] for k, v in SERVICES.items()}
        cfg = {"server": "198.51.100.10:4433",
               "services": [{"id": k, "virtual_ip": v}
                            for k, v in services.items()],
               "cert": self.agent_certs[key][0],
               "key": self.agent_certs[key][1], "ca_cert": self.pki.ca,
               "tun_name": "ztna0", "tunnel_addr": tunnel,
               "metrics_port": port}
        cfg.update(extra or {})
        path = os.path.join(self.tmp, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        log = open(os.path.join(self.tmp, name + ".log"), "w+")
        wrap = os.environ.get("ZTNA_AGENT_WRAP", "").split()
        p = self.net.popen(ns, wrap + [ZTNA, "agent", "-c", path, "-v"] +
                           list(args), stdout=log, stderr=log)
        self.procs[name] = p
        p.log = log
        p.ns = ns
        p.port = port
        m_ns, m_host = metrics_from or (ns, "127.0.0.1")
        wait_for(lambda: self.metric(m_ns, port, "ztna_agent_connected",
                                     host=m_host) == 1,
                 what="agent %s connected" % name)
        return p

    # --- helpers -----------------------------------------------------------------
    def host_service(self):
        """The service whose end-to-end connection the agent's other
        services of the connector ride on (protocol.md 10): the one with a
        connection of its own."""
        for s in SERVICES:
            if self.metric(self.agent_ns, 9092,
                           'ztna_agent_connection_shared{service="%s"}'
                           % s) == 0 and self.metric(
                    self.agent_ns, 9092,
                    'ztna_agent_connection{service="%s",state="up"}' % s) \
                    == 1:
                return s
        raise AssertionError("no service has a connection of its own")

    UDP_GUARD = """
table ip udp_guard {
 chain fwd_filter {
  type filter hook forward priority 0;
  meta l4proto udp ip daddr != 198.51.100.10 ip saddr != 198.51.100.10 drop
 }
}
"""

    def block_direct(self):
        """A firewall at the agent's NAT: UDP only to and from the
        intermediate, so no direct path can exist."""
        self.net.exec(self.nat_a, ["nft", "-f", "-"], input=self.UDP_GUARD)

    def unblock_direct(self):
        self.net.exec(self.nat_a, ["nft", "delete", "table", "ip",
                                   "udp_guard"], check=False)

    def path(self, service="web", name="agent"):
        """The path the agent's traffic to service takes, by its metrics."""
        p = self.procs[name]
        for path in ("direct", "relay", "punching", "validating"):
            if self.metric(p.ns, p.port, 'ztna_agent_path{service="%s",'
                           'path="%s"}' % (service, path)) == 1:
                return path
        return None

    def metric(self, ns, port, name, host="127.0.0.1"):
        p = self.net.exec(ns, ["curl", "-s", "-m", "5",
                               "http://%s:%d/metrics" % (host, port)],
                          check=False)
        for line in p.stdout.splitlines():
            if line.startswith(name + " "):
                return int(line.rsplit(" ", 1)[1])
        return None

    def run(self, cmd, ns=None, **kw):
        return self.net.exec(ns or self.agent_ns, cmd, **kw)

    def make_file(self, name, size):
        path = os.path.join(self.files, name)
        with open(path, "wb") as f:
            left = size
            while left:
                k = min(left, 1 << 20)
                f.write(os.urandom(k))
                left -= k
        os.chmod(path, 0o644)
        return path

    def stop(self):
        """SIGTERM to every daemon still running; each must exit 0 (a
        crash, a sanitizer's report or a handle left open at exit makes it
        fail) within a generous bound."""
        running = [(n, p) for n, p in self.procs.items()
                   if n.startswith(("agent", "connector"))
                   and p.poll() is None]
        for _, p in running:
            p.terminate()
        inter_running = self.inter.proc.poll() is None
        self.inter.stop()
        bad = []
        for name, p in running:
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "still running after 30 s"
            if rc != 0:
                bad.append("%s: exit %s" % (name, rc))
        if inter_running and self.inter.proc.returncode != 0:
            bad.append("intermediate: exit %s" % self.inter.proc.returncode)
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        assert not bad, "daemons did not stop cleanly: " + "; ".join(bad)


WG_PORT = 51820


def wireguard(w, tmp):
    """wireguard-go (Debian's) in the agent's and the connector's
    namespaces, through the same NATs (a port forward on the connector's
    NAT instead of a punch), routing the backend; the processes to stop
    with unwireguard. The userspace tunnel make bench compares with."""
    net = w.net
    keys = {}
    for side in ("a", "c"):
        priv = net.exec(w.agent_ns, ["wg", "genkey"]).stdout.strip()
        pub = net.exec(w.agent_ns, ["wg", "pubkey"], input=priv).stdout.strip()
        path = os.path.join(tmp, "wg-%s.key" % side)
        with open(path, "w") as f:
            f.write(priv + "\n")
        os.chmod(path, 0o600)
        keys[side] = (path, pub)
    procs = []
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
    # (one name per side: wireguard-go's control socket is named after the
    # interface, in a /var/run that namespaces share)
    for ns, dev in ((w.agent_ns, "wga0"), (w.conn_ns, "wgc0")):
        procs.append(net.popen(ns, ["wireguard-go", dev], env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL))
        wait_for(lambda ns=ns, dev=dev: net.exec(
            ns, ["ip", "link", "show", dev], check=False).returncode == 0,
            what="wireguard-go's interface")
    # the connector's side: its NAT forwards the port, it routes to the
    # backend from its own address, as the ztna connector does
    net.exec(w.nat_c, ["nft", "-f", "-"], input=(
        "table ip wgfwd {\n chain pre {\n"
        "  type nat hook prerouting priority -100;\n"
        "  udp dport %d dnat to 192.0.2.18:%d\n }\n}\n" % (WG_PORT, WG_PORT)))
    net.exec(w.conn_ns, ["wg", "set", "wgc0", "private-key", keys["c"][0],
                         "listen-port", str(WG_PORT), "peer", keys["a"][1],
                         "allowed-ips", "10.200.0.1/32"])
    net.exec(w.conn_ns, ["ip", "addr", "add", "10.200.0.2/24", "dev", "wgc0"])
    net.exec(w.conn_ns, ["ip", "link", "set", "wgc0", "up"])
    net.exec(w.conn_ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    net.exec(w.conn_ns, ["nft", "-f", "-"], input=(
        "table ip wgnat {\n chain post {\n"
        "  type nat hook postrouting priority 100;\n"
        "  ip saddr 10.200.0.0/24 ip daddr %s masquerade\n }\n}\n" % BACKEND))
    net.exec(w.agent_ns, ["wg", "set", "wga0", "private-key", keys["a"][0],
                          "peer", keys["c"][1], "allowed-ips",
                          "10.200.0.2/32,%s/32" % BACKEND, "endpoint",
                          "203.0.113.2:%d" % WG_PORT,
                          "persistent-keepalive", "25"])
    net.exec(w.agent_ns, ["ip", "addr", "add", "10.200.0.1/24", "dev", "wga0"])
    net.exec(w.agent_ns, ["ip", "link", "set", "wga0", "up"])
    net.exec(w.agent_ns, ["ip", "route", "add", BACKEND + "/32", "dev",
                          "wga0"])
    wait_for(lambda: net.exec(w.agent_ns, ["ping", "-c", "1", "-W", "1",
                                           BACKEND], check=False)
             .returncode == 0, what="the backend through wireguard-go")
    return procs


def unwireguard(w, procs):
    w.net.exec(w.agent_ns, ["ip", "route", "del", BACKEND + "/32"],
               check=False)
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def stop_world(w, net):
    """Stops w (None: never made; its daemons must exit 0) and removes
    net's namespaces, those even when a daemon did not stop cleanly."""
    try:
        if w:
            w.stop()
    finally:
        net.cleanup()


def world_fixture(tag, **kw):
    """A module-scoped pytest fixture: one World for the module's tests,
    in namespaces tagged tag, stopped (every daemon must exit 0) and
    removed afterwards, pass or fail. kw goes to World."""
    @pytest.fixture(scope="module")
    def world(tmp_path_factory):
        if os.geteuid() != 0:
            pytest.skip("needs root for namespaces and TUN devices")
        net = Net(tag=tag)
        w = None
        try:
            w = World(net, tmp_path_factory.mktemp(tag), **kw)
            yield w
        finally:
            stop_world(w, net)
    return world
