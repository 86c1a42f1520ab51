"""Operations as a deployment meets them: the intermediate found by name,
and found again when it moves to another address."""
import os
import shutil


from datapath import SERVICES, world_fixture
from ztna import Intermediate, wait_for


world = world_fixture("dep")


def test_agent_finds_a_relay_that_moved(world):
    """The agent names the intermediate relay.test (its /etc/hosts, as
    `ip netns exec` provides it). The intermediate moves from
    198.51.100.10 to 198.51.100.11: the agent looks the name up again when
    it reconnects and finds it; before, it kept dialling the address it
    resolved at start."""
    net = world.net
    ns = net.ns("agent7")
    net.link(ns, "192.0.2.146/28", world.nat_a, "192.0.2.145/28")
    net.route(ns, "default", "192.0.2.145")
    etc = "/etc/netns/" + ns
    os.makedirs(etc, exist_ok=True)
    hosts = os.path.join(etc, "hosts")
    try:
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost\n198.51.100.10 relay.test\n")
        agent = world.start_agent("agent7", ns, "bob", port=9099,
                                  extra={"server": "relay.test:4433"})
        # The move: a new intermediate process on a new address.
        world.inter.stop()
        ifname = net.exec(world.inet, ["ip", "-o", "addr", "show", "to",
                                       "198.51.100.10"]).stdout.split()[1]
        # (In this order: deleting a primary address takes its
        # secondaries with it.)
        net.exec(world.inet, ["ip", "addr", "del", "198.51.100.10/24",
                              "dev", ifname])
        net.exec(world.inet, ["ip", "addr", "add", "198.51.100.11/24",
                              "dev", ifname])
        net.exec(world.nat_a, ["ip", "route", "replace", "default", "via",
                               "198.51.100.11"])
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost\n198.51.100.11 relay.test\n")
        world.inter = Intermediate(world.pki, ns=world.inet,
                                   logdir=world.tmp)
        wait_for(lambda: world.inter.metric(
            'ztna_service_agents{service="web"}') >= 1, timeout=90,
            what="the agent at the intermediate's new address")
        with open(agent.log.name) as f:
            assert "relay.test is at 198.51.100.11:4433 now" in f.read()
        p = net.exec(ns, ["ping", "-c", "3", "-W", "2",
                          SERVICES["web"][0]], check=False)
        assert " 0% packet loss" in p.stdout, p.stdout
    finally:
        shutil.rmtree(etc, ignore_errors=True)
