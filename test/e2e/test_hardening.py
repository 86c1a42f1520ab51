"""Defects found by review, each reproduced here against real peers:
memory that grows with volume, TCP state that outlives its agent, one
agent's packets reaching another, and daemons that touch freed memory
when signals arrive during shutdown."""
import os
import signal
import socket  # noqa: F401
import subprocess
import sys
import threading
import time

import pytest

from datapath import BACKEND, SERVICES, World, sha256  # noqa: F401
from netns import Net
from ztna import wait_for


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces and TUN devices")
    net = Net(tag="hd")
    w = None
    try:
        w = World(net, tmp_path_factory.mktemp("hardening"))
        yield w
    finally:
        if w:
            w.stop()
        net.cleanup()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def connector_pid(world):
    """The connector's own pid (under a wrapper it is a child)."""
    p = world.procs["connector"]
    out = subprocess.run(["pgrep", "-f", "ztna connector"],
                         capture_output=True, text=True).stdout.split()
    pids = [int(x) for x in out]
    assert pids, "no connector process"
    return p.pid if p.pid in pids else max(pids)


def download(world, url, times):
    """Fetches url times over, discarding the bytes; returns curl's
    total size."""
    total = 0
    for _ in range(times):
        p = world.run(["curl", "-s", "-S", "-m", "120", "-o", "/dev/null",
                       "-w", "%{size_download}", url], check=False,
                      timeout=150)
        assert p.returncode == 0, p.stderr
        total += int(p.stdout)
    return total


@pytest.mark.skipif(bool(os.environ.get("ZTNA_SAN_REPORTS")),
                    reason="ASan keeps freed memory in quarantine, so RSS "
                    "says nothing there; in that pass LeakSanitizer checks "
                    "the same at exit")
@pytest.mark.parametrize("path", ["direct", "relay"])
def test_connector_memory_flat_over_1gb(world, path):
    """Item 1: every backend-to-agent read buffer used to leak (RSS grew
    by about the volume downloaded)."""
    world.make_file("chunk.bin", 100 << 20)
    url = "http://%s/chunk.bin" % SERVICES["web"][0]
    if path == "relay":
        world.block_direct()
        wait_for(lambda: world.path() == "relay", timeout=30,
                 what="relay path")
    else:
        wait_for(lambda: world.path() == "direct", timeout=60,
                 what="direct path")
    try:
        pid = connector_pid(world)
        download(world, url, 1)  # warm up: pools and buffers settle
        before = rss_kb(pid)
        got = download(world, url, 10)
        after = rss_kb(pid)
        assert got == 10 * (100 << 20)
        assert world.path() == path
        assert after - before <= 16 * 1024, \
            "connector RSS grew by %d kB over 1 GB" % (after - before)
    finally:
        if path == "relay":
            world.unblock_direct()


HALF_CLIENT = r"""
import socket, sys
tag, vip, rounds = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3])
bad = 0
for i in range(rounds):
    got = b""
    try:
        s = socket.create_connection((vip, 9000), timeout=10)
        s.sendall(tag * 100)
        s.shutdown(socket.SHUT_WR)  # half-close, then read the answer
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
        s.close()
    except OSError as e:
        print("round %d: %s" % (i, e), file=sys.stderr)
    if len(got) != 100000 or got.strip(tag):
        bad += 1
        print("round %d: %d bytes, foreign %d" % (i, len(got),
              len(got.replace(tag, b""))), file=sys.stderr)
print(bad)
"""

# Watches a TUN for TCP payload bytes of a tag that is not its own.
SNIFF = r"""
import socket, sys, time
foreign = sys.argv[1].encode() * 64
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
s.bind((sys.argv[2], 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[3])
seen = 0
print("ready", flush=True)
while time.time() < end:
    try:
        d = s.recv(65536)
    except socket.timeout:
        continue
    if foreign in d:
        seen += 1
print(seen)
"""


def test_half_close_gets_everything_and_nobody_else_does(world):
    """Item 2: the connector freed a session's address mapping while lwIP
    still held unacknowledged data: a half-closing agent got a truncated
    answer and the retransmissions reached whichever agent took the
    mapping next."""
    net = world.net
    ns2 = net.ns("agent2")
    net.link(ns2, "192.0.2.50/28", world.nat_a, "192.0.2.49/28")
    net.route(ns2, "default", "192.0.2.49")
    world.start_agent("agent2", ns2, "bob", tunnel="100.64.0.1", port=9093)
    vip = SERVICES["hc"][0]
    sniff = None
    try:
        sniff = net.popen(ns2, [sys.executable, "-c", SNIFF, "A", "ztna0",
                                "40"], stdout=subprocess.PIPE, text=True)
        assert sniff.stdout.readline().strip() == "ready"
        pa = net.popen(world.agent_ns, [sys.executable, "-c", HALF_CLIENT,
                                        "A", vip, "15"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
        pb = net.popen(ns2, [sys.executable, "-c", HALF_CLIENT, "B", vip,
                             "30"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
        out_a, err_a = pa.communicate(timeout=200)
        out_b, err_b = pb.communicate(timeout=200)
        assert out_a.strip() == "0", err_a
        assert out_b.strip() == "0", err_b
        assert sniff.communicate(timeout=60)[0].strip() == "0", \
            "agent B's TUN saw agent A's bytes"
    finally:
        if sniff and sniff.poll() is None:
            sniff.kill()
        world.procs["agent2"].terminate()
        world.procs["agent2"].wait(10)


# Counts TCP segments from port 80 arriving on a TUN.
SNIFF_TCP80 = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[2])
seen = 0
print("ready", flush=True)
while time.time() < end:
    try:
        d = s.recv(65536)
    except socket.timeout:
        continue
    if d[0] >> 4 == 4 and d[9] == 6:
        ihl = (d[0] & 15) * 4
        if d[ihl] == 0 and d[ihl + 1] == 80:
            seen += 1
print(seen)
"""


def test_departed_agents_address_carries_nothing_of_it(world):
    """Item 8: the intermediate handed a departed agent's translated
    address to the next agent while the connector still held that agent's
    TCP session, so the newcomer got its data. Now addresses rest before
    reuse and the connector is told at once and resets the departed
    agent's state. Forced here: one translation, one second of rest."""
    from ztna import Intermediate
    net = world.net
    world.inter.stop()
    world.inter = Intermediate(world.pki, ns=world.inet, logdir=world.tmp,
                               extra=("--diag-port", "4434",
                                      "--max-translations", "1",
                                      "--translation-quarantine", "1"))
    world.block_direct()
    try:
        # Both found the new intermediate (the old connections end with
        # its stateless resets).
        wait_for(lambda: world.inter.metric(
            'ztna_service_connector_present{service="web"}') == 1
            and world.inter.metric('ztna_service_agents{service="web"}')
            == 1, timeout=60, what="agent and connector registered anew")
        wait_for(lambda: world.path() == "relay", timeout=30,
                 what="relay path")
        world.make_file("slow.bin", 50 << 20)
        gone0 = world.metric(world.conn_ns, 9091,
                             "ztna_connector_agents_gone_total")
        # Agent A: a download in progress, through the relay.
        curl = net.popen(world.agent_ns, [
            "curl", "-s", "-o", "/dev/null", "--limit-rate", "500k",
            "http://%s/slow.bin" % SERVICES["web"][0]])
        wait_for(lambda: world.metric(world.conn_ns, 9091,
                                      "ztna_connector_tcp_sessions_active")
                 == 1, what="A's session at the connector")
        time.sleep(1)
        world.procs["agent"].terminate()
        assert world.procs["agent"].wait(30) == 0
        curl.kill()
        wait_for(lambda: world.metric(world.conn_ns, 9091,
                                      "ztna_connector_agents_gone_total")
                 > gone0, what="the connector told of A")
        assert world.metric(world.conn_ns, 9091,
                            "ztna_connector_tcp_sessions_active") == 0
        time.sleep(1.5)  # the rest is over: B may get A's address
        ns4 = net.ns("agent4")
        net.link(ns4, "192.0.2.82/28", world.nat_a, "192.0.2.81/28")
        net.route(ns4, "default", "192.0.2.81")
        world.start_agent("agent4", ns4, "bob", port=9095)
        sniff = net.popen(ns4, [sys.executable, "-c", SNIFF_TCP80, "ztna0",
                                "6"], stdout=subprocess.PIPE, text=True)
        assert sniff.stdout.readline().strip() == "ready"
        # B's first packet takes the one translation there is: A's.
        p = net.exec(ns4, ["ping", "-c", "3", "-W", "2",
                           SERVICES["web"][0]], check=False)
        assert " 0% packet loss" in p.stdout, p.stdout
        assert sniff.communicate(timeout=30)[0].strip() == "0", \
            "agent B received segments of A's download"
        log = world.inter.logtext()
        assert world.inter.proc.poll() is None, log[-2000:]
    finally:
        world.unblock_direct()
        p4 = world.procs.get("agent4")
        if p4:
            p4.terminate()
            p4.wait(30)
        if world.procs["agent"].poll() is not None:
            world.start_agent("agent", world.agent_ns, "alice")


def test_zz_sigterm_then_sighup_exits_cleanly(world):
    """Item 4: for a while after SIGTERM the agent and the connector used
    freed uplinks (SIGHUP reloaded into them and unreferenced a TLS
    context twice; the TUN poll and metrics touched them too). Now a
    SIGHUP 50 ms into the shutdown is ignored and each daemon exits 0 with
    every handle closed. Runs last in this module: it stops the world."""
    procs = [("agent", world.procs["agent"]),
             ("connector", world.procs["connector"]),
             ("intermediate", world.inter.proc)]
    for _, p in procs:
        p.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGHUP)
    for name, p in procs:
        assert p.wait(timeout=30) == 0, name
    for name in ("agent.log", "connector.log"):
        with open(os.path.join(world.tmp, name)) as f:
            log = f.read()
        assert "still open" not in log, log[-2000:]
        assert "stopped" in log
