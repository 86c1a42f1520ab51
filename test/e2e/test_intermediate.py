"""The intermediate with real processes: QAD (also behind a real NAT, and
after the NAT rebinds), registration, deny by default, relay with per-agent
translation, signaling, Retry, SIGHUP, SIGTERM and metrics.

Every test runs in namespaces of its own, so ports never collide."""
import os
import re
import signal
import struct
import subprocess
import time

import pytest

from ztna import Client, Intermediate, Pki, parse_udp4, udp4, wait_for

SERVER = "127.0.0.1:4433"


@pytest.fixture
def pki(tmp_path):
    p = Pki(tmp_path / "pki")
    p.agent = p.issue("agent", "alice", "--service", "echo")
    p.agent2 = p.issue("agent", "bob", "--service", "echo")
    p.connector = p.issue("connector", "conn", "--service", "echo")
    p.outsider = p.issue("agent", "eve", "--service", "other")
    return p


@pytest.fixture
def lone(net):
    """One namespace: its own loopback for the intermediate and clients."""
    return net.ns("lone")


@pytest.fixture
def inter(lone, pki, request):
    extra = getattr(request, "param", ())
    i = Intermediate(pki, ns=lone, extra=extra)
    yield i
    i.stop()


@pytest.fixture
def clients():
    made = []
    yield made
    for c in made:
        c.close()


def client(clients, pki, ns, cert, **kw):
    c = Client(kw.pop("server", SERVER), pki, cert=cert, ns=ns, **kw)
    clients.append(c)
    c.expect("up ")
    return c


def test_qad_reports_the_real_source(lone, pki, inter, clients):
    a = client(clients, pki, lone, pki.agent, bind="127.0.0.1:40001")
    assert a.expect("qad ") == "qad 127.0.0.1 40001"
    assert inter.metric("ztna_qad_sent_total") == 1


def test_registration(lone, pki, inter, clients):
    a = client(clients, pki, lone, pki.agent)
    a.send("reg agent echo")
    assert a.expect("ack") == "ack echo"
    # Duplicates are ACKed too.
    a.send("reg agent echo")
    assert a.expect("ack") == "ack echo"
    # The certificate grants agent.echo only: deny by default.
    a.send("reg connector echo")
    assert a.expect("nack") == "nack 2 " + b"echo".hex()
    a.send("reg agent other")
    assert a.expect("nack") == "nack 2 " + b"other".hex()
    # Malformed: empty id, invalid UTF-8 (echoed), too short (no answer).
    a.send("raw 1000")
    assert a.expect("nack") == "nack 1 -"
    a.send("raw 100361c328")
    assert a.expect("nack") == "nack 1 61c328"
    a.send("raw 10056162")
    a.quiet("nack", 1.0)
    # The connection stays open after a denial.
    a.send("reg agent echo")
    assert a.expect("ack") == "ack echo"
    m = inter.metrics()
    assert m["ztna_registrations_total"] == 3
    assert m["ztna_registration_rejections_total"] == 2
    assert m["ztna_registration_invalid_total"] == 2
    assert m['ztna_drops_total{reason="malformed"}'] == 1
    assert m['ztna_service_agents{service="echo"}'] == 1
    assert m['ztna_service_connector_present{service="echo"}'] == 0
    # Each refusal is explained in the log, with what to fix.
    log = inter.logtext()
    assert re.search(r"registration as connector for 'echo' refused: its "
                     r"certificate has no SAN granting it", log), log
    assert "registration as agent for 'other' refused: its certificate" in log
    assert "registration as agent for '' refused: not a valid service" in log
    assert "registration as agent for 'a\\xc3(' refused" in log


def server_only_cert(pki, name):
    """A certificate of the deployment's CA for serverAuth only (openssl:
    ztna keygen makes none such any more)."""
    d = str(pki.dir)
    key, csr, crt = ("%s/%s.%s" % (d, name, x) for x in ("key", "csr", "crt"))
    ext = "%s/%s.ext" % (d, name)
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:ztna-server\n")
    for cmd in (["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out",
                 csr, "-subj", "/CN=" + name],
                ["openssl", "x509", "-req", "-in", csr, "-CA", pki.ca,
                 "-CAkey", d + "/ca.key", "-CAcreateserial", "-days", "30",
                 "-extfile", ext, "-out", crt]):
        subprocess.run(cmd, check=True, capture_output=True)
    return crt, key


def test_server_certificate_is_no_client_certificate(lone, pki, inter,
                                                     clients):
    # A certificate of the deployment, but only for serverAuth: the
    # handshake fails with bad_certificate (42) before anything else.
    stray = server_only_cert(pki, "stray")
    c = Client(SERVER, pki, cert=stray, ns=lone)
    clients.append(c)
    assert c.expect("closed ") == "closed 0 0 298 42 -"
    assert not [e for e in c.events if e.startswith("up ")]


def test_intermediate_certificate_outside_a_cluster(lone, pki, inter,
                                                    clients):
    # An intermediate's certificate (serverAuth and clientAuth) as a
    # client of an intermediate that is in no cluster: it connects, as
    # any certificate of the CA does, and is no cluster link: it can
    # register nothing and opens no relay session.
    other = pki.issue("intermediate", "other-member")
    c = client(clients, pki, lone, other)
    c.send("reg connector echo")
    assert c.expect("nack").startswith("nack 2 ")
    c.send("raw " + (b"\x31\x00\x00\x00\x01\x04echo").hex())
    # OPENED, request 1: denied (2), no session.
    assert c.expect("dgram ") == "dgram 32" "00000001" "02" + "00" * 8


def test_relay_with_translation(lone, pki, inter, clients):
    conn = client(clients, pki, lone, pki.connector)
    conn.send("reg connector echo")
    conn.expect("ack")
    a = client(clients, pki, lone, pki.agent)
    b = client(clients, pki, lone, pki.agent2)
    for x in (a, b):
        x.send("reg agent echo")
        x.expect("ack")
    assert inter.metric(
        'ztna_service_connector_present{service="echo"}') == 1
    # Both agents use the same tunnel address and port.
    a.send("routed echo " + udp4("100.64.0.1", "10.100.0.1", 5000, 7,
                                 b"from-a").hex())
    b.send("routed echo " + udp4("100.64.0.1", "10.100.0.1", 5000, 7,
                                 b"from-b").hex())
    got = {}
    for _ in range(2):
        pkt = bytes.fromhex(conn.expect("dgram ").split()[1])
        src, dst, sport, dport, payload = parse_udp4(pkt)
        assert dst == "10.100.0.1" and (sport, dport) == (5000, 7)
        assert src.startswith("100.") and src != "100.64.0.1"
        got[payload] = src
    assert set(got) == {b"from-a", b"from-b"}
    assert got[b"from-a"] != got[b"from-b"]
    # Replies go back by translated address, each to its own agent only.
    for payload, src in got.items():
        reply = b"reply-" + payload[-1:]
        conn.send("raw " + udp4("10.100.0.1", src, 7, 5000, reply).hex())
    for x, want in ((a, b"reply-a"), (b, b"reply-b")):
        pkt = bytes.fromhex(x.expect("dgram ").split()[1])
        src, dst, sport, dport, payload = parse_udp4(pkt)
        assert (src, dst, sport, dport) == ("10.100.0.1", "100.64.0.1", 7,
                                            5000)
        assert payload == want
    a.quiet("dgram", 0.5)
    b.quiet("dgram", 0.5)
    # A raw packet from an agent with one service goes to its connector.
    a.send("raw " + udp4("100.64.0.1", "10.100.0.1", 5001, 7, b"raw").hex())
    assert parse_udp4(bytes.fromhex(conn.expect("dgram ").split()[1]))[4] \
        == b"raw"
    m = inter.metrics()
    assert m["ztna_datagrams_relayed_total"] == 5
    assert m["ztna_relay_bytes_total"] == 2 * 34 + 2 * 35 + 31


def test_relay_drops_are_counted(lone, pki, inter, clients):
    conn = client(clients, pki, lone, pki.connector)
    conn.send("reg connector echo")
    conn.expect("ack")
    eve = client(clients, pki, lone, pki.outsider)
    pkt = udp4("100.64.0.1", "10.100.0.1", 5000, 7, b"x").hex()
    eve.send("routed echo " + pkt)       # not allowed to reach echo
    eve.send("raw " + pkt)               # registered nothing
    conn.send("raw " + udp4("10.100.0.1", "100.64.200.1", 7, 5000,
                            b"x").hex())  # nobody has that address
    conn.send("raw 45")                  # not an IP packet
    wait_for(lambda: inter.metric('ztna_drops_total{reason="malformed"}')
             == 1, what="drop counters")
    m = inter.metrics()
    assert m['ztna_drops_total{reason="denied"}'] == 1
    assert m['ztna_drops_total{reason="not_registered"}'] == 1
    assert m['ztna_drops_total{reason="no_route"}'] == 1
    conn.quiet("dgram", 0.5)
    assert "datagram dropped: denied" in inter.logtext()


def test_newest_connector_wins(lone, pki, inter, clients):
    old = client(clients, pki, lone, pki.connector)
    old.send("reg connector echo")
    old.expect("ack")
    new = client(clients, pki, lone, pki.connector)
    new.send("reg connector echo")
    new.expect("ack")
    a = client(clients, pki, lone, pki.agent)
    a.send("reg agent echo")
    a.expect("ack")
    a.send("routed echo " + udp4("100.64.0.1", "10.100.0.1", 1, 2,
                                 b"n").hex())
    new.expect("dgram ")
    old.quiet("dgram", 0.5)


# --- signaling ---------------------------------------------------------------

def frame(payload):
    return (struct.pack(">I", len(payload)) + payload).hex()


def offer(sid, service):
    s = service.encode()
    return frame(struct.pack("<IQQ", 0, sid, len(s)) + s +
                 struct.pack("<Q", 0))


def answer(sid):
    return frame(struct.pack("<IQQ", 1, sid, 0))


def sig_messages(client_, n):
    """Reads n framed signaling messages; returns (tag, first u64) pairs."""
    data = b""
    out = []
    while len(out) < n:
        data += bytes.fromhex(client_.expect("sig ").split()[1])
        while len(data) >= 4 and len(data) >= 4 + struct.unpack(
                ">I", data[:4])[0]:
            ln = struct.unpack(">I", data[:4])[0]
            p, data = data[4:4 + ln], data[4 + ln:]
            tag = struct.unpack("<I", p[:4])[0]
            if tag == 4:  # Error: Option<u64>, code
                has = p[4]
                sid = struct.unpack("<Q", p[5:13])[0] if has else None
                code = struct.unpack("<I", p[13 if has else 5:][:4])[0]
                out.append((tag, sid, code))
            else:
                out.append((tag, struct.unpack("<Q", p[4:12])[0], p))
    return out


def test_signaling(lone, pki, inter, clients):
    a = client(clients, pki, lone, pki.agent)
    a.send("reg agent echo")
    a.expect("ack")
    # No connector yet: Error NoConnectorAvailable (2).
    a.send("sig " + offer(7, "echo"))
    assert sig_messages(a, 1)[0] == (4, 7, 2)
    conn = client(clients, pki, lone, pki.connector)
    conn.send("reg connector echo")
    conn.expect("ack")
    a.send("sig " + offer(8, "echo"))
    # The offer reaches the connector on a stream the intermediate opened.
    tag, sid, _ = sig_messages(conn, 1)[0]
    assert (tag, sid) == (0, 8)
    # An answer from anyone but that connector is refused (no hijack).
    a.send("sig " + answer(8))
    assert sig_messages(a, 1)[0] == (4, 8, 3)
    conn.send("sig " + answer(8))
    for x in (a, conn):
        tag, sid, p = sig_messages(x, 1)[0]
        assert (tag, sid) == (2, 8)
        assert struct.unpack("<Q", p[12:20])[0] == 100  # start delay, ms
    assert inter.metric("ztna_signaling_sessions_total") == 1


def test_signaling_session_expires(lone, pki, inter, clients):
    conn = client(clients, pki, lone, pki.connector)
    conn.send("reg connector echo")
    conn.expect("ack")
    a = client(clients, pki, lone, pki.agent)
    a.send("reg agent echo")
    a.expect("ack")
    a.send("sig " + offer(9, "echo"))
    sig_messages(conn, 1)
    # No answer: after 5 s the agent hears SessionTimeout (4).
    assert sig_messages(a, 1)[0] == (4, 9, 4)
    assert inter.metric("ztna_signaling_sessions_active") == 0


# --- operations ---------------------------------------------------------------

def test_retry_is_on_by_default(lone, pki, inter, clients):
    client(clients, pki, lone, pki.agent)
    assert inter.metric("ztna_retry_tokens_validated") == 1


@pytest.mark.parametrize("inter", [("--disable-retry",)], indirect=True)
def test_retry_can_be_disabled(lone, pki, inter, clients):
    client(clients, pki, lone, pki.agent)
    assert inter.metric("ztna_retry_tokens_validated") == 0


def test_sighup_reloads_certificates(lone, pki, inter, clients):
    old = client(clients, pki, lone, pki.agent)
    # A new certificate in the same files.
    pki.issue("intermediate", "relay", "--ip", "127.0.0.1", "--dns",
              "v2.relay.test")
    inter.signal(signal.SIGHUP)
    wait_for(lambda: inter.metric("ztna_reloads_total") == 1, what="reload")
    new = Client(SERVER, pki, cert=pki.agent, ns=lone)
    clients.append(new)
    assert "v2.relay.test" in new.expect("up ")
    # The connection made before the reload is still up.
    old.send("reg agent echo")
    assert old.expect("ack") == "ack echo"


def test_sighup_with_a_bad_file_keeps_the_old(lone, pki, inter, clients):
    with open(inter.cert, "w") as f:
        f.write("not a certificate\n")
    inter.signal(signal.SIGHUP)
    wait_for(lambda: inter.metric("ztna_reload_failures_total") == 1,
             what="failed reload")
    assert "reload failed: keeping" in inter.logtext()
    client(clients, pki, lone, pki.agent)


def test_sigterm_closes_every_connection(lone, pki, inter, clients):
    a = client(clients, pki, lone, pki.agent)
    b = client(clients, pki, lone, pki.connector)
    t0 = time.time()
    inter.signal(signal.SIGTERM)
    for x in (a, b):
        # Closed by the peer, application code 0, with the reason.
        assert x.expect("closed ") == "closed 0 1 0 0 server shutting down"
    assert inter.proc.wait(timeout=5) == 0
    assert time.time() - t0 < 3.5


def test_check_mode(pki, tmp_path):
    from ztna import ZTNA
    cert, key = pki.issue("intermediate", "chk")
    p = subprocess.run([ZTNA, "intermediate", "-n", "--cert", cert, "--key",
                        key, "--ca", pki.ca], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "configuration OK\n"
    p = subprocess.run([ZTNA, "intermediate", "-n", "--cert", cert, "--key",
                        pki.agent[1], "--ca", pki.ca], capture_output=True,
                       text=True)
    assert p.returncode == 1 and "does not match" in p.stderr
    bad = tmp_path / "i.json"
    bad.write_text('{\n  "port": "x"\n}\n')
    p = subprocess.run([ZTNA, "intermediate", "-n", "-c", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "i.json:2:11: port: expected a whole number" in p.stderr


# --- behind a real NAT ------------------------------------------------------------

def nat_topology(net, pki):
    host, nat, inet = net.ns("host"), net.ns("nat"), net.ns("inet")
    net.link(host, "192.0.2.2/28", nat, "192.0.2.1/28")
    _, out_if = net.link(inet, "198.51.100.10/24", nat, "198.51.100.2/24")
    net.route(host, "default", "192.0.2.1")
    net.nat(nat, out_if)
    return host, nat, inet, out_if


def test_qad_behind_nat_and_rebinding(net, pki, clients):
    host, nat, inet, out_if = nat_topology(net, pki)
    inter = Intermediate(pki, ns=inet, bind="198.51.100.10")
    try:
        a = client(clients, pki, host, pki.agent,
                   server="198.51.100.10:4433", bind="192.0.2.2:40000")
        # The observed address is the NAT's public address and port.
        assert a.expect("qad ") == "qad 198.51.100.2 40000"
        # The NAT forgets its mapping and maps the flow anew elsewhere.
        net.nat(nat, out_if,
                action="meta l4proto udp snat to 198.51.100.2:50000")
        a.send("reg agent echo")
        assert a.expect("qad ", timeout=30) == "qad 198.51.100.2 50000"
        assert a.expect("ack") == "ack echo"
        assert inter.metric("ztna_qad_sent_total") == 2
    finally:
        inter.stop()


@pytest.mark.parametrize("inter", [("--max-connections", "1")],
                         indirect=True)
def test_connection_limit(lone, pki, inter, clients):
    client(clients, pki, lone, pki.agent)
    c = Client(SERVER, pki, cert=pki.agent2, ns=lone)
    clients.append(c)
    # CONNECTION_REFUSED (0x2), counted.
    assert c.expect("closed ").startswith("closed 0 0 2 ")
    assert inter.metric("ztna_connections_refused_total") == 1


def test_ipv6_and_ipv4_on_one_socket(lone, pki, clients):
    inter = Intermediate(pki, ns=lone, bind="::")
    try:
        v6 = client(clients, pki, lone, pki.agent, server="[::1]:4433",
                    bind="[::1]:40006")
        # The ztna extension 0x02: an IPv6 observed address.
        assert v6.expect("qad ") == "qad ::1 40006"
        v4 = client(clients, pki, lone, pki.agent2,
                    bind="127.0.0.1:40004")
        assert v4.expect("qad ") == "qad 127.0.0.1 40004"
        conn = client(clients, pki, lone, pki.connector)
        conn.send("reg connector echo")
        conn.expect("ack")
        v6.send("reg agent echo")
        v6.expect("ack")
        v6.send("routed echo " + udp4("100.64.0.1", "10.100.0.1", 1, 2,
                                      b"6").hex())
        assert parse_udp4(bytes.fromhex(conn.expect("dgram ").split()[1]))[4] \
            == b"6"
    finally:
        inter.stop()


def test_policy_file_and_reload(lone, pki, tmp_path, clients):
    policy = tmp_path / "policy.json"
    policy.write_text('{"services": {"echo": {"allow": ["alice"]}}}')
    inter = Intermediate(pki, ns=lone, extra=("--policy", str(policy)))
    try:
        a = client(clients, pki, lone, pki.agent)
        b = client(clients, pki, lone, pki.agent2)
        a.send("reg agent echo")
        assert a.expect("ack") == "ack echo"
        b.send("reg agent echo")
        assert b.expect("nack") == "nack 2 " + b"echo".hex()
        wait_for(lambda: "registration as agent for 'echo' refused: the "
                 "policy file does not list this identity" in
                 inter.logtext(), what="the refusal in the log")
        # Now bob (by group: his OU is "agent") and not alice.
        policy.write_text('{"services": {"echo": {"allow": ["group:agent"]}}}')
        inter.signal(signal.SIGHUP)
        wait_for(lambda: inter.metric("ztna_reloads_total") == 1,
                 what="reload")
        b.send("reg agent echo")
        assert b.expect("ack") == "ack echo"
        # A broken policy is refused and the one in use stays.
        policy.write_text('{"services": {"echo": {"allow": "alice"}}}')
        inter.signal(signal.SIGHUP)
        wait_for(lambda: inter.metric("ztna_reload_failures_total") == 1,
                 what="failed reload")
        assert "services.echo.allow: expected an array of names" in \
            inter.logtext()
        b.send("reg agent echo")
        assert b.expect("ack") == "ack echo"
    finally:
        inter.stop()


def test_bad_addresses_are_explained(pki):
    from ztna import ZTNA
    cert, key = pki.issue("intermediate", "x")
    p = subprocess.run([ZTNA, "intermediate", "--cert", cert, "--key", key,
                        "--ca", pki.ca, "-b", "1.2.3"], capture_output=True,
                       text=True)
    assert p.returncode == 1
    assert "bind address '1.2.3' is not an IPv4 or IPv6 address" in p.stderr


def test_peer_text_never_writes_control_characters_to_the_log(lone, pki,
                                                               inter,
                                                               clients):
    """A peer's close reason is logged; its escape sequences and line
    breaks must not reach the log (a terminal, a forged line)."""
    a = client(clients, pki, lone, pki.agent)
    a.send("reg agent echo")
    assert a.expect("ack") == "ack echo"
    a.send("close 0 bye\x1b[2J\rforged\x07 line")
    wait_for(lambda: "forged" in inter.logtext(), what="the close logged")
    log = inter.logtext()
    assert "\x1b" not in log and "\r" not in log and "\x07" not in log
    assert "bye?[2J?forged? line" in log


@pytest.mark.skipif(bool(os.environ.get("ZTNA_SAN_REPORTS")),
                    reason="ASan keeps freed memory in quarantine, so RSS "
                    "says nothing there")
def test_memory_given_back_after_clients_leave(lone, pki, inter):
    """600 agents connect, register and get a relay session each, then
    all leave: the intermediate gives the memory of their connections
    back to the system (glibc would keep it in its arena, the resident
    size staying at its peak) within a bounded time."""
    from ztna import ROOT, netns_prefix, rss_kb
    c = Client(SERVER, pki, cert=pki.connector, ns=lone)
    z = None
    try:
        c.expect("up")
        c.send("raw 11046563686f7a01")  # connector of echo, sessions
        c.expect("ack")
        base = rss_kb(inter.proc.pid)
        z = subprocess.Popen(netns_prefix(lone) + [
            str(ROOT / "build" / "zload"), "--server", SERVER, "--ca",
            pki.ca, "--cert", pki.agent[0], "--key", pki.agent[1],
            "--service", "echo", "-n", "600"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        opened = None
        for line in z.stdout:
            if line.startswith("opened"):
                opened = int(line.split()[3])
            if line.startswith("ready"):
                break
        assert opened == 600
        peak = rss_kb(inter.proc.pid)
        assert peak - base > 6 * 1024, (base, peak)  # ~22 KB each
        z.stdin.write("quit\n")
        z.stdin.flush()
        z.wait(timeout=30)
        wait_for(lambda: inter.metric("ztna_active_connections") == 1,
                 timeout=60, what="the agents gone")
        wait_for(lambda: rss_kb(inter.proc.pid) - base
                 < (peak - base) / 3, timeout=40,
                 what="the memory given back (peak %d kB over %d)"
                 % (peak - base, base))
    finally:
        if z and z.poll() is None:
            z.kill()
            z.wait()
        c.close()
