"""docs/migrating.md, followed step by step: the original deployment's
three JSON files and openssl-made certificates (with the SANs ztna reads
roles from, examples/original/make-certs.sh) run a ztna intermediate and
connector, and pass the agent's check."""
import json
import os
import shutil
import socket
import subprocess
import urllib.request

from ztna import ZTNA, free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ORIG = os.path.join(ROOT, "examples", "original")


def metrics(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                    timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_original_deployment_moves_to_ztna(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the original files say certs/...
    for f in ("intermediate.json", "connector.json", "agent.json"):
        shutil.copy(os.path.join(ORIG, f), f)
    # step 1: certificates with the SANs ztna needs
    subprocess.run([os.path.join(ORIG, "make-certs.sh"), "certs"],
                   check=True)
    # step 2: the intermediate's file as it was, but for two keys that
    # ztna treats as a decision to make (verification off), and this
    # test's free ports
    inter = json.load(open("intermediate.json"))
    udp, imetrics = free_port(socket.SOCK_DGRAM), free_port(
        socket.SOCK_STREAM)
    inter.update({"verify_peer": True, "require_client_cert": True,
                  "port": udp, "bind_addr": "127.0.0.1",
                  "metrics_port": imetrics})
    json.dump(inter, open("intermediate.json", "w"))
    p = subprocess.run([ZTNA, "intermediate", "--check", "-c",
                        "intermediate.json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    conn = json.load(open("connector.json"))
    cmetrics, cport = free_port(socket.SOCK_STREAM), free_port(
        socket.SOCK_DGRAM)
    conn["intermediate_server"] = {"host": "127.0.0.1", "port": udp}
    conn["verify_peer"] = True
    conn["metrics_port"] = cmetrics
    conn["p2p"]["port"] = cport
    json.dump(conn, open("connector.json", "w"))
    log = open("daemons.log", "w+")
    procs = [subprocess.Popen([ZTNA, "intermediate", "-c",
                               "intermediate.json"], stdout=log, stderr=log)]
    try:
        wait_for(lambda: "ztna_uptime_seconds" in metrics(imetrics),
                 what="intermediate")
        procs.append(subprocess.Popen([ZTNA, "connector", "-c",
                                       "connector.json"],
                                      stdout=log, stderr=log))
        # both services of the original file registered with the
        # openssl-made connector certificate (its p2p pair)
        for svc in ("echo-service", "web-app"):
            wait_for(lambda: 'ztna_connector_service_up{service="%s"} 1'
                     % svc in metrics(cmetrics), timeout=30,
                     what="connector service %s" % svc)
            assert ('ztna_service_connector_present{service="%s"} 1' % svc
                    in metrics(imetrics))
        # step 3: the agent's file plus its certificate and key
        agent = json.load(open("agent.json"))
        agent.update({"serverHost": "127.0.0.1", "serverPort": udp,
                      "verifyPeer": True, "caCertPath": "certs/ca-cert.pem",
                      "cert": "certs/agent-cert.pem",
                      "key": "certs/agent-key.pem"})
        json.dump(agent, open("agent.json", "w"))
        p = subprocess.run([ZTNA, "agent", "--check", "-c", "agent.json"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    finally:
        for pr in reversed(procs):
            pr.terminate()
        rcs = [pr.wait(15) for pr in procs]
        log.seek(0)
        text = log.read()
    assert rcs == [0] * len(procs), text[-3000:]


def test_original_files_without_changes_say_what_to_do(tmp_path,
                                                       monkeypatch):
    """Unchanged, the original intermediate.json runs with verification off
    (as it asked) and says what that means."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(ORIG, "intermediate.json"), "intermediate.json")
    subprocess.run([os.path.join(ORIG, "make-certs.sh"), "certs"],
                   check=True)
    p = subprocess.run([ZTNA, "intermediate", "--check", "-c",
                        "intermediate.json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "require_client_cert is off" in p.stderr
