"""The relay data path end to end, with real clients through real NAT:
ping, curl, redis-cli, UDP echo and iperf3 from the agent's namespace to
backends behind the connector."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from datapath import SERVICES, download_across, sha256, world_fixture
from ztna import wait_for


world = world_fixture("dp")


def test_ping_100_without_loss(world):
    p = world.run(["ping", "-c", "100", "-i", "0.01", "-W", "2",
                   SERVICES["web"][0]], check=False)
    assert " 0% packet loss" in p.stdout, p.stdout


def test_curl_50mb_sha256(world):
    src = world.make_file("big.bin", 50 << 20)
    out = os.path.join(world.tmp, "got.bin")
    p = world.run(["curl", "-s", "-S", "-m", "120", "-o", out,
                   "http://%s/big.bin" % SERVICES["web"][0]], check=False)
    assert p.returncode == 0, p.stderr
    assert sha256(out) == sha256(src)
    os.unlink(out)


def test_udp_counters_follow_a_transfer(world):
    """The daemons export their UDP endpoints' counters, and they follow
    the traffic: a 10 MB download grows what the connector sent and the
    agent received by at least its size, and the intermediate's both ways
    on the relay path (not on the direct path); the connector writes its
    packets in bursts (GSO)."""
    src = world.make_file("ten.bin", 10 << 20)
    relay = world.path("web") == "relay"

    def snap():
        i = world.inter.metrics()
        return {
            "a_rx": world.metric(world.agent_ns, 9092,
                                 'ztna_agent_udp_bytes_total'
                                 '{direction="rx"}'),
            "c_tx": world.metric(world.conn_ns, 9091,
                                 'ztna_connector_udp_bytes_total'
                                 '{direction="tx"}'),
            "c_gso": world.metric(world.conn_ns, 9091,
                                  "ztna_connector_udp_gso_sends_total"),
            "i_rx": i['ztna_udp_bytes_total{direction="rx"}'],
            "i_tx": i['ztna_udp_bytes_total{direction="tx"}'],
        }
    before = snap()
    out = os.path.join(world.tmp, "ten.got")
    world.run(["curl", "-s", "-S", "-m", "120", "-o", out,
               "http://%s/ten.bin" % SERVICES["web"][0]])
    assert sha256(out) == sha256(src)
    os.unlink(out)
    after = snap()
    grew = {k: after[k] - before[k] for k in before}
    size = 10 << 20
    assert grew["a_rx"] >= size and grew["c_tx"] >= size, grew
    assert grew["c_gso"] > 0, grew
    if relay:
        assert grew["i_rx"] >= size and grew["i_tx"] >= size, grew
    else:
        assert grew["i_rx"] < size // 2 and grew["i_tx"] < size // 2, grew
    for ns, port, p in ((world.conn_ns, 9091, "ztna_connector_"),
                        (world.agent_ns, 9092, "ztna_agent_")):
        for name in ("udp_send_errors_total", "udp_receive_errors_total",
                     "udp_gro_reads_total"):
            assert world.metric(ns, port, p + name) is not None, p + name
        assert world.metric(ns, port, p + 'quic_datagrams_dropped_total'
                            '{reason="queue_full"}') is not None


def test_20_concurrent_curls(world):
    src = world.make_file("one.bin", 1 << 20)
    want = sha256(src)
    script = ("for i in $(seq 1 20); do curl -s -m 60 -o %s/c$i.bin "
              "http://%s/one.bin & done; wait" % (world.tmp,
                                                    SERVICES["web"][0]))
    world.run(["sh", "-c", script])
    for i in range(1, 21):
        path = os.path.join(world.tmp, "c%d.bin" % i)
        assert sha256(path) == want, "curl %d" % i
        os.unlink(path)


def test_refused_backend_gets_rst(world):
    # The "closed" service's backend refuses: the agent's SYN is answered
    # with RST once the connector's own connect is refused, so curl fails
    # at once, and the backend comes from the configuration, not the port.
    t0 = time.time()
    p = world.run(["curl", "-s", "-m", "10", "http://%s:80/"
                   % SERVICES["closed"][0]], check=False)
    assert p.returncode == 7  # "Couldn't connect": refused, not timed out
    assert time.time() - t0 < 5


RESETTER = r"""
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 81))
s.listen(4)
print("ready", flush=True)
c, _ = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()  # RST
"""


def test_backend_reset_reaches_the_agent_and_the_log(world):
    """A backend that resets its connection in the middle of a response:
    the agent's TCP connection is reset at once (not left to time out),
    and the connector's log names the connection and the reason."""
    srv = world.net.popen(world.backend_ns,
                          [sys.executable, "-c", RESETTER, "192.0.2.34"],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        t0 = time.time()
        p = world.run(["curl", "-s", "-S", "-m", "20", "-o", "/dev/null",
                       "http://%s:80/" % SERVICES["closed"][0]], check=False)
        assert p.returncode == 56 and "reset" in p.stderr, (p.returncode,
                                                            p.stderr)
        assert time.time() - t0 < 10
        wait_for(lambda: "to 80: reset: connection reset by peer" in
                 open(os.path.join(world.tmp, "connector.log")).read(),
                 timeout=10, what="the reset and its reason in the log")
    finally:
        srv.kill()
        srv.wait()


def test_redis_1000_keys(world):
    cmds = "".join("SET key:%d value-%d\n" % (i, i * 7) for i in range(1000))
    cmds += "".join("GET key:%d\n" % i for i in range(1000))
    p = world.run(["redis-cli", "-h", SERVICES["redis"][0]], input=cmds)
    lines = p.stdout.split("\n")
    assert lines[:1000] == ["OK"] * 1000
    assert lines[1000:2000] == ["value-%d" % (i * 7) for i in range(1000)]


def agent_status(world):
    return json.loads(world.run(["curl", "-s", "-m", "10",
                                 "http://127.0.0.1:9092/v1/status"]).stdout)


def test_20mb_up_and_down_through_tun_offload(world):
    """The agent's TUN hands up TCP segments of up to 64 KB (segmentation
    offload) that the agent cuts into packets, and takes a flow's
    consecutive segments joined into one write: 20 MB SET into redis and
    read back are the same bytes, and both happened."""
    size = 20 << 20
    src = world.make_file("up.bin", size)
    vip = SERVICES["redis"][0]
    before = agent_status(world)
    assert before["tun_offload"] is True, before
    p = world.run(["sh", "-c", "redis-cli -h %s -x SET up < %s" % (vip, src)],
                  check=False, timeout=120)
    assert p.stdout.strip() == "OK", (p.stdout[-500:], p.stderr[-500:])
    out = os.path.join(world.tmp, "up.got")
    world.run(["sh", "-c", "redis-cli -h %s --raw GET up | head -c %d > %s"
               % (vip, size, out)], timeout=120)
    assert sha256(out) == sha256(src)
    os.unlink(out)
    world.run(["redis-cli", "-h", vip, "DEL", "up"])
    after = agent_status(world)
    assert after["traffic"]["tso_reads"] > before["traffic"]["tso_reads"]
    assert after["traffic"]["gro_writes"] > before["traffic"]["gro_writes"]


UDP_CLIENT = r"""
import os, socket, sys
mtu = int(sys.argv[2])
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
hdr = 48 if v6 else 28
sizes = [1 + (i * (mtu - hdr - 1)) // 999 for i in range(1000)]
bad = 0
for n in sizes:
    data = os.urandom(n)
    for attempt in range(3):
        s.sendto(data, (sys.argv[1], 7))
        try:
            got, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        if got == data:
            break
    else:
        bad += 1
print(bad, max(sizes))
"""


def tun_mtu(world):
    out = world.run(["cat", "/sys/class/net/ztna0/mtu"]).stdout
    return int(out)


def test_udp_echo_1000_sizes(world):
    mtu = tun_mtu(world)
    assert mtu == 1306 - 2 - max(len(k) for k in SERVICES)  # longest id
    p = world.run([sys.executable, "-c", UDP_CLIENT, SERVICES["echo"][0],
                   str(mtu)])
    bad, largest = p.stdout.split()
    assert bad == "0"
    assert int(largest) == mtu - 28


def test_iperf3_tcp_10s(world):
    p = world.run(["iperf3", "-c", SERVICES["iperf"][0], "-t", "10", "-J"],
                  check=False, timeout=60)
    assert p.returncode == 0, p.stdout[-2000:]
    r = json.loads(p.stdout)
    mbps = r["end"]["sum_received"]["bits_per_second"] / 1e6
    print("iperf3 through the relay: %.0f Mbit/s" % mbps)
    assert r["end"]["sum_received"]["bytes"] > 0


def test_upload_written_to_the_backend_in_few_writes(world):
    """What an agent sends on a TCP connection reaches the backend in one
    write per loop round, not one per segment: 3 s of iperf3 up grow the
    connector's bytes to backends by what iperf3 counted received, in
    writes that average well above a segment's size (one write per
    segment averaged about 1.3 KB)."""
    def snap():
        return (world.metric(world.conn_ns, 9091,
                             'ztna_connector_tcp_bytes_total'
                             '{direction="to_backend"}'),
                world.metric(world.conn_ns, 9091,
                             "ztna_connector_tcp_backend_writes_total"))
    b0, w0 = snap()
    p = world.run(["iperf3", "-c", SERVICES["iperf"][0], "-t", "3", "-J"],
                  check=False, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:]
    got = json.loads(p.stdout)["end"]["sum_received"]["bytes"]
    assert got > 1 << 20, got
    wait_for(lambda: snap()[0] - b0 >= got, timeout=30,
             what="%d bytes counted to the backend" % got)
    b1, w1 = snap()
    avg = (b1 - b0) / max(w1 - w0, 1)
    print("%d bytes to the backend in %d writes: %.0f bytes each"
          % (b1 - b0, w1 - w0, avg))
    assert avg >= 4096, (b1 - b0, w1 - w0)


def test_full_mtu_and_no_black_hole(world):
    mtu = tun_mtu(world)
    # A full-size packet goes through ...
    p = world.run(["ping", "-c", "3", "-M", "do", "-s", str(mtu - 28),
                   SERVICES["web"][0]], check=False)
    assert " 0% packet loss" in p.stdout, p.stdout
    # ... and one larger than the tunnel path is answered with ICMP
    # "fragmentation needed" carrying the size that fits.
    world.run(["ip", "link", "set", "ztna0", "mtu", "1400"])
    try:
        script = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.connect((sys.argv[1], 7))
s.send(b"x" * 1300)
time.sleep(0.5)
print(s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU
"""
        out = world.run([sys.executable, "-c", script,
                         SERVICES["echo"][0]]).stdout
        # What fits one DATAGRAM with this service's wrapper (0x2F, length,
        # "echo"): 1306 - 6.
        assert int(out) == 1306 - 2 - len("echo"), out
    finally:
        world.run(["ip", "link", "set", "ztna0", "mtu", str(mtu)])
        world.run(["ip", "route", "flush", "cache"])
    assert world.metric(world.agent_ns, 9092,
                        'ztna_agent_drops_total{reason="too_large"}') >= 1


def test_split_tunnel(world):
    before = world.metric(world.agent_ns, 9092,
                          "ztna_agent_tunnel_packets_sent_total")
    # The intermediate's address is reached directly, not through ztna0.
    route = world.run(["ip", "route", "get", "198.51.100.10"]).stdout
    assert "ztna0" not in route
    p = world.run(["ping", "-c", "20", "-i", "0.01", "-W", "2",
                   "198.51.100.10"], check=False)
    assert " 0% packet loss" in p.stdout
    # An address next to the virtual IPs is not routed into the tunnel.
    assert "ztna0" not in world.run(["ip", "route", "get",
                                     "10.100.0.99"], check=False).stdout
    # (A late retransmission of an earlier test may pass; 20 pings would
    # add 20.)
    assert world.metric(world.agent_ns, 9092,
                        "ztna_agent_tunnel_packets_sent_total") - before < 5
    routes = world.run(["ip", "route", "show", "dev", "ztna0"]).stdout
    assert sorted(line.split()[0] for line in routes.splitlines()) == \
        sorted(v[0] for v in SERVICES.values() if ":" not in v[0])
    # IPv6: the services' addresses, and the TUN's own address (the kernel's
    # route for it) and link-local prefix, nothing else.
    routes = world.run(["ip", "-6", "route", "show", "dev", "ztna0"]).stdout
    got = sorted(line.split()[0] for line in routes.splitlines())
    want = sorted([v[0] for v in SERVICES.values() if ":" in v[0]] +
                  ["fd7a:7a74:6e61:a::1"])
    assert [r for r in got if r != "fe80::/64"] == want, routes


def test_ipv6_tcp_curl_sha256(world):
    """TCP over IPv6 is terminated by the connector's userspace stack and
    spliced to an IPv4 backend."""
    src = world.make_file("six.bin", 20 << 20)
    out = os.path.join(world.tmp, "six.got")
    vip = SERVICES["web6"][0]
    p = world.run(["curl", "-g", "-s", "-S", "-m", "120", "-o", out,
                   "http://[%s]/six.bin" % vip], check=False)
    assert p.returncode == 0, p.stderr
    assert sha256(out) == sha256(src)
    os.unlink(out)
    # The agent really used IPv6, from the TUN's IPv6 address.
    p = world.run(["curl", "-g", "-s", "-S", "-m", "20", "-w",
                   "%{local_ip}", "-o", "/dev/null",
                   "http://[%s]/six.bin" % vip])
    assert p.stdout == "fd7a:7a74:6e61:a::1", p.stdout


def test_ipv6_tcp_concurrent_and_refused(world):
    src = world.make_file("six1.bin", 1 << 20)
    want = sha256(src)
    script = ("for i in $(seq 1 10); do curl -g -s -m 60 -o %s/s$i.bin "
              "http://[%s]/six1.bin & done; wait" % (world.tmp,
                                                      SERVICES["web6"][0]))
    world.run(["sh", "-c", script])
    for i in range(1, 11):
        assert sha256(os.path.join(world.tmp, "s%d.bin" % i)) == want
    # A refusing backend behind an IPv6 virtual IP: RST at once.
    p = world.run(["curl", "-g", "-s", "-m", "10",
                   "http://[%s]:80/" % SERVICES["closed6"][0]], check=False)
    assert p.returncode == 7  # "Couldn't connect": refused, not timed out


def test_ipv6_ping_and_udp_echo(world):
    p = world.run(["ping", "-6", "-c", "20", "-i", "0.01", "-W", "2",
                   SERVICES["web6"][0]], check=False)
    assert " 0% packet loss" in p.stdout, p.stdout
    mtu = tun_mtu(world)
    p = world.run([sys.executable, "-c", UDP_CLIENT, SERVICES["echo6"][0],
                   str(mtu)])
    bad, largest = p.stdout.split()
    assert bad == "0"
    assert int(largest) == mtu - 48


def test_two_agents_same_nat_same_tunnel_address(world):
    net = world.net
    ns2 = net.ns("agent2")
    net.link(ns2, "192.0.2.50/28", world.nat_a, "192.0.2.49/28")
    net.route(ns2, "default", "192.0.2.49")
    world.start_agent("agent2", ns2, "bob", tunnel="100.64.0.1", port=9093)
    a = world.make_file("a.bin", 8 << 20)
    b = world.make_file("b.bin", 8 << 20)
    # Same tunnel address, same source port, same destination, at once.
    pa = net.popen(world.agent_ns, ["curl", "-s", "-m", "60",
                                    "--local-port", "45000", "-o",
                                    a + ".got", "http://10.100.0.2/a.bin"])
    pb = net.popen(ns2, ["curl", "-s", "-m", "60", "--local-port", "45000",
                         "-o", b + ".got", "http://10.100.0.2/b.bin"])
    assert pa.wait(90) == 0 and pb.wait(90) == 0
    assert sha256(a + ".got") == sha256(a)
    assert sha256(b + ".got") == sha256(b)
    # UDP too: each agent gets only its own echo.
    script = (r"import socket,sys,os;s=socket.socket(2,2);s.bind(('',45001));"
              r"s.settimeout(3);d=os.urandom(64);s.sendto(d,('10.100.0.4',7));"
              r"print(s.recvfrom(100)[0]==d)")
    ra = net.popen(world.agent_ns, [sys.executable, "-c", script],
                   stdout=subprocess.PIPE, text=True)
    rb = net.popen(ns2, [sys.executable, "-c", script],
                   stdout=subprocess.PIPE, text=True)
    assert ra.communicate(timeout=10)[0].strip() == "True"
    assert rb.communicate(timeout=10)[0].strip() == "True"
    world.procs["agent2"].terminate()


def test_agent_without_tun_offload(world):
    """--no-tun-offload: a packet per TUN read and write (the path a kernel
    that refuses the offload takes), both ways intact."""
    net = world.net
    ns4 = net.ns("agent4")
    # A LAN of its own behind the agent's NAT (agent2's may still exist).
    net.link(ns4, "192.0.2.210/28", world.nat_a, "192.0.2.209/28")
    net.route(ns4, "default", "192.0.2.209")
    p4 = world.start_agent("agent4", ns4, "bob", port=9095,
                           args=("--no-tun-offload",))
    try:
        st = json.loads(net.exec(ns4, ["curl", "-s", "-m", "10",
                                       "http://127.0.0.1:9095/v1/status"]
                                 ).stdout)
        assert st["tun_offload"] is False, st
        src = world.make_file("plain.bin", 8 << 20)
        out = os.path.join(world.tmp, "plain.got")
        net.exec(ns4, ["curl", "-s", "-S", "-m", "60", "-o", out,
                       "http://%s/plain.bin" % SERVICES["web"][0]])
        assert sha256(out) == sha256(src)
        vip = SERVICES["redis"][0]
        p = net.exec(ns4, ["sh", "-c", "redis-cli -h %s -x SET plain < %s"
                           % (vip, src)], timeout=60)
        assert p.stdout.strip() == "OK", p.stderr[-500:]
        net.exec(ns4, ["sh", "-c", "redis-cli -h %s --raw GET plain | "
                       "head -c %d > %s" % (vip, 8 << 20, out)], timeout=60)
        assert sha256(out) == sha256(src)
        os.unlink(out)
        st = json.loads(net.exec(ns4, ["curl", "-s", "-m", "10",
                                       "http://127.0.0.1:9095/v1/status"]
                                 ).stdout)
        assert st["traffic"]["tso_reads"] == 0
        assert st["traffic"]["gro_writes"] == 0
    finally:
        p4.terminate()
        assert p4.wait(30) == 0


def test_denied_agent_reaches_nothing(world):
    net = world.net
    ns3 = net.ns("agent3")
    net.link(ns3, "192.0.2.66/28", world.nat_a, "192.0.2.65/28")
    net.route(ns3, "default", "192.0.2.65")
    log = os.path.join(world.tmp, "nginx-access.log")
    before = open(log).read().count("\n")
    world.start_agent("agent3", ns3, "eve", port=9094,
                      services={"web": "10.100.0.2"})
    p3 = world.procs["agent3"]
    wait_for(lambda: "refused: not authorized" in open(p3.log.name).read(),
             what="NACK logged")
    p = net.exec(ns3, ["curl", "-s", "-m", "3", "http://10.100.0.2/"],
                 check=False)
    assert p.returncode != 0
    time.sleep(0.5)
    assert open(log).read().count("\n") == before
    p3.terminate()


def test_connector_killed_during_a_download_resets_it(world):
    """kill -9 of the connector while a download runs, and the connector
    started again: it has none of the download's TCP state, so the next
    segment of it that arrives (a retransmission, once the agent's
    end-to-end connection is back) is answered with a RST and curl fails
    with "connection reset" instead of retransmitting until its own
    timeout. Before, the connector dropped such segments without a word
    and the download hung."""
    def restart():
        old = world.procs["connector"]
        old.send_signal(signal.SIGKILL)
        old.wait()
        world.start_connector()
    world.make_file("cut.bin", 100 << 20)
    rc, err, out, _ = download_across(world, "cut.bin", "4M", 4 << 20,
                                      restart)
    os.unlink(out)
    assert rc == 56 and b"reset" in err, (rc, err)
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_tcp_stray_segments_total") >= 1


@pytest.mark.parametrize("same_key", [True, False],
                         ids=["restarted", "replaced"])
def test_intermediate_killed_during_a_download(world, same_key):
    """kill -9 of the intermediate while a 100 MB download runs, and an
    intermediate started again on its address: the agent's and the
    connector's old connections end, they reconnect, the agent's
    end-to-end connection moves to the new relay session, and the
    download completes intact in the same TCP connection (a reset would
    fail curl; a second connection to the backend would show in the
    connector's count). On the direct path the intermediate is not in the
    way at all.

    restarted: the same key (as systemd would restart it): its stateless
    resets end the old connections at their next packet. Before, the
    clients dropped the resets and noticed after their 30 s idle timeout,
    when the end-to-end connection timed out as well.
    replaced: another key (another machine took the address), which
    cannot reset them: the clients give up after 8 s without an answer
    (UPLINK_SILENCE_MS), inside the end-to-end connection's 30 s.

    The services that ride web's connection stay on it while their
    registrations are sent again (they used to leave it, as if refused,
    and come back once registered)."""
    from ztna import Intermediate

    def replace():
        world.inter.proc.send_signal(signal.SIGKILL)
        world.inter.proc.wait()
        world.inter = Intermediate(
            world.pki, ns=world.inet, logdir=world.tmp,
            creds=(world.inter.cert, world.inter.key) if same_key else None)
    def left():
        with open(world.procs["agent"].log.name) as f:
            return f.read().count("off web's connection")
    src = world.make_file("hundred.bin", 100 << 20)
    sessions = world.metric(world.conn_ns, 9091,
                            "ztna_connector_tcp_sessions_total")
    before = left()
    rc, err, out, at = download_across(world, "hundred.bin", "8M", 20 << 20,
                                       replace)
    assert rc == 0, err
    assert left() == before
    assert at < 100 << 20, "the download ended before the kill"
    assert sha256(out) == sha256(src)
    os.unlink(out)
    assert world.metric(world.conn_ns, 9091,
                        "ztna_connector_tcp_sessions_total") == sessions + 1


def test_intermediate_killed_and_restarted(world):
    inter = world.inter
    before = world.metric(world.agent_ns, 9092,
                          "ztna_agent_reconnections_total")
    inter.proc.send_signal(signal.SIGKILL)
    inter.proc.wait()
    from ztna import Intermediate
    world.inter = Intermediate(world.pki, ns=world.inet, logdir=world.tmp)
    # The new intermediate resets the old connections (stateless reset);
    # agent and connector reconnect and re-register within the backoff.
    world.run(["curl", "-s", "-m", "2", "http://10.100.0.2/whoami"],
              check=False)
    wait_for(lambda: world.metric(world.agent_ns, 9092,
                                  "ztna_agent_reconnections_total") > before
             and world.metric(world.agent_ns, 9092,
                              "ztna_agent_connected") == 1,
             timeout=45, what="agent back")
    # The new intermediate is the one to ask: the connector's own gauge
    # stays 1 until it notices the old connection is gone, and traffic
    # can flow on the direct path meanwhile.
    for svc in SERVICES:
        wait_for(lambda svc=svc: world.inter.metric(
            'ztna_service_connector_present{service="%s"}' % svc) == 1,
            timeout=90, what="connector of %s back" % svc)
    wait_for(lambda: world.run(["curl", "-s", "-m", "3", "-o", "/dev/null",
                                "-w", "%{http_code}",
                                "http://10.100.0.2/whoami"],
                               check=False).stdout == "200",
             timeout=30, what="traffic resumed")


def test_curl_50mb_with_5_percent_loss(world):
    net = world.net
    src = world.make_file("lossy.bin", 50 << 20)
    net.exec(world.nat_a, ["nft", "-f", "-"], input=(
        "table inet loss {\n chain lossy {\n  type filter hook forward "
        "priority 0;\n  meta l4proto udp numgen random mod 100 < 5 drop\n"
        " }\n}\n"))
    try:
        out = os.path.join(world.tmp, "lossy.got")
        p = world.run(["curl", "-s", "-S", "-m", "300", "-o", out,
                       "http://10.100.0.2/lossy.bin"], check=False,
                      timeout=320)
        assert p.returncode == 0, p.stderr
        assert sha256(out) == sha256(src)
    finally:
        net.exec(world.nat_a, ["nft", "delete", "table", "inet", "loss"])


def readyz(world, ns, host, port):
    p = world.run(["curl", "-s", "-m", "5", "-w", " %{http_code}",
                   "http://%s:%d/readyz" % (host, port)], ns=ns, check=False)
    return p.stdout


def test_readyz_and_metrics_bind(world):
    """/readyz says whether a daemon does its job (registered), beside
    /healthz; metrics_bind puts the endpoint where a prober can reach it
    (a container's or pod's address) instead of loopback."""
    # (ready again after the earlier tests' restarts, within the backoff)
    for ns, port in ((world.conn_ns, 9091), (world.agent_ns, 9092)):
        wait_for(lambda ns=ns, port=port: readyz(
            world, ns, "127.0.0.1", port) == "ready\n 200", timeout=60,
            what="/readyz 200")
    assert world.inter.http("/readyz") == "ready\n"
    net = world.net
    ns6 = net.ns("agent6")
    net.link(ns6, "192.0.2.130/28", world.nat_a, "192.0.2.129/28")
    net.route(ns6, "default", "192.0.2.129")
    # eve's certificate grants nothing here: connected, never ready.
    world.start_agent("agent6", ns6, "eve", port=9098,
                      services={"web": "10.100.0.2"},
                      extra={"metrics_bind": "192.0.2.130"},
                      metrics_from=(world.nat_a, "192.0.2.130"))
    try:
        got = readyz(world, world.nat_a, "192.0.2.130", 9098)
        assert got == "service 'web': not registered\n 503", got
        # Not on its loopback any more.
        assert world.metric(ns6, 9098, "ztna_agent_connected") is None
    finally:
        world.procs["agent6"].terminate()
        world.procs["agent6"].wait(30)


def exported(world):
    """{metric name: set of label names} over the three daemons' /metrics
    (after the traffic of the tests above)."""
    texts = [world.inter.http("/metrics")]
    for ns, port in ((world.conn_ns, 9091), (world.agent_ns, 9092)):
        texts.append(world.net.exec(ns, ["curl", "-s", "-m", "5",
                                         "http://127.0.0.1:%d/metrics"
                                         % port]).stdout)
    names = {}
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                names.setdefault(line.split()[2], set())
            elif line and not line.startswith("#"):
                series = line.rsplit(" ", 1)[0]
                name, _, labels = series.partition("{")
                names.setdefault(name, set()).update(
                    kv.split("=", 1)[0] for kv in
                    labels.rstrip("}").split(",") if "=" in kv)
    return names


def test_dashboard_and_alerts_use_exported_metrics(world):
    """Every metric and label the Grafana dashboard and the alert rules
    in packaging/monitoring use is one the daemons export."""
    import re
    import yaml
    mon = os.path.join(os.path.dirname(__file__), "..", "..", "packaging",
                       "monitoring")
    names = exported(world)
    dash = json.load(open(os.path.join(mon, "grafana-dashboard.json")))
    exprs = [(t["expr"], t.get("legendFormat", ""))
             for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load(open(os.path.join(mon, "ztna-alerts.yml")))
    for g in rules["groups"]:
        for r in g["rules"]:
            exprs.append((r["expr"], r["annotations"]["summary"]))
    assert yaml.safe_load(open(os.path.join(mon, "prometheus.yml")))[
        "rule_files"] == ["ztna-alerts.yml"]
    used = 0
    for expr, legend in exprs:
        if "ztna_cluster_" in expr:
            continue  # a cluster member's: test_cluster.py checks those
        for m in re.findall(r"\bztna_[a-z_]+", expr):
            assert m in names, (m, expr)
            used += 1
            labels = set(re.findall(r"by \(([a-z_, ]+)\)", expr))
            labels = {x.strip() for group in labels for x in group.split(",")}
            labels |= set(re.findall(r"\{\{ ?\$?(?:labels\.)?(\w+) ?\}\}",
                                     legend))
            labels -= {"instance", "job"}  # Prometheus adds those
            for lab in labels:
                assert any(lab in names[n] for n in
                           re.findall(r"\bztna_[a-z_]+", expr)), (lab, expr)
    assert used >= 25
