"""The container image (packaging/Containerfile, built with podman from the
static release binary) run as a container runtime would run it: its root
file system in namespaces of its own, with /proc, /dev, /etc/hosts and
/etc/resolv.conf provided, as the image's user, entered by the applet's
symlink name. The connector inside finds the intermediate by name through a
DNS server of the test's, serves a request end to end, and shows /healthz,
/readyz and /metrics to another namespace."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from datapath import world_fixture
from ztna import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DNSD = os.path.join(ROOT, "test", "tools", "dnsd.py")
IMAGE = "localhost/ztna:e2e-%d" % os.getpid()
VIP = "10.100.0.9"
CTR_ADDR = "192.0.2.66"

world = world_fixture("ctr")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True,
                          **kw)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image's root file system (exported) and its configuration."""
    p = subprocess.run(["make", "-s", "image", "IMAGE=" + IMAGE], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    rootfs = str(tmp_path_factory.mktemp("rootfs"))
    os.chmod(rootfs, 0o755)  # its "/", for the image's user
    cid = sh(["podman", "create", IMAGE]).stdout.strip()
    try:
        exp = subprocess.Popen(["podman", "export", cid],
                               stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", rootfs, "-xf", "-"], stdin=exp.stdout,
                       check=True)
        assert exp.wait() == 0
        conf = json.loads(sh(["podman", "image", "inspect",
                              IMAGE]).stdout)[0]["Config"]
    finally:
        subprocess.run(["podman", "rm", "-f", cid], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True)
    yield rootfs, conf
    shutil.rmtree(rootfs, ignore_errors=True)


def test_image_is_minimal(image):
    rootfs, conf = image
    files = []
    for d, _, names in os.walk(rootfs):
        for n in names:
            files.append(os.path.relpath(os.path.join(d, n), rootfs))
    # the binary, its applet links, and what the runtime itself puts in
    # /etc; no shell, no library
    assert sorted(f for f in files if not f.startswith("etc/")) == sorted(
        ["usr/bin/ztna"] + ["usr/bin/" + a for a in (
            "intermediate", "connector", "agent", "keygen", "diag")])
    for a in ("intermediate", "connector", "agent", "keygen", "diag"):
        assert os.readlink(os.path.join(rootfs, "usr/bin", a)) == "ztna"
    out = sh(["file", os.path.join(rootfs, "usr/bin/ztna")]).stdout
    assert "statically linked" in out and "stripped" in out
    assert os.path.getsize(os.path.join(rootfs, "usr/bin/ztna")) <= 2750000  # Makefile RELEASE_MAX (nghttp3 +140 KB)
    uid = conf["User"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert conf["Entrypoint"] == ["/usr/bin/ztna"]
    assert "ZTNA_METRICS_BIND=0.0.0.0" in conf["Env"]
    # --version is the same as the development build's
    v = sh(["chroot", rootfs, "/usr/bin/ztna", "--version"]).stdout
    from ztna import ZTNA
    assert v == sh([ZTNA, "--version"]).stdout


def run_container(net, ns, rootfs, conf, applet, env, mounts, log):
    """Runs /usr/bin/<applet> of rootfs in ns with private mount and PID
    namespaces, as the image's user, with env (the image's Env below it)
    and files bind-mounted (host path -> path in the container)."""
    script = ["set -e", "mount --make-rprivate /",
              "mount -t proc proc %s/proc" % rootfs,
              "mount -t tmpfs -o mode=0755 dev %s/dev" % rootfs]
    for d in ("null", "zero", "urandom", "random"):
        script.append("touch %s/dev/%s && mount --bind /dev/%s %s/dev/%s"
                      % (rootfs, d, d, rootfs, d))
    for src, dst in mounts:
        target = rootfs + dst
        if os.path.isdir(src):
            script.append("mkdir -p %s" % target)
        else:
            script.append("mkdir -p %s && touch %s"
                          % (os.path.dirname(target), target))
        script.append("mount --bind -o ro %s %s" % (src, target))
    script.append("exec chroot --userspec=%s %s /usr/bin/%s"
                  % (conf["User"], rootfs, applet))
    e = {"PATH": "/usr/bin"}
    for kv in conf.get("Env") or []:
        k, v = kv.split("=", 1)
        e[k] = v
    e.update(env)
    return net.popen(ns, ["unshare", "--mount", "--pid", "--fork", "sh",
                          "-c", "\n".join(script)],
                     env=e, stdout=log, stderr=log, start_new_session=True)


def test_connector_container_by_name(world, image, tmp_path):
    rootfs, conf = image
    net = world.net
    uid, gid = (conf["User"].split(":") + [None])[:2]
    gid = gid or uid
    # The DNS server: relay.test is the intermediate's outside address.
    dns = net.popen(world.inet, [sys.executable, DNSD, "203.0.113.10",
                                 "relay.test=203.0.113.10"],
                    stdout=subprocess.PIPE, text=True)
    assert dns.stdout.readline().strip() == "ready"
    # The container's host, behind the connector side's NAT, with an
    # application on its loopback (the sidecar's neighbour).
    ns = net.ns("ctr")
    net.link(ns, CTR_ADDR + "/28", world.nat_c, "192.0.2.65/28")
    net.route(ns, "default", "192.0.2.65")
    www = tmp_path / "www"
    www.mkdir()
    marker = "served from inside the container %d\n" % os.getpid()
    (www / "index.html").write_text(marker)
    app = net.popen(ns, [sys.executable, "-m", "http.server", "8080",
                         "--bind", "127.0.0.1", "--directory", str(www)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: net.exec(ns, ["curl", "-s", "-m", "2",
                                   "http://127.0.0.1:8080/"],
                              check=False).stdout == marker, what="app")
    # Keys as a secret volume: readable by the image's user only.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cert, key = world.pki.issue("connector", "ctrconn", "--service", "ctr")
    for src, name in ((cert, "tls.crt"), (key, "tls.key"),
                      (world.pki.ca, "ca.crt")):
        shutil.copy(src, secrets / name)
        os.chown(secrets / name, int(uid), int(gid))
        os.chmod(secrets / name, 0o600 if name == "tls.key" else 0o644)
    os.chmod(secrets, 0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")  # relay.test is not here
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 203.0.113.10\noptions timeout:2\n")
    log = open(tmp_path / "container.log", "w+")
    env = {"ZTNA_SERVER": "relay.test:4433", "ZTNA_SERVICE": "ctr",
           "ZTNA_FORWARD": "127.0.0.1:8080",
           "ZTNA_CERT": "/etc/ztna/tls.crt", "ZTNA_KEY": "/etc/ztna/tls.key",
           "ZTNA_CA": "/etc/ztna/ca.crt", "ZTNA_METRICS_PORT": "9091",
           "ZTNA_VERBOSE": "1"}
    ctr = run_container(net, ns, rootfs, conf, "connector", env,
                        [(str(hosts), "/etc/hosts"),
                         (str(resolv), "/etc/resolv.conf"),
                         (str(secrets), "/etc/ztna")], log)
    try:
        def logtext():
            log.seek(0)
            return log.read()

        def probe(path):
            # from another namespace: the NAT box in front of the host
            return net.exec(world.nat_c, [
                "curl", "-s", "-m", "3", "-o", "/dev/null", "-w",
                "%{http_code}", "http://%s:9091%s" % (CTR_ADDR, path)],
                check=False).stdout

        wait_for(lambda: probe("/readyz") == "200", timeout=60,
                 what="the container's /readyz (log: %s)" % log.name)
        assert probe("/healthz") == "200"
        metrics = net.exec(world.nat_c, ["curl", "-s", "-m", "3",
                                         "http://%s:9091/metrics"
                                         % CTR_ADDR]).stdout
        assert 'ztna_connector_service_up{service="ctr"} 1' in metrics
        # as the image's user, not root, entered as "connector"
        pid = subprocess.run(["pgrep", "-x", "connector"],
                             capture_output=True, text=True).stdout.split()
        assert len(pid) == 1, pid
        with open("/proc/%s/status" % pid[0]) as f:
            status = f.read()
        uids = [ln for ln in status.splitlines() if ln.startswith("Uid:")]
        assert uids[0].split()[1:] == [uid] * 4, uids
        caps = [ln for ln in status.splitlines() if ln.startswith("CapEff:")]
        assert int(caps[0].split()[1], 16) == 0
        # end to end: an agent reaches the application in the container
        world.agent_certs["carol"] = world.pki.issue("agent", "carol",
                                                     "--service", "ctr")
        ans = net.ns("agent9")
        net.link(ans, "192.0.2.130/28", world.nat_a, "192.0.2.129/28")
        net.route(ans, "default", "192.0.2.129")
        world.start_agent("agent9", ans, "carol", port=9098,
                          services={"ctr": VIP})
        p = net.exec(ans, ["curl", "-s", "-m", "20",
                           "http://%s:8080/" % VIP], check=False)
        assert p.stdout == marker, (p.stdout, p.stderr, logtext()[-3000:])
    finally:
        pid = subprocess.run(["pgrep", "-x", "connector"],
                             capture_output=True, text=True).stdout.split()
        for p in pid:
            os.kill(int(p), signal.SIGTERM)
        try:
            rc = ctr.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ctr.pid, signal.SIGKILL)
            rc = "still running"
        app.terminate()
        dns.terminate()
        dns.wait(10)
    assert rc == 0, logtext()[-3000:]
    # the name was looked up through the test's DNS server (not /etc/hosts)
    assert "relay.test 1 203.0.113.10" in dns.stdout.read()
