"""ztna diag punch against a real intermediate with its diag port, from
behind real NATs: none, endpoint-independent (masquerade), endpoint-
dependent (masquerade fully-random), and one that hairpins."""
import json
import re
import subprocess

import pytest

from ztna import ZTNA, Intermediate, Pki, netns_prefix

DIAG_PORT = 4435


@pytest.fixture
def pki(tmp_path):
    p = Pki(tmp_path / "pki")
    p.agent = p.issue("agent", "alice", "--service", "web")
    return p


def topology(net, pki, nat_kind, diag_port=DIAG_PORT):
    """host 192.0.2.2 -- nat -- inet (intermediate 198.51.100.10); pub
    203.0.113.20 sits on the internet side without NAT."""
    host, nat, inet, pub = (net.ns("host"), net.ns("nat"), net.ns("inet"),
                            net.ns("pub"))
    _, lan_if = net.link(host, "192.0.2.2/28", nat, "192.0.2.1/28")
    _, out_if = net.link(inet, "198.51.100.10/24", nat, "198.51.100.2/24")
    net.link(inet, "203.0.113.10/24", pub, "203.0.113.20/24")
    net.route(host, "default", "192.0.2.1")
    net.route(pub, "default", "203.0.113.10")
    net.nat(nat, out_if, hard=(nat_kind == "hard"))
    if nat_kind == "hairpin":
        # What hairpinning NATs do: a packet from inside to the public
        # address goes back in (DNAT, port kept as masquerade keeps it),
        # seemingly from the NAT (SNAT), so replies return through it.
        net.exec(nat, ["nft", "-f", "-"], input="""
table ip hairpin {
 chain pre {
  type nat hook prerouting priority -100;
  iifname "%(lan)s" ip daddr 198.51.100.2 meta l4proto udp dnat to 192.0.2.2
 }
 chain post {
  type nat hook postrouting priority 100;
  oifname "%(lan)s" ip saddr 192.0.2.0/28 masquerade
 }
}
""" % {"lan": lan_if})
    extra = ("--diag-port", str(diag_port)) if diag_port else ()
    inter = Intermediate(pki, ns=inet, extra=extra)
    return host, pub, inter


def diag(ns, pki, *args):
    cmd = netns_prefix(ns) + [
        ZTNA, "diag", "punch", "--server", "198.51.100.10:4433", "--cert",
        pki.agent[0], "--key", pki.agent[1], "--ca", pki.ca] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def diag_json(ns, pki, *args):
    p = diag(ns, pki, "--json", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("run", range(2))
def test_endpoint_independent_nat(net, pki, run):
    host, _, inter = topology(net, pki, "easy")
    try:
        r = diag_json(host, pki)
        assert r["nat"] is True
        assert r["mapping"] == "endpoint-independent"
        assert r["observed"] == r["observed_diag"]
        assert r["observed"].startswith("198.51.100.2:")
        assert r["port_preserved"] is True
        assert r["hairpin"] is False
        assert r["direct"] == "likely"
        assert inter.metric("ztna_diag_connections_total") == 1
    finally:
        inter.stop()


@pytest.mark.parametrize("run", range(2))
def test_endpoint_dependent_nat(net, pki, run):
    host, _, inter = topology(net, pki, "hard")
    try:
        r = diag_json(host, pki)
        assert r["nat"] is True
        assert r["mapping"] == "endpoint-dependent"
        assert r["observed"] != r["observed_diag"]
        assert r["direct"] == "needs-peer"
        # The human form says what it means and what happens.
        p = diag(host, pki)
        assert p.returncode == 0, p.stderr
        assert "maps per destination (symmetric)" in p.stdout
        assert "traffic will use the relay" in p.stdout
    finally:
        inter.stop()


def test_no_nat(net, pki):
    _, pub, inter = topology(net, pki, "easy")
    try:
        # (pub reaches the intermediate on the address facing it: the
        # intermediate answers from the address of the outgoing interface.)
        r = diag_json(pub, pki, "--server", "203.0.113.10:4433")
        assert r["nat"] is False
        assert r["mapping"] == "none"
        assert r["observed"].startswith("203.0.113.20:")
        assert r["hairpin"] is None
        assert r["direct"] == "likely"
    finally:
        inter.stop()


def test_hairpinning_nat(net, pki):
    host, _, inter = topology(net, pki, "hairpin")
    try:
        r = diag_json(host, pki)
        assert r["mapping"] == "endpoint-independent"
        assert r["hairpin"] is True
    finally:
        inter.stop()


def test_without_diag_port_the_mapping_is_unknown(net, pki):
    host, _, inter = topology(net, pki, "easy", diag_port=0)
    try:
        r = diag_json(host, pki)
        assert r["nat"] is True
        assert r["mapping"] == "unknown"
        assert r["observed_diag"] is None
        assert "diag_port" in r["verdict"]
    finally:
        inter.stop()


def test_service_without_connector_is_explained(net, pki):
    # (Punches to a real connector: test_p2p.py.)
    host, _, inter = topology(net, pki, "easy")
    try:
        p = diag(host, pki, "--service", "web")
        assert p.returncode == 3
        assert re.search(r"^mapping +endpoint-independent$", p.stdout,
                         re.M), p.stdout
        assert "service web: no direct path: the intermediate refused: no " \
               "connector for this service" in p.stdout, p.stdout
        assert "check that the service's connector runs" in p.stdout
    finally:
        inter.stop()


def test_errors_are_explained(net, pki, tmp_path):
    host, _, inter = topology(net, pki, "easy")
    try:
        # A certificate from another CA: the intermediate refuses it.
        other = Pki(tmp_path / "other")
        rogue = other.issue("agent", "mallory", "--service", "web")
        cmd = netns_prefix(host) + [
            ZTNA, "diag", "punch", "--server", "198.51.100.10:4433",
            "--cert", rogue[0], "--key", rogue[1], "--ca", pki.ca]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert "did not tell this machine its address" in p.stderr
        # Nobody listening.
        p = diag(host, pki, "--server", "198.51.100.10:9")
        assert p.returncode == 1
        assert "no answer within" in p.stderr
    finally:
        inter.stop()
    p = subprocess.run([ZTNA, "diag", "punch", "--server", "nonsense"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "HOST:PORT" in p.stderr
    p = subprocess.run([ZTNA, "diag"], capture_output=True, text=True)
    assert p.returncode == 1 and "punch" in p.stderr
