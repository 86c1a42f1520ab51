"""Where settings come from: flags over the configuration file over
ZTNA_* environment variables over defaults; the original's flags and
variables; JSON log lines; external_ip explained, not silently dropped."""
import json
import os
import socket
import subprocess
import time
import urllib.request

from ztna import ZTNA, Pki, free_port, wait_for


def run(args, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ZTNA_")}
    e.update(env or {})
    return subprocess.run(args, capture_output=True, text=True, env=e,
                          timeout=30, **kw)


def healthy(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port,
                                    timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_intermediate(pki, args, env, tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ZTNA_")}
    e.update(env)
    log = open(tmp_path / "inter.log", "w+")
    port = str(free_port(socket.SOCK_DGRAM))
    p = subprocess.Popen([ZTNA, "intermediate", "--port", port] + args,
                         stdout=log, stderr=log, env=e, cwd=tmp_path)
    return p, log


def metrics_port_used(pki, tmp_path, args, env, candidates):
    p, log = start_intermediate(pki, args, env, tmp_path)
    try:
        wait_for(lambda: any(healthy(c) for c in candidates), 20,
                 "a metrics listener")
        return [c for c in candidates if healthy(c)]
    finally:
        p.terminate()
        assert p.wait(10) == 0


def test_flags_over_file_over_environment(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("intermediate", "relay", "--ip", "127.0.0.1")
    pe, pf, pc = free_port(), free_port(), free_port()
    env = {"ZTNA_CERT": cert, "ZTNA_KEY": key, "ZTNA_CA": pki.ca,
           "ZTNA_METRICS_PORT": str(pe)}
    # environment alone
    assert metrics_port_used(pki, tmp_path, [], env, [pe, pf, pc]) == [pe]
    # a file beats the environment
    conf = tmp_path / "i.json"
    conf.write_text(json.dumps({"metrics_port": pf}))
    assert metrics_port_used(pki, tmp_path, ["-c", str(conf)], env,
                             [pe, pf, pc]) == [pf]
    # ZTNA_CONFIG names the file
    assert metrics_port_used(pki, tmp_path, [],
                             dict(env, ZTNA_CONFIG=str(conf)),
                             [pe, pf, pc]) == [pf]
    # a flag beats both
    assert metrics_port_used(pki, tmp_path,
                             ["-c", str(conf), "--metrics-port", str(pc)],
                             env, [pe, pf, pc]) == [pc]


def test_environment_errors_name_their_source(tmp_path):
    p = run([ZTNA, "intermediate", "-n"],
            env={"ZTNA_METRICS_PORT": "http"}, cwd=tmp_path)
    assert p.returncode == 1
    assert "--metrics-port 'http' is not a port" in p.stderr
    assert "(in the ZTNA_* environment)" in p.stderr
    p = run([ZTNA, "agent", "-n"], env={"ZTNA_NO_DIRECT": "maybe"},
            cwd=tmp_path)
    assert p.returncode == 1
    assert "ZTNA_NO_DIRECT='maybe'" in p.stderr


def test_connector_from_environment_only(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("connector", "c", "--service", "web")
    env = {"ZTNA_SERVER": "127.0.0.1:4433", "ZTNA_SERVICE": "web",
           "ZTNA_FORWARD": "127.0.0.1:8080", "ZTNA_CERT": cert,
           "ZTNA_KEY": key, "ZTNA_CA": pki.ca}
    p = run([ZTNA, "connector", "-n"], env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "configuration OK" in p.stdout
    # one missing piece is named
    del env["ZTNA_FORWARD"]
    p = run([ZTNA, "connector", "-n"], env=env, cwd=tmp_path)
    assert p.returncode == 1
    assert "--service and --forward go together" in p.stderr
    # the original connector's variables fill the same options
    env["SERVICE_HOST"] = "127.0.0.1"
    env["SERVICE_PORT"] = "8080"
    del env["ZTNA_SERVER"]
    env["INTERMEDIATE_SERVER"] = "127.0.0.1:4433"
    p = run([ZTNA, "connector", "-n"], env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_agent_services_from_environment(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("agent", "a", "--service", "web", "--service",
                          "db")
    env = {"ZTNA_SERVER": "127.0.0.1:4433",
           "ZTNA_SERVICE": "web=10.100.0.1,db=10.100.0.2",
           "ZTNA_CERT": cert, "ZTNA_KEY": key, "ZTNA_CA": pki.ca}
    p = run([ZTNA, "agent", "-n"], env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    env["ZTNA_SERVICE"] = "web=10.100.0.1,db"
    p = run([ZTNA, "agent", "-n"], env=env, cwd=tmp_path)
    assert p.returncode == 1
    assert "--service 'db' is not ID=VIRTUAL_IP" in p.stderr


def test_original_flags(tmp_path):
    pki = Pki(tmp_path / "pki")
    ccert, ckey = pki.issue("connector", "c", "--service", "web")
    p = run([ZTNA, "connector", "-n", "--server", "127.0.0.1:4433",
             "--service", "web", "--forward", "127.0.0.1:8080",
             "--p2p-cert", ccert, "--p2p-key", ckey, "--ca-cert", pki.ca],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    acert, akey = pki.issue("agent", "a", "--service", "web")
    p = run([ZTNA, "agent", "-n", "--server", "127.0.0.1:4433",
             "--service", "web", "--service-ip", "10.100.0.1",
             "--cert", acert, "--key", akey, "--ca-cert", pki.ca],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = run([ZTNA, "agent", "-n", "--server", "127.0.0.1:4433",
             "--service-ip", "10.100.0.1"], cwd=tmp_path)
    assert p.returncode == 1 and "must follow a --service ID" in p.stderr
    icert, ikey = pki.issue("intermediate", "relay", "--ip", "127.0.0.1")
    # the original intermediate's operands: PORT CERT KEY
    p = run([ZTNA, "intermediate", "-n", "--ca-cert", pki.ca,
             "--external-ip", "203.0.113.7", "4433", icert, ikey],
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "external_ip '203.0.113.7' is not used" in p.stderr


def test_external_ip_in_original_file_is_explained(tmp_path):
    pki = Pki(tmp_path / "pki")
    icert, ikey = pki.issue("intermediate", "relay", "--ip", "127.0.0.1")
    conf = tmp_path / "intermediate.json"
    conf.write_text(json.dumps({"port": 4433, "external_ip": "198.51.100.1",
                                "cert_path": icert, "key_path": ikey,
                                "ca_cert_path": pki.ca}))
    p = run([ZTNA, "intermediate", "-n", "-c", str(conf)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "external_ip '198.51.100.1' is not used" in p.stderr
    assert "QUIC address discovery" in p.stderr


def test_json_log_lines(tmp_path):
    pki = Pki(tmp_path / "pki")
    icert, ikey = pki.issue("intermediate", "relay", "--ip", "127.0.0.1")
    mp = free_port()
    p, log = start_intermediate(pki, ["--cert", icert, "--key", ikey, "--ca",
                                      pki.ca, "--metrics-port", str(mp)],
                                {"ZTNA_LOG_FORMAT": "json"}, tmp_path)
    try:
        wait_for(lambda: healthy(mp), 20, "the intermediate")
    finally:
        p.terminate()
        assert p.wait(10) == 0
    log.seek(0)
    lines = [ln for ln in log.read().splitlines() if ln]
    assert len(lines) >= 2
    for ln in lines:
        rec = json.loads(ln)  # every line is one JSON object
        assert rec["app"] == "intermediate"
        assert rec["level"] in ("warning", "info", "debug", "trace")
        assert rec["ts"].endswith("Z") and rec["msg"]
    assert any("stopped" in json.loads(ln)["msg"] for ln in lines)
    p = run([ZTNA, "intermediate", "-n", "--log-format", "xml"],
            cwd=tmp_path)
    assert p.returncode == 1 and "is not text or json" in p.stderr
