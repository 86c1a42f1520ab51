"""Hole punching across real NATs, driven by `ztna diag punch --service`:
a real agent registration, a real offer through the intermediate, real
checks from both sides, from the sockets the relay connections use.

The matrix of testing.md: easy x easy gives a direct path, hard x hard and
UDP blocked give none (traffic stays on the relay), easy x hard may go
either way but never stalls, no NAT on one side and both behind the same
NAT give a direct path. Each cell runs several punches, and the connector's
own metric confirms what the agent's side reports; the running agent's own
path (its metrics) agrees. Moving data between the paths is test_direct.py.
"""
import json
import os
import subprocess
import time

import pytest

from datapath import World, stop_world
from netns import Net
from ztna import ZTNA, netns_prefix, wait_for

RUNS = 3


def punch(w, ns, server="198.51.100.10:4433"):
    cert = w.agent_certs["alice"]
    cmd = netns_prefix(ns) + [
        ZTNA, "diag", "punch", "--json", "--server", server, "--cert",
        cert[0], "--key", cert[1], "--ca", w.pki.ca, "--service", "web"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    took = time.time() - t0
    assert p.returncode in (0, 3), (p.returncode, p.stderr)
    r = json.loads(p.stdout)
    assert (p.returncode == 0) == r["service"]["direct"], r
    return r, took


def agent_punches(w, result):
    return w.metric(w.agent_ns, 9092, 'ztna_agent_punches_total{service='
                    '"web",result="%s"}' % result) or 0


def connector_punches(w, result):
    return w.metric(w.conn_ns, 9091, 'ztna_connector_punches_total{result="%s"}'
                    % result) or 0


def assert_authenticated_punch(w):
    """The agent's own punch was bound to its end-to-end connection: the
    connector keyed it (tagged checks both ways) and no tag failed."""
    assert (w.metric(w.conn_ns, 9091,
                     "ztna_connector_punches_authenticated_total")
            or 0) >= 1
    assert w.metric(w.conn_ns, 9091,
                    "ztna_connector_punch_checks_rejected_total") == 0


@pytest.fixture
def world(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces and TUN devices")
    nat_a, nat_c = request.param
    net = Net(tag="p2p")
    w = None
    try:
        w = World(net, tmp_path, nat_a=nat_a, nat_c=nat_c)
        yield w
    finally:
        stop_world(w, net)


@pytest.mark.parametrize("world", [("easy", "easy")], indirect=True,
                         ids=["easy-easy"])
def test_easy_x_easy_is_direct(world):
    for i in range(RUNS):
        r, took = punch(world, world.agent_ns)
        # diag also classified the agent's NAT from the diag port.
        assert r["mapping"] == "endpoint-independent", r
        s = r["service"]
        assert s["direct"] is True, s
        assert s["working"] == "203.0.113.2:4434", s  # the connector's NAT
        assert s["working_type"] == "srflx"
        assert s["punch_ms"] < 3000, s
    # The connector's own checks got answers too.
    assert connector_punches(world, "success") >= RUNS
    # The running agent took the direct path by itself.
    wait_for(lambda: world.path() == "direct", what="agent direct")
    assert agent_punches(world, "success") >= 1
    assert_authenticated_punch(world)
    # The connector's own (tagged) checks of the agent's punch got answers
    # too, also those that arrived after the agent's side was done.
    wait_for(lambda: connector_punches(world, "success") >= RUNS + 1,
             what="the connector's checks of the agent's punch answered")


@pytest.mark.parametrize("world", [("open", "open"), ("open", "easy"),
                                   ("easy", "open")], indirect=True,
                         ids=["open-open", "open-easy", "easy-open"])
def test_masquerade_without_firewall_is_direct(world):
    """Plain Linux masquerade with no input filter, as a new user sets it
    up: a check that reaches a NAT before that side's own first packet
    left makes a conntrack entry that takes the mapping's port, and the
    other side's checks then leave from another port. Each side first
    opens its own mapping with a packet that expires before the peer's
    NAT, so the checks meet."""
    for i in range(RUNS):
        r, took = punch(world, world.agent_ns)
        s = r["service"]
        assert s["direct"] is True, s
        assert s["punch_ms"] < 3000, s
    wait_for(lambda: world.path() == "direct", timeout=60,
             what="agent direct")
    assert_authenticated_punch(world)
    p = world.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
                   "%{http_code}", "http://10.100.0.2/"], check=False)
    assert p.returncode == 0 and p.stdout not in ("", "000"), p.stdout


@pytest.mark.parametrize("world", [("hard", "hard")], indirect=True,
                         ids=["hard-hard"])
def test_hard_x_hard_stays_on_the_relay(world):
    for i in range(RUNS):
        r, took = punch(world, world.agent_ns)
        assert r["mapping"] == "endpoint-dependent", r
        s = r["service"]
        assert s["direct"] is False
        assert "symmetric" in s["advice"] and "relay" in s["advice"], s
        assert took < 30
    # The running agent tried, failed and stays on the relay, which
    # still carries traffic.
    wait_for(lambda: agent_punches(world, "failed") >= 1, what="a failed "
             "punch of the agent")
    assert world.path() == "relay"
    p = world.run(["ping", "-c", "20", "-i", "0.1", "-W", "2", "10.100.0.2"],
                  check=False)
    assert " 0% packet loss" in p.stdout, p.stdout
    p = world.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
                   "%{http_code}", "http://10.100.0.2/"], check=False)
    assert p.returncode == 0 and p.stdout not in ("", "000"), p.stdout


@pytest.mark.parametrize("world", [("easy", "hard"), ("hard", "easy")],
                         indirect=True, ids=["easy-hard", "hard-easy"])
def test_easy_x_hard_never_stalls(world):
    for i in range(RUNS):
        r, took = punch(world, world.agent_ns)
        # Either outcome is allowed; a stalled punch is not.
        assert took < 30, took
        if not r["service"]["direct"]:
            assert r["service"]["why"], r
    # The agent ends on one path or the other, not in between.
    wait_for(lambda: world.path() in ("direct", "relay"),
             what="the agent settled on a path")
    p = world.run(["curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
                   "%{http_code}", "http://10.100.0.2/"], check=False)
    assert p.returncode == 0 and p.stdout not in ("", "000"), p.stdout


@pytest.mark.parametrize("world", [("none", "none"), ("none", "easy"),
                                   ("easy", "none")], indirect=True,
                         ids=["none-none", "none-easy", "easy-none"])
def test_without_nat_is_direct(world):
    for i in range(RUNS):
        r, _ = punch(world, world.agent_ns)
        assert r["nat"] is (world.nat_kinds[0] != "none"), r
        s = r["service"]
        assert s["direct"] is True, s
        assert s["punch_ms"] < 3000, s
    wait_for(lambda: world.path() == "direct", what="agent direct")


@pytest.mark.parametrize("world", [("easy", "easy")], indirect=True,
                         ids=["easy"])
def test_no_nat_same_nat_and_blocked_udp(world):
    net = world.net
    # No NAT: a host on the internet side itself.
    pub = net.ns("pub")
    net.link(world.inet, "192.0.2.97/28", pub, "192.0.2.98/28")
    net.route(pub, "default", "192.0.2.97")
    for i in range(RUNS):
        r, _ = punch(world, pub, server="192.0.2.97:4433")
        assert r["nat"] is False and r["mapping"] == "none", r
        assert r["service"]["direct"] is True, r["service"]
    # Both behind the same NAT (here: on the connector's own host): the
    # host candidates meet without leaving the LAN.
    for i in range(RUNS):
        r, _ = punch(world, world.conn_ns, server="203.0.113.10:4433")
        s = r["service"]
        assert s["direct"] is True, s
        assert s["working_type"] == "host", s
        assert s["working"].startswith("192.0.2.18:"), s
    # A firewall that lets UDP reach only the intermediate: no direct path.
    world.block_direct()
    for i in range(RUNS):
        r, took = punch(world, world.agent_ns)
        assert r["service"]["direct"] is False, r["service"]
        assert took < 30
