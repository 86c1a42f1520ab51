#!/usr/bin/python3
"""The cluster's capacity figures (docs/cluster.md): a Redis server and
two intermediates on loopback, a connector at B, and N simulated agents
(build/zload, one process) at A, each registered and given a relay
session made at B through A's link to it.

    python3 test/bench/cluster_load.py [N]      (default 2000)

Prints one JSON object: memory and CPU per agent at A, per forwarded
session at B, Redis commands per agent event and per second idle."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from ztna import (Client, Intermediate, Pki, Zload, free_port,  # noqa: E402
                  rss_kb, wait_for)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def redis_calls(port):
    """Commands Redis ran, by name (scripts' inner calls included)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO",
                          "commandstats"], capture_output=True,
                         text=True).stdout
    calls = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            calls[name] = int(rest.split("calls=")[1].split(",")[0])
    return calls


def diff(a, b):
    """What ran between two readings, without our own INFO."""
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)
            if b.get(k, 0) != a.get(k, 0) and k != "info"}


def measure(n):
    tmp = tempfile.mkdtemp(prefix="ztna-cluster-")
    pki = Pki(os.path.join(tmp, "pki"))
    agent = pki.issue("agent", "load-agent", "--service", "svc")
    conn = pki.issue("connector", "load-conn", "--service", "svc")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1",
                              "--port", str(rport), "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             stdout=subprocess.DEVNULL)
    inters, procs = [], [redis]
    try:
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(rport), "PING"], capture_output=True,
            text=True).stdout.strip() == "PONG", what="redis")
        ports = []
        for name in ("node-a", "node-b"):
            port = free_port(socket.SOCK_DGRAM)
            ports.append(port)
            inters.append(Intermediate(
                pki, port=port, metrics_port=free_port(), bind="127.0.0.1",
                name=name, logdir=tmp,
                extra=("--max-connections", str(n + 100),
                       "--cluster-redis", "127.0.0.1:%d" % rport,
                       "--cluster-node", name, "--cluster-advertise",
                       "127.0.0.1:%d" % port)))
        a, b = inters
        c = Client("127.0.0.1:%d" % ports[1], pki, cert=conn)
        procs.append(c.proc)
        c.expect("up", timeout=30)
        c.send("raw 11037376637a01")  # connector of svc, takes sessions
        c.expect("ack", timeout=30)
        wait_for(lambda: subprocess.run(
            ["redis-cli", "-p", str(rport), "GET", "ztna:svc:svc"],
            capture_output=True, text=True).stdout.startswith("1 node-b "),
            what="the registry entry")
        time.sleep(1)
        conns = a.metric("ztna_active_connections")
        before = {"a_rss": rss_kb(a.proc.pid), "b_rss": rss_kb(b.proc.pid),
                  "a_cpu": cpu_s(a.proc.pid), "b_cpu": cpu_s(b.proc.pid),
                  "redis": redis_calls(rport)}
        t0 = time.time()
        z = Zload(pki.ca, agent, ports[0], "svc", n)
        procs.append(z.proc)
        stages = {k: float(v[1]) for k, v in z.stages.items()}
        stages["sessions_ok"] = int(z.stages["opened"][2])
        stages["opens_sent"] = int(z.stages["opened"][4])
        elapsed = time.time() - t0
        time.sleep(1)
        after = {"a_rss": rss_kb(a.proc.pid), "b_rss": rss_kb(b.proc.pid),
                 "a_cpu": cpu_s(a.proc.pid), "b_cpu": cpu_s(b.proc.pid),
                 "redis": redis_calls(rport)}
        ops = diff(before["redis"], after["redis"])
        # Idle: heartbeats only.
        time.sleep(10)
        idle = diff(after["redis"], redis_calls(rport))
        z.quit()
        # The agents gone (the link to B made meanwhile stays): what A
        # still holds once it has given freed memory back (it looks every
        # 10 s, docs/performance.md).
        wait_for(lambda: a.metric("ztna_active_connections") <= conns + 1,
                 timeout=60, what="the agents gone from A")
        time.sleep(12)
        left = rss_kb(a.proc.pid)
        c.close()
    finally:
        for i in inters:
            i.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {
        "agents": n, "sessions_ok": stages["sessions_ok"],
        "seconds": round(elapsed, 2), "stages_s": stages,
        "a_kb_per_agent": round((after["a_rss"] - before["a_rss"]) / n, 1),
        "a_kb_per_agent_after_leaving": round((left - before["a_rss"]) / n,
                                              1),
        "a_cpu_ms_per_agent": round(1000 * (after["a_cpu"] -
                                            before["a_cpu"]) / n, 3),
        "b_kb_per_session": round((after["b_rss"] - before["b_rss"]) / n, 2),
        "b_cpu_ms_per_session": round(1000 * (after["b_cpu"] -
                                              before["b_cpu"]) / n, 3),
        "redis_calls_during_load": ops,
        "redis_calls_per_agent": round(sum(ops.values()) / n, 4),
        "redis_calls_per_s_idle": round(sum(idle.values()) / 10, 2),
        "redis_idle_by_command": idle,
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1
                             else 2000), indent=1))
