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
