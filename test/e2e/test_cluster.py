"""A cluster of intermediates on Redis (docs/cluster.md), on the
topology of cluster.py: the agent connects to one intermediate, the
connector to another, and the service's packets cross the link between
the two; members die and come back, Redis restarts, entries are forged.
"""
import json
import os
import signal
import time

import pytest

from cluster import (NAME, NO_DIRECT, NODES, REDIS, ClusterWorld,
                     cleanup_hosts, zload_open)
from datapath import SERVICES, download_across, sha256, stop_world
from netns import Net
from ztna import Intermediate, Pki, rss_kb, wait_for

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
        try:
            stop_world(w, net)
        finally:
            cleanup_hosts(net)


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
    # Not direct: the firewall keeps UDP between agent and connector out
    # (the agent may be trying a punch meanwhile: its signaling crosses
    # the members too, test_direct_path_across_members).
    assert w.path("web") in ("relay", "punching")
    # Through i1's link to i2: the session was made at i2 for i1.
    assert w.node_metric("i1", "ztna_cluster_sessions_forwarded_total") >= 1
    assert w.node_metric("i2", "ztna_cluster_sessions_for_peers_total") >= 1
    assert w.node_metric("i1", "ztna_cluster_peer_datagrams_total") > 7000
    assert w.node_metric("i2", "ztna_cluster_peer_datagrams_total") > 100
    assert w.node_metric("i3", "ztna_cluster_sessions_for_peers_total") == 0
    assert w.node_metric("i1", "ztna_cluster_redis_up") == 1
    # The status API says the same (docs/api.md).
    doc = json.loads(w.inters["i1"].http("/v1/status"))["cluster"]
    assert doc["node"] == "i1" and doc["redis_up"] is True
    assert doc["sessions_forwarded"] >= 1
    assert {"node": "i2", "address": NODES["i2"] + ":4433",
            "direction": "out", "up": True} == {
        k: v for k, v in doc["links"][0].items() if k != "rtt_us"}
    doc = json.loads(w.inters["i2"].http("/v1/status"))["cluster"]
    assert doc["services_held"] == len(SERVICES)
    assert [ln["direction"] for ln in doc["links"]] == ["in"]



@pytest.mark.skipif(bool(os.environ.get("ZTNA_SAN_REPORTS")),
                    reason="ASan keeps freed memory in quarantine, so RSS "
                    "says nothing there; in that pass LeakSanitizer checks "
                    "the same at exit")
def test_members_memory_flat_over_volume(cluster):
    """400 MB through the link between the agent's member (i1) and the
    connector's (i2): neither grows by more than 16 MB (a buffer kept per
    forwarded DATAGRAM would grow by about the volume)."""
    w = cluster
    w.make_file("cl-100m", 100 << 20)
    url = "http://10.100.0.2/cl-100m"

    def fetch():
        p = w.run(["curl", "-s", "-S", "-m", "120", "-o", "/dev/null", "-w",
                   "%{size_download}", url], check=False, timeout=150)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    pids = {n: w.inters[n].proc.pid for n in ("i1", "i2")}
    fetch()  # warm up: pools and buffers settle
    before = {n: rss_kb(p) for n, p in pids.items()}
    fwd = w.node_metric("i1", "ztna_cluster_peer_datagrams_total")
    assert sum(fetch() for _ in range(4)) == 4 * (100 << 20)
    after = {n: rss_kb(p) for n, p in pids.items()}
    # It went through the link (about 290,000 DATAGRAMs at i1).
    assert w.node_metric("i1", "ztna_cluster_peer_datagrams_total") - fwd \
        > 200000
    for n in pids:
        assert after[n] - before[n] <= 16 * 1024, \
            "%s RSS grew by %d kB over 400 MB" % (n, after[n] - before[n])


def download_through_a_kill(w, node):
    """A 100 MB download at 8 MB/s, and kill -9 of node once 20 MB have
    arrived: it must complete intact in the same TCP connection (a reset
    fails curl; a second backend connection shows in the connector's
    count) while the agent and the connector move to other members."""
    src = w.make_file("hundred-%s.bin" % node, 100 << 20)
    sessions = w.metric(w.conn_ns, 9091, "ztna_connector_tcp_sessions_total")
    rc, err, out, at = download_across(w, os.path.basename(src), "8M",
                                       20 << 20, lambda: w.kill_node(node))
    assert rc == 0, err
    assert at < 100 << 20, "the download ended before the kill"
    assert sha256(out) == sha256(src)
    os.unlink(out)
    assert w.metric(w.conn_ns, 9091,
                    "ztna_connector_tcp_sessions_total") == sessions + 1


def test_agent_intermediate_killed_during_a_download(cluster):
    """The agent's intermediate (i1) dies: the agent moves to the next
    address (i3), whose link to i2 carries the end-to-end connection's
    new relay session."""
    w = cluster
    assert w.agent_node() == "i1"
    forwarded = w.node_metric("i3", "ztna_cluster_sessions_forwarded_total")
    download_through_a_kill(w, "i1")
    assert w.agent_node() == "i3"
    assert w.node_of(w.conn_log.name) == "i2"
    assert w.node_metric("i3", "ztna_cluster_sessions_forwarded_total") \
        > forwarded
    # i1 back (the same key), for the tests after this one.
    w.restart_node("i1")


def test_connector_intermediate_killed_during_a_download(cluster):
    """The connector's intermediate (i2) dies: the connector moves to the
    next address (i1) and registers there, the registry says so, and i3
    ends the sessions of its dead link; the agent asks again and its
    end-to-end connection moves to a session through i3's link to i1."""
    w = cluster
    assert w.agent_node() == "i3"
    assert w.node_of(w.conn_log.name) == "i2"
    download_through_a_kill(w, "i2")
    assert w.node_of(w.conn_log.name) == "i1"
    assert w.redis("GET", "ztna:svc:web").startswith("1 i1 ")
    assert w.node_metric("i1", "ztna_cluster_sessions_for_peers_total") >= 1
    assert w.node_metric("i3", "ztna_cluster_peer_links_lost_total") >= 1
    w.restart_node("i2")


def fetch_ok(w, timeout):
    """Polls until a small file comes from web, whole."""
    with open(os.path.join(w.files, "small.txt"), "w") as f:
        f.write("cluster\n")
    os.chmod(os.path.join(w.files, "small.txt"), 0o644)
    wait_for(lambda: w.run(["curl", "-s", "-m", "3",
                            "http://10.100.0.2/small.txt"],
                           check=False).stdout == "cluster\n",
             timeout=timeout, what="web answering")


def restart_agent(w):
    old = w.procs["agent"]
    old.terminate()
    assert old.wait(timeout=30) == 0
    w.agent = w.start_agent("agent", w.agent_ns, "alice",
                            extra={"server": NAME + ":4433"})


def test_redis_restarted(cluster):
    """Redis stops, and comes back empty (no persistence): what runs
    keeps running without it, every member writes its entries again
    within a few heartbeats, and new sessions find their way once more.
    The registry grants nothing: eve's certificate still reaches nothing
    of web."""
    w = cluster
    fetch_ok(w, 60)
    w.procs["redis-registry"].send_signal(signal.SIGKILL)
    w.procs["redis-registry"].wait()
    # Running sessions do not need the registry.
    fetch_ok(w, 30)
    wait_for(lambda: w.node_metric("i3", "ztna_cluster_redis_up") == 0,
             what="i3 sees Redis gone")
    w.start_redis()
    t0 = time.time()
    wait_for(lambda: w.redis("GET", "ztna:svc:web").startswith("1 i1 ")
             and all(w.redis("EXISTS", "ztna:node:" + n) == "1"
                     for n in NODES), timeout=30,
             what="the registry written again")
    assert time.time() - t0 < 30
    # A new agent process: a new end-to-end connection, a new session
    # looked up in the new registry.
    restart_agent(w)
    fetch_ok(w, 60)
    assert all(w.node_metric(n, "ztna_cluster_redis_up") == 1 for n in NODES)


def test_forged_registry_entry(cluster):
    """Entries written to Redis by someone else: one that sends web to a
    node that is not an intermediate of this CA (a QUIC server with
    another CA's intermediate certificate) routes nobody there: the link
    fails its handshake, the agent hears "no connector", and no byte of
    web reaches the impostor. Once the entry is gone, the real one is
    written again and web works. And eve, whose certificate grants no
    web, is refused at her own intermediate whatever the registry says."""
    w = cluster
    other = Pki(os.path.join(w.tmp, "pki-other"))
    d = os.path.join(w.tmp, "rogue")
    os.makedirs(d, exist_ok=True)
    rogue = Intermediate(other, ns=w.redis_ns, port=4439, metrics_port=9099,
                         logdir=d, name="rogue")
    try:
        now = int(time.time() * 1000)
        w.redis("SET", "ztna:node:rogue", "1 %s:4439 %d" % (REDIS, now + 5000))
        # Every service (web rides the end-to-end connection of whichever
        # service the agent connects first), registered "later" than the
        # real ones.
        for svc in SERVICES:
            w.redis("SET", "ztna:svc:" + svc,
                    "1 rogue %d %d" % (now + 10 ** 9, now + 5000))
        # The agent at i3, away from the connector (at i1 now); i3
        # started afresh, so that it remembers no earlier answer.
        w.inters["i3"].stop()
        w.restart_node("i3")
        w.hosts(w.agent_ns, ("i3", "i1", "i2"))
        restart_agent(w)
        node = w.agent_node()
        assert node == "i3" and w.node_of(w.conn_log.name) == "i1"
        # Its intermediate tries the impostor and refuses it.
        wait_for(lambda: "intermediate rogue" in w.inters[node].logtext()
                 and "cluster link failed" in w.inters[node].logtext(),
                 what="the link to the impostor refused")
        assert w.run(["curl", "-s", "-m", "5", "-o", "/dev/null",
                      "http://10.100.0.2/"], check=False).returncode != 0
        assert rogue.metric("ztna_relay_sessions_total") == 0
        assert rogue.metric("ztna_relay_session_datagrams_total") == 0
        w.redis("DEL", "ztna:node:rogue")
        # Of no live node: overwritten at the next heartbeat.
        wait_for(lambda: w.redis("GET", "ztna:svc:web").startswith("1 i1 "),
                 timeout=30, what="the real entry back")
        fetch_ok(w, 60)
    finally:
        rogue.stop()
    # eve: web is not hers; the registry cannot make it so (an entry
    # that is right, too, routes only what her intermediate authorized).
    ns = w.net.ns("eve")
    w.net.link(w.inet, "203.0.113.33/28", ns, "203.0.113.34/28")
    w.net.route(ns, "default", "203.0.113.33")
    w.hosts(ns, ("i3", "i1", "i2"))
    rejected = w.node_metric("i3", "ztna_registration_rejections_total")
    w.start_agent("eve", ns, "eve", port=9093,
                  extra={"server": NAME + ":4433"})
    wait_for(lambda: w.node_metric("i3", "ztna_registration_rejections_total")
             > rejected, what="eve's registrations refused")
    assert w.net.exec(ns, ["curl", "-s", "-m", "5", "-o", "/dev/null",
                           "http://10.100.0.2/"], check=False).returncode != 0
    fetch_ok(w, 30)  # alice still does


def test_direct_path_across_members(cluster):
    """The punch between an agent and a connector at different members:
    the offer crosses the link, the connector's member starts it on both
    sides, and the end-to-end connection moves to the direct path, off the
    intermediates (until now the firewall kept them on the relay)."""
    w = cluster
    w.net.exec(w.inet, ["nft", "delete", "table", "ip", "no_direct"])
    try:
        w.hosts(w.agent_ns, ("i3", "i1", "i2"))
        restart_agent(w)  # a punch at once, not after an earlier backoff
        assert w.agent_node() != w.node_of(w.conn_log.name)
        wait_for(lambda: w.path("web") == "direct", timeout=90,
                 what="the direct path")
        node = w.agent_node()
        relayed = w.node_metric(node, "ztna_relay_bytes_total")
        src = w.make_file("direct-10m", 10 << 20)
        out = os.path.join(w.tmp, "direct-10m.out")
        w.run(["curl", "-sf", "-m", "120", "-o", out,
               "http://10.100.0.2/direct-10m"])
        assert sha256(out) == sha256(src)
        assert w.path("web") == "direct"
        assert w.node_metric(node, "ztna_relay_bytes_total") - relayed \
            < 1 << 20
    finally:
        w.net.exec(w.inet, ["nft", "-f", "-"], input=NO_DIRECT)


def test_redis_credentials(tmp_path):
    """A Redis that asks for a password (AUTH): the member that has it in
    its password file joins; the one with a wrong one says so, writes
    nothing and is not up; a user without a password is a configuration
    error. On loopback, without the cluster's namespaces."""
    import socket
    import subprocess
    from ztna import ZTNA, free_port
    pki = Pki(str(tmp_path / "pki"))
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1",
                              "--port", str(rport), "--requirepass",
                              "s3cret", "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)

    def cli(*args):
        return subprocess.run(["redis-cli", "-p", str(rport), "-a", "s3cret",
                               "--no-auth-warning"] + list(args),
                              capture_output=True, text=True).stdout.strip()

    members = []
    try:
        wait_for(lambda: cli("PING") == "PONG", what="redis")
        for name, pw in (("good", "s3cret\n"), ("bad", "wrong\n")):
            pf = tmp_path / (name + ".pw")
            pf.write_text(pw)
            port = free_port(socket.SOCK_DGRAM)
            members.append(Intermediate(
                pki, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=str(tmp_path),
                extra=("--cluster-redis", "127.0.0.1:%d" % rport,
                       "--cluster-node", name, "--cluster-advertise",
                       "127.0.0.1:%d" % port,
                       "--cluster-redis-password-file", str(pf))))
        good, bad = members
        wait_for(lambda: good.metric("ztna_cluster_redis_up") == 1,
                 what="the member with the password up")
        assert cli("GET", "ztna:node:good").startswith("1 127.0.0.1:")
        wait_for(lambda: "refused our credentials" in bad.logtext(),
                 what="the wrong password said")
        assert bad.metric("ztna_cluster_redis_up") == 0
        assert cli("EXISTS", "ztna:node:bad") == "0"
        p = subprocess.run([ZTNA, "intermediate", "--check", "--cert",
                            good.cert, "--key", good.key, "--ca", pki.ca,
                            "--cluster-redis", "127.0.0.1:%d" % rport,
                            "--cluster-advertise", "127.0.0.1:4433",
                            "--cluster-redis-user", "ops"],
                           capture_output=True, text=True)
        assert p.returncode == 1
        assert "cluster_redis_user 'ops' needs its password" in p.stderr
    finally:
        for m in members:
            m.stop()
        redis.kill()
        redis.wait()


def test_redis_tls(tmp_path):
    """Redis over TLS (cluster_redis_ca): a member that trusts Redis' CA
    and is known by name joins and writes; one that trusts another CA, one
    that expects another name, and one whose own certificate Redis does
    not take each say why, write nothing and are not up. A SIGHUP after
    the right CA file is in place brings the first of them up. Redis
    listens on its TLS port only. On loopback ("localhost" is in the
    certificate)."""
    import shutil
    import socket
    import subprocess
    from ztna import ZTNA, free_port
    pki = Pki(str(tmp_path / "pki"))
    other = Pki(str(tmp_path / "other"))
    rcrt, rkey = pki.issue("intermediate", "redis", "--dns", "localhost")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1",
                              "--port", "0", "--tls-port", str(rport),
                              "--tls-cert-file", rcrt, "--tls-key-file", rkey,
                              "--tls-ca-cert-file", pki.ca, "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)
    ccrt, ckey = pki.issue("intermediate", "cli")

    def cli(*args):
        return subprocess.run(["redis-cli", "-h", "localhost", "-p",
                               str(rport), "--tls", "--cacert", pki.ca,
                               "--cert", ccrt, "--key", ckey] + list(args),
                              capture_output=True, text=True).stdout.strip()

    wrong_ca = tmp_path / "wrong-ca.crt"
    shutil.copy(other.ca, wrong_ca)
    members = {}
    try:
        wait_for(lambda: cli("PING") == "PONG", what="redis over TLS")
        for name, p, extra in (
                ("good", pki, ("--cluster-redis-ca", pki.ca)),
                ("wrongca", pki, ("--cluster-redis-ca", str(wrong_ca))),
                ("wrongname", pki, ("--cluster-redis-ca", pki.ca,
                                    "--cluster-redis-name",
                                    "redis.example")),
                ("stranger", other, ("--cluster-redis-ca", pki.ca))):
            port = free_port(socket.SOCK_DGRAM)
            members[name] = Intermediate(
                p, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=str(tmp_path),
                extra=("--cluster-redis", "localhost:%d" % rport,
                       "--cluster-node", name, "--cluster-advertise",
                       "127.0.0.1:%d" % port) + extra)
        good = members["good"]
        wait_for(lambda: good.metric("ztna_cluster_redis_up") == 1,
                 what="the member that trusts Redis' CA up")
        assert cli("GET", "ztna:node:good").startswith("1 127.0.0.1:")
        assert "connected to Redis at localhost:%d (TLS)" % rport \
            in good.logtext()
        for name, says in (("wrongca", "TLS handshake with Redis"),
                           ("wrongname", "name mismatch"),
                           ("stranger", "cannot connect to Redis")):
            m = members[name]
            wait_for(lambda: says in m.logtext(),
                     what="%s: '%s' said" % (name, says))
            wait_for(lambda: m.metric(
                "ztna_cluster_redis_failures_total") >= 2,
                what="%s: tried again" % name)
            assert m.metric("ztna_cluster_redis_up") == 0, name
            assert cli("EXISTS", "ztna:node:" + name) == "0", name
        # The right CA in place, and a reload: the next connection uses it.
        shutil.copy(pki.ca, wrong_ca)
        members["wrongca"].proc.send_signal(1)
        wait_for(lambda: members["wrongca"].metric(
            "ztna_cluster_redis_up") == 1, what="up after the reload")
        assert cli("GET", "ztna:node:wrongca").startswith("1 127.0.0.1:")
        # An address is not checked against a certificate's names.
        p = subprocess.run([ZTNA, "intermediate", "--check", "--cert",
                            good.cert, "--key", good.key, "--ca", pki.ca,
                            "--cluster-redis", "127.0.0.1:%d" % rport,
                            "--cluster-advertise", "127.0.0.1:4433",
                            "--cluster-redis-ca", pki.ca],
                           capture_output=True, text=True)
        assert p.returncode == 1
        assert "set cluster_redis_name" in p.stderr
        p = subprocess.run([ZTNA, "intermediate", "--check", "--cert",
                            good.cert, "--key", good.key, "--ca", pki.ca,
                            "--cluster-redis", "localhost:%d" % rport,
                            "--cluster-advertise", "127.0.0.1:4433",
                            "--cluster-redis-ca", str(tmp_path / "nope")],
                           capture_output=True, text=True)
        assert p.returncode == 1
        assert "Redis CA file" in p.stderr and "nope" in p.stderr
        # keygen's rule for names (netaddr_dns_name_ok), no wildcard
        for bad in ("redis example", "redis..example", "*.example.org",
                    "-" * 64 + ".example"):
            p = subprocess.run([ZTNA, "intermediate", "--check", "--cert",
                                good.cert, "--key", good.key, "--ca",
                                pki.ca, "--cluster-redis",
                                "localhost:%d" % rport,
                                "--cluster-advertise", "127.0.0.1:4433",
                                "--cluster-redis-ca", pki.ca,
                                "--cluster-redis-name", bad],
                               capture_output=True, text=True)
            assert p.returncode == 1 and "is not a DNS name" in p.stderr, \
                (bad, p.stderr)
    finally:
        for m in members.values():
            m.stop()
        redis.kill()
        redis.wait()


def test_redis_sentinel(tmp_path):
    """Redis Sentinel (cluster_redis_sentinels): members ask a sentinel
    where the primary is (one of them first tries a sentinel that is not
    there), write there, and route a session from one member to the
    other's connector by the registry. The primary is killed: the sentinel
    promotes the replica, and the members write there within seconds. The
    old primary comes back as a replica and a forced failover moves the
    primary back while the demoted one still runs: the members notice at
    their periodic check and move too. A member without Sentinel whose
    Redis becomes a replica stops writing and says why. On loopback."""
    import socket
    import subprocess
    from ztna import ZTNA, Client, free_port
    pki = Pki(str(tmp_path / "pki"))
    agent = pki.issue("agent", "a", "--service", "svc")
    conn = pki.issue("connector", "c", "--service", "svc")
    pport, rport, sport, dead = (free_port() for _ in range(4))
    procs = {}

    def redis_at(port, *args):
        procs[port] = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)] +
            list(args), stdout=subprocess.DEVNULL)

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-p", str(port)] + list(args),
                              capture_output=True,
                              text=True).stdout.strip()

    def good_replica(port):
        kv = cli(sport, "SENTINEL", "REPLICAS", "zt").split("\n")
        info = dict(zip(kv[0::2], kv[1::2]))
        return info.get("name") == "127.0.0.1:%d" % port and \
            info.get("flags") == "slave" and \
            info.get("master-link-status") == "ok"

    def heartbeat(port, key):
        v = cli(port, "GET", key).split()
        return int(v[-1]) if v else 0

    members = {}
    c = None
    try:
        redis_at(pport)
        wait_for(lambda: cli(pport, "PING") == "PONG", what="primary")
        redis_at(rport, "--replicaof", "127.0.0.1", str(pport))
        conf = tmp_path / "sentinel.conf"
        conf.write_text("port %d\nbind 127.0.0.1\nsentinel monitor zt "
                        "127.0.0.1 %d 1\nsentinel down-after-milliseconds "
                        "zt 1000\nsentinel failover-timeout zt 4000\n"
                        % (sport, pport))
        procs[sport] = subprocess.Popen(["redis-server", str(conf),
                                         "--sentinel"],
                                        stdout=subprocess.DEVNULL)
        wait_for(lambda: cli(sport, "PING") == "PONG", what="sentinel")
        ports = {}
        for name, sentinels in (("node-a", "127.0.0.1:%d,127.0.0.1:%d"
                                 % (dead, sport)),
                                ("node-b", "127.0.0.1:%d" % sport)):
            port = ports[name] = free_port(socket.SOCK_DGRAM)
            members[name] = Intermediate(
                pki, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=str(tmp_path),
                extra=("--cluster-redis-sentinels", sentinels,
                       "--cluster-redis-master", "zt", "--cluster-node",
                       name, "--cluster-advertise", "127.0.0.1:%d" % port))
        a, b = members["node-a"], members["node-b"]
        for m in (a, b):
            wait_for(lambda: "connected to Redis at 127.0.0.1:%d" % pport
                     in m.logtext(), what="a member at the primary")
        assert "cannot reach sentinel 127.0.0.1:%d" % dead in a.logtext()
        assert a.metric("ztna_cluster_sentinel_failures_total") >= 1
        c = Client("127.0.0.1:%d" % ports["node-b"], pki, cert=conn)
        c.expect("up", timeout=30)
        c.send("raw 11037376637a01")  # connector of svc at node-b
        c.expect("ack", timeout=30)
        wait_for(lambda: cli(pport, "GET", "ztna:svc:svc").startswith(
            "1 node-b "), what="the service entry at the primary")
        assert zload_open(pki, ports["node-a"], agent, "svc", 2) == 2

        # A member pointed straight at a Redis (no Sentinel) that becomes
        # a replica: its writes are refused (READONLY), it leaves, finds
        # a replica (ROLE) and writes nothing until it is a primary again.
        xport, dport = free_port(), free_port(socket.SOCK_DGRAM)
        redis_at(xport)
        wait_for(lambda: cli(xport, "PING") == "PONG", what="redis x")
        members["direct"] = d = Intermediate(
            pki, port=dport, metrics_port=free_port(), bind="127.0.0.1",
            name="direct", logdir=str(tmp_path),
            extra=("--cluster-redis", "127.0.0.1:%d" % xport,
                   "--cluster-node", "direct", "--cluster-advertise",
                   "127.0.0.1:%d" % dport))
        wait_for(lambda: d.metric("ztna_cluster_redis_up") == 1,
                 what="direct up")
        assert cli(xport, "REPLICAOF", "127.0.0.1", str(pport)) == "OK"
        wait_for(lambda: "is a replica now (READONLY" in d.logtext(),
                 what="the demotion noticed")
        wait_for(lambda: "is a slave, not the primary" in d.logtext(),
                 what="the replica refused as a registry")
        wait_for(lambda: d.metric("ztna_cluster_redis_up") == 0,
                 what="direct down")
        writes = d.metric("ztna_cluster_registry_writes_total")
        time.sleep(3)  # the heartbeat would have written meanwhile
        assert d.metric("ztna_cluster_registry_writes_total") == writes
        assert cli(xport, "REPLICAOF", "NO", "ONE") == "OK"
        wait_for(lambda: d.metric("ztna_cluster_redis_up") == 1,
                 what="direct up again at the primary")
        wait_for(lambda: cli(xport, "EXISTS", "ztna:node:direct") == "1",
                 what="direct writing again")
        d.stop()
        del members["direct"]

        # The primary dies; the replica is promoted.
        wait_for(lambda: good_replica(rport), timeout=60,
                 what="the sentinel knows the replica")
        procs[pport].kill()
        procs[pport].wait()
        for m in (a, b):
            wait_for(lambda: "connected to Redis at 127.0.0.1:%d" % rport
                     in m.logtext(), timeout=60,
                     what="a member at the promoted replica")
        hb = heartbeat(rport, "ztna:svc:svc")
        wait_for(lambda: heartbeat(rport, "ztna:svc:svc") > hb,
                 what="node-b writing at the new primary")
        assert heartbeat(rport, "ztna:node:node-a") > 0
        assert zload_open(pki, ports["node-a"], agent, "svc", 2) == 2

        # The old primary back as a replica, then a forced failover to it
        # while the one the members write to stays up (a demoted primary
        # is not always closed at once: the periodic check finds it).
        redis_at(pport, "--replicaof", "127.0.0.1", str(rport))
        wait_for(lambda: good_replica(pport), timeout=60,
                 what="the old primary a good replica")
        wait_for(lambda: cli(sport, "SENTINEL", "FAILOVER", "zt") == "OK",
                 what="a forced failover accepted")
        for m in (a, b):
            wait_for(lambda: m.logtext().count(
                "connected to Redis at 127.0.0.1:%d" % pport) >= 2,
                timeout=60, what="a member back at the old primary")
        hb = heartbeat(pport, "ztna:svc:svc")
        wait_for(lambda: heartbeat(pport, "ztna:svc:svc") > hb,
                 what="node-b writing at the old primary again")
        for m in (a, b):
            assert m.metric("ztna_cluster_redis_up") == 1
            assert m.metric("ztna_cluster_sentinel_queries_total") >= 3
        st = json.loads(a.http("/v1/status"))["cluster"]
        assert st["redis_sentinels"] == "127.0.0.1:%d,127.0.0.1:%d" % (
            dead, sport)
        assert st["redis_master"] == "zt" and "redis" not in st
        assert st["redis_at"] == "127.0.0.1:%d (primary of zt)" % pport
        assert st["redis_up"] is True

        # examples/intermediate-cluster.json (Sentinel, TLS, ACL user) as
        # a member's file, its paths made real here.
        ex = json.load(open(os.path.join(os.path.dirname(__file__), "..",
                                         "..", "examples",
                                         "intermediate-cluster.json")))
        pw = tmp_path / "redis.pw"
        pw.write_text("s3cret\n")
        ex.update({"cert_path": a.cert, "key_path": a.key,
                   "ca_cert_path": pki.ca, "cluster_redis_ca": pki.ca,
                   "cluster_redis_password_file": str(pw),
                   "policy_path": os.path.join(os.path.dirname(__file__),
                                               "..", "..", "examples",
                                               "policy.json")})
        conf = tmp_path / "member.json"
        conf.write_text(json.dumps(ex))
        p = subprocess.run([ZTNA, "intermediate", "--check", "-c",
                            str(conf)], capture_output=True, text=True)
        assert p.returncode == 0 and "configuration OK" in p.stdout, \
            p.stderr

        # Settings that do not go together.
        for extra, says in (
                (("--cluster-redis", "127.0.0.1:1",
                  "--cluster-redis-sentinels", "127.0.0.1:2",
                  "--cluster-redis-master", "zt"), "not both"),
                (("--cluster-redis-sentinels", "127.0.0.1:2"),
                 "needs cluster_redis_master"),
                (("--cluster-redis-sentinels", "127.0.0.1:2,nope",
                  "--cluster-redis-master", "zt"), "'nope' is not HOST:PORT"),
                (("--cluster-redis-sentinels", "127.0.0.1:2",
                  "--cluster-redis-master", "zt", "--cluster-redis-ca",
                  pki.ca), "set cluster_redis_name"),
                (("--cluster-redis", "127.0.0.1:1",
                  "--cluster-redis-master", "zt"), "set cluster_redis_sentinels")):
            p = subprocess.run([ZTNA, "intermediate", "--check", "--cert",
                                a.cert, "--key", a.key, "--ca", pki.ca,
                                "--cluster-advertise", "127.0.0.1:4433"] +
                               list(extra), capture_output=True, text=True)
            assert p.returncode == 1 and says in p.stderr, (extra, p.stderr)
    finally:
        if c:
            c.close()
        for m in members.values():
            m.stop()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_redis_sentinel_over_tls(tmp_path):
    """Sentinel and Redis both on TLS ports only (tls-replication): a
    member asks the sentinel over TLS, connects to the primary it names
    over TLS, both certificates checked for cluster_redis_name, and
    writes; a member that trusts another CA stops at the sentinel and
    says why."""
    import socket
    import subprocess
    from ztna import free_port
    pki = Pki(str(tmp_path / "pki"))
    other = Pki(str(tmp_path / "other"))
    rcrt, rkey = pki.issue("intermediate", "redis", "--dns", "localhost")
    ccrt, ckey = pki.issue("intermediate", "cli")
    tls = ["--tls-cert-file", rcrt, "--tls-key-file", rkey,
           "--tls-ca-cert-file", pki.ca, "--tls-replication", "yes"]
    pport, sport = free_port(), free_port()
    procs, members = [], []

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-h", "localhost", "-p",
                               str(port), "--tls", "--cacert", pki.ca,
                               "--cert", ccrt, "--key", ckey] + list(args),
                              capture_output=True, text=True).stdout.strip()

    try:
        procs.append(subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", "0",
             "--tls-port", str(pport), "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)] + tls, stdout=subprocess.DEVNULL))
        wait_for(lambda: cli(pport, "PING") == "PONG", what="redis")
        conf = tmp_path / "sentinel.conf"
        conf.write_text("port 0\nbind 127.0.0.1\ntls-port %d\n"
                        "tls-cert-file %s\ntls-key-file %s\n"
                        "tls-ca-cert-file %s\ntls-replication yes\n"
                        "sentinel monitor zt 127.0.0.1 %d 1\n"
                        % (sport, rcrt, rkey, pki.ca, pport))
        procs.append(subprocess.Popen(["redis-server", str(conf),
                                       "--sentinel"],
                                      stdout=subprocess.DEVNULL))
        wait_for(lambda: cli(sport, "PING") == "PONG", what="sentinel")
        for name, p in (("good", pki), ("stranger", other)):
            port = free_port(socket.SOCK_DGRAM)
            members.append(Intermediate(
                p, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=str(tmp_path),
                extra=("--cluster-redis-sentinels", "localhost:%d" % sport,
                       "--cluster-redis-master", "zt", "--cluster-node",
                       name, "--cluster-advertise", "127.0.0.1:%d" % port,
                       "--cluster-redis-ca", p.ca, "--cluster-redis-name",
                       "localhost")))
        good, stranger = members
        wait_for(lambda: good.metric("ztna_cluster_redis_up") == 1,
                 what="the member up through the sentinel")
        assert "connected to Redis at 127.0.0.1:%d (primary of zt) (TLS)" \
            % pport in good.logtext()
        assert cli(pport, "GET", "ztna:node:good").startswith("1 127.0.0.1:")
        wait_for(lambda: "sentinel localhost:%d: TLS handshake" % sport
                 in stranger.logtext(), what="the sentinel refused")
        wait_for(lambda: stranger.metric(
            "ztna_cluster_sentinel_failures_total") >= 2, what="retried")
        assert stranger.metric("ztna_cluster_redis_up") == 0
        assert cli(pport, "EXISTS", "ztna:node:stranger") == "0"
    finally:
        for m in members:
            m.stop()
        for p in procs:
            p.kill()
            p.wait()


def test_lying_and_flooding_sentinels(tmp_path):
    """Sentinels that lie: one names a primary that is no address, one
    answers with an array of a million elements (and keeps sending). The
    members say what is wrong, keep asking, write nothing, are not up,
    and do not grow."""
    import socket
    import threading
    from ztna import free_port
    pki = Pki(str(tmp_path / "pki"))
    answers = {
        "liar": b"*2\r\n$9\r\nnot-an-ip\r\n$4\r\n6379\r\n",
        "flood": b"*1000000\r\n" + b"$1\r\nx\r\n" * 200000,
    }
    servers, members, stop = {}, {}, threading.Event()

    def serve(ls, answer):
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed at the end of the test
            try:
                c.settimeout(2)
                c.recv(4096)
                c.sendall(answer)
            except OSError:
                pass
            c.close()

    try:
        for name, answer in answers.items():
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(8)
            servers[name] = ls
            threading.Thread(target=serve, args=(ls, answer),
                             daemon=True).start()
            port = free_port(socket.SOCK_DGRAM)
            members[name] = Intermediate(
                pki, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=str(tmp_path),
                extra=("--cluster-redis-sentinels", "127.0.0.1:%d"
                       % ls.getsockname()[1], "--cluster-redis-master",
                       "zt", "--cluster-node", name, "--cluster-advertise",
                       "127.0.0.1:%d" % port))
        liar, flood = members["liar"], members["flood"]
        wait_for(lambda: "does not tell the primary of 'zt' (not an "
                 "address and port" in liar.logtext(), what="the lie said")
        wait_for(lambda: "Multi-bulk length out of range" in
                 flood.logtext(), what="the flood refused")
        start = rss_kb(flood.proc.pid)
        for m in members.values():
            wait_for(lambda: m.metric(
                "ztna_cluster_sentinel_failures_total") >= 4,
                what="asked again and again")
            assert m.metric("ztna_cluster_redis_up") == 0
            assert m.metric("ztna_cluster_registry_writes_total") == 0
        assert rss_kb(flood.proc.pid) - start < 4 * 1024
    finally:
        stop.set()
        for m in members.values():
            m.stop()
        for ls in servers.values():
            ls.close()


def test_cluster_alerts_use_exported_metrics(cluster):
    """The alert rules on cluster metrics (packaging/monitoring) name
    metrics a member exports (test_datapath.py checks the others)."""
    import re
    import yaml
    mon = os.path.join(os.path.dirname(__file__), "..", "..", "packaging",
                       "monitoring")
    exported = set(cluster.inters["i1"].metrics())
    exported = {k.split("{")[0] for k in exported}
    rules = yaml.safe_load(open(os.path.join(mon, "ztna-alerts.yml")))
    used = 0
    for g in rules["groups"]:
        for r in g["rules"]:
            for m in re.findall(r"\bztna_cluster_[a-z_]+", r["expr"]):
                assert m in exported, (m, r["expr"])
                used += 1
    assert used >= 3
