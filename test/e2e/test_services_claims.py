"""A connector's list of the services an end-to-end connection may carry
(DATAGRAM 0x36, protocol.md 10) proves nothing by itself: here the
connector is configured with every service but its certificate does not
grant redis. The intermediate refuses its redis registration; the
connector still lists redis to the agent (it checks the agent's grants,
not its own); the agent must not let redis ride on that connection,
because the connector's certificate does not carry connector.redis.ztna.
So redis stays unreachable while web works."""
import os

import pytest

from datapath import SERVICES, World, stop_world
from netns import Net
from ztna import wait_for


class NarrowConnector(World):
    """The connector's certificate grants every service but redis."""

    def certs(self):
        super().certs()
        args = []
        for s in SERVICES:
            if s != "redis":
                args += ["--service", s]
        self.conn_cert = self.pki.issue("connector", "conn", *args)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces and TUN devices")
    net = Net(tag="claims")
    w = None
    try:
        w = NarrowConnector(net, tmp_path_factory.mktemp("claims"))
        yield w
    finally:
        stop_world(w, net)


def redis_ping(w):
    p = w.run(["timeout", "5", "redis-cli", "-h", "10.100.0.3", "ping"],
              check=False)
    return p.stdout.strip()


def test_listed_service_without_grant_does_not_ride(world):
    w = world
    wait_for(lambda: w.run(["curl", "-s", "-o", "/dev/null", "-m", "5",
                            "http://10.100.0.2/"],
                           check=False).returncode == 0,
             timeout=30, what="web through the tunnel")
    wait_for(lambda: "registration as connector for 'redis' refused"
             in w.inter.logtext(), what="the refused redis registration")
    # The connector offered redis on the connection the agent has (it
    # serves it to agents whose certificate grants it).
    host = w.host_service()
    assert host != "redis"
    # The agent did not take the offer: redis has no connection, shared
    # or its own, and nothing answers on its virtual IP.
    for _ in range(3):
        assert redis_ping(w) != "PONG"
    assert w.metric(w.agent_ns, 9092,
                    'ztna_agent_connection_shared{service="redis"}') == 0
    assert w.metric(w.agent_ns, 9092,
                    'ztna_agent_connection{service="redis",state="up"}') == 0
    # Other services of the connector do ride on the one connection.
    assert w.metric(w.agent_ns, 9092,
                    'ztna_agent_connection_shared{service="echo"}') == 1 or \
        host == "echo"
