"""The end-to-end connection (protocol.md 10): the agent's traffic to a
service travels in a QUIC connection of its own to the connector, which
the intermediate carries as opaque packets of a relay session and cannot
read; the same connection moves to the direct path and back.

The intermediate runs with a test hook (ZTNA_TEST_RECORD_DATAGRAMS) that
appends every DATAGRAM payload it decrypts to a file: what the relay is
able to read at all. A marker sent through the tunnel (an HTTP body, a UDP
payload) must never appear there, nor in the intermediate's memory."""
import json
import os
import re
import signal

import pytest

from datapath import SERVICES, sha256, world_fixture
from ztna import wait_for

RECORD = "/tmp/ztna-e2e-record-%d.bin" % os.getpid()
POLICY = "/tmp/ztna-e2e-policy-%d.json" % os.getpid()


CPOLICY = "/tmp/ztna-e2e-cpolicy-%d.json" % os.getpid()


def policy_file(path, service, allow):
    """Every service open to every agent, but service to those listed."""
    svcs = {k: {"allow": ["*"]} for k in SERVICES}
    svcs[service] = {"allow": allow}
    with open(path, "w") as f:
        json.dump({"services": svcs}, f)


def write_policy(web):
    """The intermediate's: web to the agents listed."""
    policy_file(POLICY, "web", web)


def write_conn_policy(redis):
    """The connector's own copy: redis to the agents listed."""
    policy_file(CPOLICY, "redis", redis)


write_policy(["*"])
write_conn_policy(["*"])
world = world_fixture("e2e", inter_env={"ZTNA_TEST_RECORD_DATAGRAMS":
                                         RECORD},
                      inter_extra=("--policy", POLICY),
                      conn_extra={"policy_path": CPOLICY})

MARKER = ("ztna-marker-" + os.urandom(12).hex()).encode()

UDP_MARK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
m = sys.argv[1].encode()
for i in range(20):
    s.sendto(m + b"-%d" % i, ("10.100.0.4", 7))
    try:
        d, _ = s.recvfrom(2048)
    except socket.timeout:
        continue
    if d.startswith(m):
        print("echoed")
        break
"""


def process_memory(pid):
    """Every readable, writable mapping of a process: what a memory dump
    of it would hold."""
    out = []
    with open("/proc/%d/maps" % pid) as maps, \
            open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            if not m or m.group(3)[:2] != "rw":
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            try:
                mem.seek(start)
                out.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                pass
    return b"".join(out)


def marked_file(world):
    path = world.make_file("marked.bin", 0)
    with open(path, "wb") as f:
        for _ in range(2000):
            f.write(MARKER + b"\n" + os.urandom(200) + b"\n")
    return path


def send_marked(world, src):
    out = os.path.join(world.tmp, "marked.got")
    p = world.run(["curl", "-s", "-S", "-m", "60", "-o", out,
                   "http://10.100.0.2/marked.bin"], check=False)
    assert p.returncode == 0, p.stderr
    assert sha256(out) == sha256(src)
    p = world.run(["python3", "-c", UDP_MARK, MARKER.decode()],
                  check=False)
    assert "echoed" in p.stdout, p.stderr


def recorded():
    with open(RECORD, "rb") as f:
        return f.read()


def test_relay_carries_only_ciphertext(world):
    """On the relay path the intermediate forwards relay-session frames it
    cannot read: neither the datagrams it decrypts nor its memory hold the
    user's bytes."""
    world.block_direct()
    try:
        src = marked_file(world)
        wait_for(lambda: world.metric(
            world.agent_ns, 9092,
            'ztna_agent_connection{service="web",state="up"}') == 1,
            timeout=30, what="the end-to-end connection up")
        assert world.path() == "relay"
        before = os.path.getsize(RECORD)
        send_marked(world, src)
        rec = recorded()
        assert len(rec) - before > 400000, "the relay carried the transfer"
        # What it carried were relay-session frames (0x33) of the
        # end-to-end connection; the marker is in none of them.
        assert MARKER not in rec
        assert b"marked.bin" not in rec  # not even the HTTP request
        m = world.inter.metrics()
        assert m["ztna_relay_session_datagrams_total"] > 300
        assert m["ztna_relay_sessions_active"] >= 1
    finally:
        world.unblock_direct()


@pytest.mark.skipif(bool(os.environ.get("ZTNA_SAN_REPORTS")),
                    reason="an ASan build maps terabytes of address space "
                    "(shadow, allocator): the dump is taken in the plain "
                    "pass")
def test_intermediate_memory_holds_no_user_bytes(world):
    """A memory dump of the intermediate after the relayed transfer of
    the test above: every writable mapping, and no marker in it."""
    mem = process_memory(world.inter.proc.pid)
    assert len(mem) > 1 << 20
    assert MARKER not in mem
    # The dump would show it if the intermediate had held it: the marker
    # is in the agent's memory, which took the same transfer.
    assert MARKER in process_memory(world.procs["agent"].pid)


def test_same_connection_moves_to_direct(world):
    """The connection that began on the relay moves to the direct path by
    migration: the connector counts no new connection, and traffic no
    longer crosses the intermediate."""
    conns = world.metric(world.conn_ns, 9091,
                         "ztna_connector_e2e_connections_total")
    wait_for(lambda: world.path() == "direct", timeout=90,
             what="the agent on the direct path")
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_e2e_connections_total") == conns
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_direct_connections_total") >= 1
    src = marked_file(world)
    before = os.path.getsize(RECORD)
    send_marked(world, src)
    # Nothing but keepalives and signaling crossed the relay meanwhile.
    assert os.path.getsize(RECORD) - before < 20000
    assert MARKER not in recorded()


def web_code(world):
    p = world.run(["curl", "-s", "-m", "5", "-o", "/dev/null", "-w",
                   "%{http_code}", "http://10.100.0.2/whoami"], check=False)
    return p.stdout


def test_revoked_agent_loses_both_paths_and_comes_back(world):
    """A policy reload at the intermediate takes web from alice while her
    connection runs directly: the relay session ends as revoked (every
    session to web's connector: her connection there may carry web), the
    agent and the connector close the connection, and nothing reaches web
    by either path until the policy allows it again."""
    wait_for(lambda: world.path() == "direct", timeout=90,
             what="the agent on the direct path")
    assert web_code(world) == "200"
    closed = world.metric(world.conn_ns, 9091,
                          "ztna_connector_e2e_connections_total")
    write_policy(["nobody"])
    world.inter.signal(signal.SIGHUP)
    wait_for(lambda: web_code(world) == "000", timeout=30,
             what="web cut off")
    assert world.metric(world.agent_ns, 9092,
                        'ztna_agent_connection{service="web",state="up"}') \
        == 0
    with open(world.conn_log.name) as f:
        assert "revoked" in f.read()
    # Other services go on: they shared web's connection, which closed
    # with the revocation, and are back on a new one within seconds.
    wait_for(lambda: world.run(["ping", "-c", "1", "-W", "1", "10.100.0.3"],
                               check=False).returncode == 0, timeout=15,
             what="redis on a new connection")
    # Still nothing a while later (the agent keeps asking and is refused).
    for _ in range(5):
        assert web_code(world) == "000"
    write_policy(["*"])
    world.inter.signal(signal.SIGHUP)
    wait_for(lambda: web_code(world) == "200", timeout=90,
             what="web back once the policy allows it")
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_e2e_connections_total") > closed


def test_revocation_reaches_connections_no_session_leads_to(world):
    """An agent's end-to-end connection may run where no relay session the
    intermediate could end leads to it (directly, by an agent that ignores
    the intermediate's word). Here one is made straight to the connector
    with alice's certificate; when the intermediate's policy takes web
    from alice, it tells web's connector whose access ended, and the
    connector closes that connection too, with a reason."""
    from ztna import Client
    wait_for(lambda: web_code(world) == "200", timeout=60, what="web")
    c = Client("192.0.2.18:4434", world.pki, cert=world.agent_certs["alice"],
               ns=world.conn_ns, sni="ztna-connector", alpn="ztna-e2e-v1")
    try:
        c.expect("up ", timeout=20)
        revoked = world.metric(world.conn_ns, 9091,
                               "ztna_connector_revoked_connections_total")
        write_policy(["nobody"])
        world.inter.signal(signal.SIGHUP)
        ev = c.expect("closed", timeout=30)
        assert "revoked" in ev, ev
        assert world.metric(world.conn_ns, 9091,
                            "ztna_connector_revoked_connections_total") \
            > revoked
    finally:
        c.close()
        write_policy(["*"])
        world.inter.signal(signal.SIGHUP)
    wait_for(lambda: web_code(world) == "200", timeout=90,
             what="web back once the policy allows it")


def ping(world, vip):
    p = world.run(["ping", "-c", "1", "-W", "2", vip], check=False)
    return p.returncode == 0


def test_connector_policy_revokes_and_readmits(world):
    """The connector applies its own copy of the policy: a reload there
    that no longer lists alice for redis cuts redis off on her connection,
    whatever the intermediate allows; her other services go on; a reload
    that lists her again brings redis back on the same connection."""
    wait_for(lambda: ping(world, "10.100.0.3"), timeout=60,
             what="redis reachable")
    conn = world.procs["connector"]
    write_conn_policy(["nobody"])
    conn.send_signal(signal.SIGHUP)
    wait_for(lambda: not ping(world, "10.100.0.3"), timeout=30,
             what="redis cut off by the connector")
    assert ping(world, "10.100.0.4")  # echo: untouched
    with open(world.conn_log.name) as f:
        assert "no longer lets it reach 'redis'" in f.read()
    write_conn_policy(["*"])
    conn.send_signal(signal.SIGHUP)
    wait_for(lambda: ping(world, "10.100.0.3"), timeout=30,
             what="redis back")
    with open(world.conn_log.name) as f:
        assert "lets it reach 'redis' again" in f.read()


def test_certificate_that_ends_cuts_the_agent_off(world):
    """An agent certificate that ends while its agent is connected: the
    intermediate and the connector close its connections, the end-to-end
    one on whatever path it runs, within seconds, and it gets nothing
    through any more."""
    import time
    from datetime import datetime, timedelta, timezone
    net = world.net
    end = datetime.now(timezone.utc) + timedelta(seconds=25)
    world.agent_certs["dave"] = world.pki.issue(
        "agent", "dave", "--service", "*",
        "--not-after", end.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ns = net.ns("agent9")
    net.link(ns, "192.0.2.194/28", world.nat_a, "192.0.2.193/28")
    net.route(ns, "default", "192.0.2.193")
    agent = world.start_agent("agent9", ns, "dave", port=9098)
    try:
        def code():
            p = net.exec(ns, ["curl", "-s", "-m", "3", "-o", "/dev/null",
                              "-w", "%{http_code}",
                              "http://10.100.0.2/whoami"], check=False)
            return p.stdout
        wait_for(lambda: code() == "200", timeout=20, what="dave reaches web")
        wait_for(lambda: world.path("web", "agent9") == "direct",
                 timeout=20, what="dave on the direct path")
        left = (end - datetime.now(timezone.utc)).total_seconds()
        assert left > 0, "the certificate ended before the test could start"
        time.sleep(left)
        t0 = time.time()
        wait_for(lambda: code() == "000", timeout=30,
                 what="dave cut off once his certificate ended")
        print("cut off %.1f s after the end" % (time.time() - t0))
        with open(world.conn_log.name) as f:
            assert [ln for ln in f if "agent dave" in ln and
                    "its certificate expired: closing" in ln]
        assert "(dave): its certificate expired" in world.inter.logtext()
        for _ in range(3):
            assert code() == "000"
    finally:
        agent.terminate()
        assert agent.wait(30) == 0


def test_no_downgrade_to_raw_ip(world):
    """An intermediate (or a connector of the original kind that takes the
    service) answering "no relay sessions here" would have ztna agents
    send raw IP it can read. By default the agent refuses: nothing of the
    service reaches the intermediate readable, and the service comes back
    end to end once a connector takes sessions again. The rogue takes the
    service whose connection the others ride on (a service riding on it
    asks the intermediate nothing: a rogue registration for it changes
    nothing); those others move to a connection of their own and go on.
    Runs last here: the service is away for a while."""
    from ztna import Client
    svc = world.host_service()
    vip = SERVICES[svc][0]
    rogue = Client("198.51.100.10:4433", world.pki, cert=world.conn_cert,
                   ns=world.inet)
    try:
        rogue.expect("up ", timeout=20)
        rogue.send("reg connector " + svc)  # no sessions flag: original kind
        rogue.expect("ack", timeout=20)
        before = os.path.getsize(RECORD)
        wait_for(lambda: "its traffic is refused rather than sent as raw IP"
                 in open(world.procs["agent"].log.name).read(), timeout=30,
                 what="the agent refusing raw IP")
        # Nothing of the service reaches the rogue, by any protocol.
        world.run(["ping", "-c", "2", "-W", "1", "-p",
                   MARKER[:16].hex(), vip], check=False)
        world.run(["curl", "-s", "-m", "3", "-d", MARKER.decode(),
                   "http://%s/" % vip], check=False)
        rogue.quiet("dgram", 2.0)
        # The other services go on end to end (echo among them).
        wait_for(lambda: "echoed" in world.run(
            ["python3", "-c", UDP_MARK, MARKER.decode()],
            check=False).stdout, timeout=60, what="echo on its own")
        assert MARKER not in recorded()[before:]
    finally:
        rogue.close()
    # The real connector serves it again: back end to end.
    wait_for(lambda: world.run(["ping", "-c", "1", "-W", "2", vip],
                               check=False).returncode == 0,
             timeout=60, what="the service back end to end")
    assert MARKER not in recorded()
