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
        # The connector reconnects to the new process on its own schedule
        # (it kept its address, 203.0.113.10); traffic needs both.
        wait_for(lambda: world.inter.metric(
            'ztna_service_connector_present{service="web"}') == 1,
            timeout=90, what="the connector at the new intermediate")
        p = net.exec(ns, ["ping", "-c", "3", "-W", "2",
                          SERVICES["web"][0]], check=False)
        assert " 0% packet loss" in p.stdout, p.stdout
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(ln.split(":\t", 1) for ln in f.read().splitlines()
                    if ":\t" in ln)


def daemon_pid(popen):
    """The daemon's pid under `ip netns exec` (which execs it)."""
    return popen.pid


NET_ADMIN = 1 << 12


def test_daemons_keep_no_privilege_they_do_not_need(world):
    """Started as root: the intermediate and the connector keep no
    capability at all, the agent only CAP_NET_ADMIN (its TUN's MTU and
    routes), each with no_new_privs."""
    for p, want in ((world.inter.proc, 0),
                    (world.procs["connector"], 0),
                    (world.procs["agent"], NET_ADMIN)):
        st = proc_status(daemon_pid(p))
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(st[field], 16) == want, (p.args, field, st[field])
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"].strip() == "1"


def test_agent_as_another_user(world):
    """--user: the agent makes its TUN as root, then runs as that user with
    CAP_NET_ADMIN alone, and traffic flows."""
    net = world.net
    ns = net.ns("agent8")
    net.link(ns, "192.0.2.162/28", world.nat_a, "192.0.2.161/28")
    net.route(ns, "default", "192.0.2.161")
    # (the first test here may have moved the intermediate)
    addr = [a for a in ("198.51.100.10", "198.51.100.11")
            if net.exec(world.inet, ["ip", "-o", "addr", "show", "to",
                                     a]).stdout.strip()][0]
    agent = world.start_agent("agent8", ns, "bob", port=9097,
                              extra={"server": addr + ":4433"},
                              args=("--user", "65534:65534"))
    st = proc_status(daemon_pid(agent))
    assert st["Uid"].split() == ["65534"] * 4
    assert st["Gid"].split() == ["65534"] * 4
    assert st["Groups"].strip() == ""
    assert int(st["CapEff"], 16) == NET_ADMIN
    assert int(st["CapBnd"], 16) == NET_ADMIN
    p = net.exec(ns, ["ping", "-c", "3", "-W", "2", SERVICES["web"][0]],
                 check=False)
    assert " 0% packet loss" in p.stdout, p.stdout
    p = net.exec(ns, ["curl", "-s", "-m", "20", "-o", "/dev/null", "-w",
                      "%{http_code}", "http://%s/" % SERVICES["web"][0]],
                 check=False)
    assert p.stdout in ("200", "403", "404"), p
    with open(agent.log.name) as f:
        assert "privileges dropped: uid 65534, gid 65534, capabilities " \
            "net_admin" in f.read()
