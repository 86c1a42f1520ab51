"""The namespace fixtures build real NATs: an address seen from the
"internet" is the NAT's public address, with the mapping behaviour the
tests of later issues rely on (testing.md)."""
import json
import sys
import time

import pytest

# A UDP server that answers every datagram with the address it came from.
REFLECTOR = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(json.dumps(addr).encode(), addr)
"""

# From one socket, asks each reflector (ip:port args) what it saw.
PROBE = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
s.settimeout(1.0)
seen = []
for target in sys.argv[1:]:
    ip, port = target.split(":")
    for attempt in range(10):
        s.sendto(b"?", (ip, int(port)))
        try:
            seen.append(json.loads(s.recvfrom(2048)[0]))
            break
        except socket.timeout:
            continue
    else:
        sys.exit("no answer from " + target)
print(json.dumps(seen))
"""


def start_reflector(net, ns, ip, port):
    p = net.popen(ns, [sys.executable, "-c", REFLECTOR, ip, str(port)],
                  stdout=-1, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def topology(net, hard):
    """agent-host 192.0.2.2 behind nat-a, on the internet 198.51.100.0/24
    with two servers."""
    host, nat, inet = net.ns("host"), net.ns("nat"), net.ns("inet")
    net.link(host, "192.0.2.2/28", nat, "192.0.2.1/28")
    inet_if, out_if = net.link(inet, "198.51.100.10/24", nat,
                               "198.51.100.2/24")
    net.exec(inet, ["ip", "addr", "add", "198.51.100.11/24", "dev", inet_if])
    net.route(host, "default", "192.0.2.1")
    net.nat(nat, out_if, hard=hard)
    start_reflector(net, inet, "198.51.100.10", 3478)
    start_reflector(net, inet, "198.51.100.11", 3479)
    return host, inet


@pytest.mark.parametrize("hard", [False, True], ids=["easy", "hard"])
def test_nat_between_two_namespaces(net, hard):
    host, inet = topology(net, hard)
    # The private LAN is not reachable from the internet side.
    p = net.exec(inet, ["ping", "-c", "1", "-W", "1", "192.0.2.2"],
                 check=False)
    assert p.returncode != 0
    out = net.exec(host, [sys.executable, "-c", PROBE, "198.51.100.10:3478",
                          "198.51.100.11:3479"]).stdout
    (ip1, port1), (ip2, port2) = json.loads(out)
    # Both servers see the NAT's public address, never the private one.
    assert ip1 == ip2 == "198.51.100.2"
    if hard:
        # Endpoint-dependent mapping: a new port per destination.
        assert port1 != port2
    else:
        # Endpoint-independent mapping with the port preserved.
        assert port1 == port2 == 40000


def test_namespaces_are_removed(root):
    from netns import Net, run
    n = Net(tag="cleanup")
    name = n.ns("x")
    assert name in run(["ip", "netns", "list"]).stdout
    n.cleanup()
    assert name not in run(["ip", "netns", "list"]).stdout
