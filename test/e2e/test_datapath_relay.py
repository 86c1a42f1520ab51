"""The whole data-path suite of test_datapath.py again, with the agent
kept on the relay ("direct": false): every packet then travels in the
agent's end-to-end connections through relay sessions, which the
intermediate forwards without reading. test_datapath.py runs the same
tests where the agent goes by itself: on the direct path."""
import test_datapath
from datapath import world_fixture

# The same tests, on this module's world.
globals().update({k: v for k, v in vars(test_datapath).items()
                  if k.startswith("test_")})
world = world_fixture("dpr", agent_extra={"direct": False})


def test_the_suite_ran_on_relay_sessions(world):
    assert world.path("web") == "relay"
    assert world.metric(world.agent_ns, 9092,
                        'ztna_agent_connection{service="web",state="up"}') \
        == 1
    m = world.inter.metrics()
    assert m["ztna_relay_session_datagrams_total"] > 10000, m
    assert m["ztna_relay_sessions_active"] >= 1


def test_one_connection_per_connector(world):
    """The connector serves every service: the agent reaches them all in a
    single end-to-end connection through a single relay session. The
    first service connects; the connector lists what that connection may
    carry (protocol.md 10), and the others ride on it."""
    from datapath import SERVICES
    from ztna import wait_for

    def conns():
        return world.metric(world.conn_ns, 9091,
                            "ztna_connector_direct_connections") or 0

    def sessions():
        return world.inter.metrics()["ztna_relay_sessions_active"]

    def shared():
        return [s for s in SERVICES
                if world.metric(world.agent_ns, 9092,
                                'ztna_agent_connection_shared{service="%s"}'
                                % s) == 1]

    n0, s0 = conns(), sessions()
    agent = world.procs["agent"]
    agent.terminate()
    assert agent.wait(30) == 0
    # It had one connection and one session, which go with it.
    wait_for(lambda: conns() == n0 - 1 and sessions() == s0 - 1,
             what="the agent's one connection and session gone")
    world.start_agent("agent", world.agent_ns, "alice",
                      extra={"direct": False})
    wait_for(lambda: len(shared()) == len(SERVICES) - 1, timeout=30,
             what="the services riding on one connection")
    for s, (vip, _, _) in SERVICES.items():
        p = world.run(["ping", "-c", "1", "-W", "5", vip], check=False)
        assert p.returncode == 0, (s, p.stdout)
    p = world.run(["redis-cli", "-h", SERVICES["redis"][0], "ping"],
                  check=False)
    assert p.stdout.strip() == "PONG", p.stdout
    assert conns() == n0 and sessions() == s0
    # The agent opened one relay session in all.
    opened = sum(world.metric(world.agent_ns, 9092,
                              'ztna_agent_relay_sessions_total{service="%s"}'
                              % s) or 0 for s in SERVICES)
    assert opened == 1, opened
