"""The direct path end to end: the agent punches to the connector as soon
as it is registered, moves traffic to the direct connection, falls back to
the relay when the direct path goes dark in the middle of a transfer, and
comes back to direct after the cooldown, with the transfer intact; the
connector refuses direct connections its services are not granted to.

The intermediate's relayed-bytes counter shows which path data takes."""
import os
import subprocess
import time


from datapath import sha256, world_fixture
from ztna import Client, udp4, wait_for

world = world_fixture("direct")


def relayed(w):
    m = w.inter.metrics()
    assert "ztna_relay_bytes_total" in m, sorted(m)
    return m["ztna_relay_bytes_total"]


def test_direct_after_registration(world):
    wait_for(lambda: world.path() == "direct", timeout=30,
             what="the agent on the direct path")
    # The punch itself took well under the 3 s the design allows.
    ms = world.metric(world.agent_ns, 9092,
                      'ztna_agent_punch_duration_ms{service="web"}')
    print("punch took %d ms" % ms)
    assert 0 < ms < 3000
    # Data takes the direct path both ways: nothing goes through the
    # intermediate while 10 MB come down.
    src = world.make_file("ten.bin", 10 << 20)
    out = os.path.join(world.tmp, "ten.got")
    before = relayed(world)
    p = world.run(["curl", "-s", "-S", "-m", "60", "-o", out,
                   "http://10.100.0.2/ten.bin"], check=False)
    assert p.returncode == 0, p.stderr
    assert sha256(out) == sha256(src)
    assert relayed(world) - before < 20000, relayed(world) - before
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_direct_connections") >= 1
    # The connector sees the same: this agent of web is on the direct path.
    assert world.metric(world.conn_ns, 9091, 'ztna_connector_agents{service='
                        '"web",path="direct"}') == 1
    assert world.metric(world.agent_ns, 9092,
                        "ztna_agent_direct_packets_received_total") > 5000


def test_fallback_and_return_during_one_transfer(world):
    """One long download: direct, then the direct path is blocked (back to
    the relay), then unblocked (direct again after the cooldown); the file
    arrives whole."""
    wait_for(lambda: world.path() == "direct", timeout=60, what="direct")
    src = world.make_file("long.bin", 100 << 20)
    out = os.path.join(world.tmp, "long.got")
    fallbacks = world.metric(world.agent_ns, 9092,
                             'ztna_agent_direct_fallbacks_total'
                             '{service="web"}')
    curl = world.net.popen(world.agent_ns, [
        "curl", "-s", "-S", "-m", "180", "--limit-rate", "2M", "-o", out,
        "http://10.100.0.2/long.bin"], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # let the transfer run on the direct path
        world.block_direct()
        t0 = time.time()
        wait_for(lambda: world.path() != "direct", timeout=30,
                 what="the fallback to the relay")
        took = time.time() - t0
        print("fell back to the relay after %.1f s" % took)
        assert took < 10  # 1.5 s of silence by design; generous here
        assert world.metric(world.agent_ns, 9092,
                            'ztna_agent_direct_fallbacks_total'
                            '{service="web"}') == fallbacks + 1
        # The transfer goes on through the intermediate.
        b = relayed(world)
        wait_for(lambda: relayed(world) - b > 1 << 20, timeout=30,
                 what="the transfer moving through the relay")
        world.unblock_direct()
        # Back to direct after the cooldown (30 s), mid-transfer.
        wait_for(lambda: world.path() == "direct", timeout=90,
                 what="the return to the direct path")
        assert curl.poll() is None, "the transfer ended before the return"
        time.sleep(1)
        b = relayed(world)
        time.sleep(2)
        assert relayed(world) - b < 100000, relayed(world) - b
        assert curl.wait(timeout=150) == 0, curl.stderr.read()
    finally:
        if curl.poll() is None:
            curl.kill()
        world.unblock_direct()
    assert sha256(out) == sha256(src)


def test_connector_refuses_unauthorized_direct_connections(world):
    # From the connector's own LAN (no NAT in the way): eve's certificate
    # grants no service of this connector.
    eve = world.agent_certs["eve"]
    c = Client("192.0.2.18:4434", world.pki, cert=eve, ns=world.conn_ns,
               sni="ztna-connector", alpn="ztna-e2e-v1")
    try:
        ev = c.expect("closed", timeout=20)
        assert "not authorized" in ev, ev
    finally:
        c.close()
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_direct_rejected_total") >= 1
    # The intermediate's protocol is no way in either.
    c = Client("192.0.2.18:4434", world.pki, cert=world.agent_certs["alice"],
               ns=world.conn_ns, sni="ztna-connector")
    try:
        ev = c.expect("closed", timeout=20)
        assert " 120 " in ev, ev  # TLS alert: no application protocol
    finally:
        c.close()
    # alice's own connection, made directly, is an agent like any other:
    # the connection is her identity (no relay path needed to vouch).
    alice = world.agent_certs["alice"]
    c = Client("192.0.2.18:4434", world.pki, cert=alice, ns=world.conn_ns,
               sni="ztna-connector", alpn="ztna-e2e-v1")
    try:
        c.expect("up ", timeout=20)
        probe = udp4("100.64.0.1", "10.100.0.4", 40000, 7, b"hello")
        # First the connector lists what the connection may carry
        # (SERVICES, protocol.md 10): her services of this connector.
        ev = c.expect("dgram", timeout=20)
        assert ev.split()[1].startswith("36"), ev
        assert b"\x04echo".hex() in ev and b"\x03web".hex() in ev, ev
        c.send("routed echo " + probe.hex())
        ev = c.expect("dgram", timeout=20)
        assert b"hello".hex() in ev, ev
    finally:
        c.close()


def test_new_relay_connection_while_direct_keeps_fallback_safe(world):
    """The agent's relay connection is replaced while it is on the direct
    path, and the intermediate gives it a new address (another agent took
    the old one). Falling back to the relay must then still reach this
    agent, keep its download running, and never reach the other agent."""
    wait_for(lambda: world.path() == "direct", timeout=60, what="direct")
    sessions = world.metric(world.agent_ns, 9092,
                            'ztna_agent_relay_sessions_total{service="web"}')
    guard = """
table ip relay_guard {
 chain fwd_filter {
  type filter hook forward priority 0;
  ip daddr 198.51.100.10 meta l4proto udp drop
 }
}
"""
    # Cut the agent off the intermediate, which restarts meanwhile.
    world.net.exec(world.nat_a, ["nft", "-f", "-"], input=guard)
    world.inter.proc.kill()
    world.inter.proc.wait()
    from ztna import Intermediate
    world.inter = Intermediate(world.pki, ns=world.inet, logdir=world.tmp,
                               extra=("--diag-port", "4435"))
    # Another agent (bob, from the intermediate's own network) is the first
    # to be relayed, so it gets the address alice had.
    bob = Client("198.51.100.10:4433", world.pki,
                 cert=world.agent_certs["bob"], ns=world.inet)
    try:
        bob.expect("up ", timeout=30)
        bob.send("reg agent echo")
        assert bob.expect("ack") == "ack echo"
        probe = udp4("100.64.0.1", "10.100.0.4", 40001, 7, b"bob").hex()

        def bob_echoed():
            bob.send("routed echo " + probe)
            try:
                bob.expect("dgram", timeout=0.5)
                return True
            except AssertionError:
                return False
        wait_for(bob_echoed, timeout=45, what="bob relayed")
        # Alice's agent comes back through a new relay connection and gets
        # a new relay session for the connection that stays direct.
        world.net.exec(world.nat_a, ["nft", "delete", "table", "ip",
                                     "relay_guard"])
        wait_for(lambda: world.metric(
            world.agent_ns, 9092,
            'ztna_agent_relay_sessions_total{service="web"}') > sessions,
            timeout=60, what="a new relay session")
        assert world.path() == "direct"
        # Now the direct path goes dark in the middle of a download.
        src = world.make_file("relink.bin", 30 << 20)
        out = os.path.join(world.tmp, "relink.got")
        curl = world.net.popen(world.agent_ns, [
            "curl", "-s", "-S", "-m", "120", "--limit-rate", "3M", "-o", out,
            "http://10.100.0.2/relink.bin"], stderr=subprocess.PIPE,
            text=True)
        try:
            time.sleep(2)
            world.block_direct()
            wait_for(lambda: world.path() != "direct", timeout=30,
                     what="the fall back to the relay")
            assert curl.wait(timeout=120) == 0, curl.stderr.read()
        finally:
            if curl.poll() is None:
                curl.kill()
            world.unblock_direct()
        assert sha256(out) == sha256(src)
        # Nothing of alice's reached bob (bob's own echoes end in "bob").
        end = time.time() + 1
        while time.time() < end:
            bob._pump(0.1)
        stray = [e for e in bob.events
                 if e.startswith("dgram") and not e.endswith(b"bob".hex())]
        assert not stray, stray[:3]
    finally:
        bob.close()
        world.net.exec(world.nat_a, ["nft", "delete", "table", "ip",
                                     "relay_guard"], check=False)
