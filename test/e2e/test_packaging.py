"""What a deployment installs: the static release binary (same bytes from
the same tree), the systemd units, the Kubernetes manifests and the Debian
package. (The container image runs in test_container.py.)"""
import os
import re
import shutil
import subprocess

import pytest

from ztna import ZTNA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def make(*args, **kw):
    p = subprocess.run(["make", "--no-print-directory", "-s"] + list(args),
                       cwd=ROOT, capture_output=True, text=True, **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def test_release_is_static_small_and_reproducible(tmp_path):
    outs = []
    for i in (1, 2):
        build = str(tmp_path / ("b%d" % i))
        make("release", "BUILD=" + build)
        outs.append(os.path.join(build, "release", "ztna"))
    a, b = (open(o, "rb").read() for o in outs)
    assert a == b, "two release builds of one tree differ"
    assert len(a) <= 2750000  # Makefile RELEASE_MAX (nghttp3 +140 KB)
    info = sh(["file", outs[0]]).stdout
    assert "statically linked" in info and "stripped" in info
    assert sh(["ldd", outs[0]]).returncode != 0  # "not a dynamic executable"
    assert sh([outs[0], "--version"]).stdout == sh([ZTNA,
                                                    "--version"]).stdout


UNITS = ("ztna-intermediate.service", "ztna-agent.service",
         "ztna-connector@.service")


def test_systemd_units_verify_and_are_hardened(tmp_path):
    prefix = str(tmp_path / "usr")
    make("install", "DESTDIR=/", "PREFIX=" + prefix)
    unitdir = os.path.join(prefix, "lib", "systemd", "system")
    assert sorted(os.listdir(unitdir)) == sorted(UNITS)
    # the installed paths are the ones the units name
    for u in UNITS:
        text = open(os.path.join(unitdir, u)).read()
        for exe in re.findall(r"^Exec\w+=(\S+)", text, re.M):
            assert os.access(exe, os.X_OK), (u, exe)
        assert "User=ztna" in text and "NoNewPrivileges=yes" in text
    # an instance of the template, as systemctl would load it
    inst = tmp_path / "ztna-connector@web.service"
    shutil.copy(os.path.join(unitdir, "ztna-connector@.service"), inst)
    scores = {}
    for path in [os.path.join(unitdir, u) for u in UNITS[:2]] + [str(inst)]:
        p = sh(["systemd-analyze", "verify", path], cwd=str(tmp_path))
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), \
            (path, p.stdout, p.stderr)
        p = sh(["systemd-analyze", "security", "--offline=yes", path],
               cwd=str(tmp_path))
        m = re.search(r"Overall exposure level for \S+: ([\d.]+)", p.stdout)
        assert m, p.stdout + p.stderr
        scores[os.path.basename(path)] = float(m.group(1))
    print("systemd-analyze security (0 best, 10 worst):", scores)
    for name, score in scores.items():
        assert score <= 2.5, (name, score)
    agent = open(os.path.join(unitdir, "ztna-agent.service")).read()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN\n" in agent
    assert "DeviceAllow=/dev/net/tun rw" in agent
    for u in ("ztna-intermediate.service", "ztna-connector@.service"):
        assert "CapabilityBoundingSet=\n" in open(os.path.join(unitdir,
                                                                u)).read()
    sysusers = os.path.join(prefix, "lib", "sysusers.d", "ztna.conf")
    assert re.search(r"^u ztna ", open(sysusers).read(), re.M)


def test_kubernetes_manifests(tmp_path):
    import yaml
    kubectl = sh([os.path.join(ROOT, "test", "tools",
                               "debian-kubectl.sh")]).stdout.strip()
    assert kubectl and os.access(kubectl, os.X_OK)
    k8s = tmp_path / "kubernetes"
    shutil.copytree(os.path.join(ROOT, "packaging", "kubernetes"), k8s)
    pki = str(k8s / "overlays" / "example" / "pki")
    for args in (["ca", "--out", pki],
                 ["issue", "--ca", pki, "--role", "intermediate", "--name",
                  "intermediate", "--dns", "ztna.example.org", "--out", pki],
                 ["issue", "--ca", pki, "--role", "connector", "--name",
                  "web", "--service", "web", "--out", pki]):
        assert sh([ZTNA, "keygen"] + args).returncode == 0
    docs = {}
    for which in ("base", "overlays/example"):
        p = sh([kubectl, "kustomize", str(k8s / which)])
        assert p.returncode == 0, p.stderr
        docs[which] = [d for d in yaml.safe_load_all(p.stdout) if d]
    objs = {(d["kind"], d["metadata"]["name"]): d
            for d in docs["overlays/example"]}
    kinds = sorted(k for k, _ in objs)
    assert kinds.count("Deployment") == 2 and kinds.count("Secret") == 2
    assert ("Namespace", "ztna") in objs
    for d in docs["overlays/example"]:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "ztna"
    secrets = {n for k, n in objs if k == "Secret"}
    svc = objs[("Service", "ztna-intermediate")]
    assert svc["spec"]["ports"] == [{"name": "quic", "port": 4433,
                                     "targetPort": "quic",
                                     "protocol": "UDP"}]
    inter = objs[("Deployment", "ztna-intermediate")]
    web = objs[("Deployment", "web")]
    sidecars = [c for c in web["spec"]["template"]["spec"]["containers"]
                if c["name"] == "ztna-connector"]
    assert len(sidecars) == 1 and len(
        web["spec"]["template"]["spec"]["containers"]) == 2
    for dep, c in ((inter, inter["spec"]["template"]["spec"]["containers"][0]),
                   (web, sidecars[0])):
        pod = dep["spec"]["template"]["spec"]
        assert c["image"] == "registry.example.org/ztna:0.1.0"
        assert c["command"][0] in ("/usr/bin/intermediate",
                                   "/usr/bin/connector")
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["ZTNA_METRICS_BIND"] == "0.0.0.0"
        ports = {p["name"]: p for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe"):
            port = c[probe]["httpGet"]["port"]
            assert ports[port]["containerPort"] == int(
                env["ZTNA_METRICS_PORT"])
        sc = dict(pod.get("securityContext", {}), **c["securityContext"])
        assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["fsGroup"] == sc["runAsUser"]
        # every key file the daemon is told about is in a mounted Secret
        # that the overlay generated
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        for var in ("ZTNA_CERT", "ZTNA_KEY", "ZTNA_CA"):
            d, f = os.path.split(env[var])
            (vol,) = [n for n, mp in mounts.items() if mp == d]
            sec = vols[vol]["secret"]
            assert sec["secretName"] in secrets
            data = objs[("Secret", sec["secretName"])]["data"]
            assert f in data
            assert sec["defaultMode"] & 0o040  # fsGroup reads it
    assert [c for c in sidecars[0]["env"]
            if c["name"] == "ZTNA_SERVER"][0]["value"] == \
        "ztna-intermediate:4433"


def test_debian_package_installs_and_removes(tmp_path):
    make("deb")
    deb = os.path.join(ROOT, "build", "ztna.deb")
    fields = sh(["dpkg-deb", "-f", deb]).stdout
    assert "Package: ztna" in fields and "Depends" not in fields
    files = sh(["dpkg-deb", "-c", deb]).stdout
    for f in ("./usr/bin/ztna", "./usr/bin/ztna-agent",
              "./usr/lib/systemd/system/ztna-intermediate.service",
              "./usr/lib/sysusers.d/ztna.conf",
              "./usr/share/man/man1/ztna-connector.1.gz",
              "./usr/share/doc/ztna/copyright"):
        assert f in files, f
    # lintian: no error (warnings and notes are printed)
    p = sh(["lintian", "--tag-display-limit", "0", deb])
    print(p.stdout)
    errors = [ln for ln in p.stdout.splitlines() if ln.startswith("E:")]
    assert not errors, errors
    # into a scratch root: the maintainer script runs from outside it
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    p = sh(["dpkg", "--root=" + str(root), "--force-script-chrootless",
            "--force-not-root", "--log=/dev/null", "-i", deb])
    assert p.returncode == 0, p.stdout + p.stderr
    out = sh(["chroot", str(root), "/usr/bin/ztna", "--version"])
    assert out.returncode == 0 and out.stdout.startswith("ztna ")
    out = sh(["chroot", str(root), "/usr/bin/ztna-keygen", "--help"])
    assert out.returncode == 0 and "Usage: ztna keygen" in out.stdout
    if shutil.which("systemd-sysusers"):
        assert re.search(r"^ztna:", (root / "etc/passwd").read_text(), re.M)
    p = sh(["dpkg", "--root=" + str(root), "--force-script-chrootless",
            "--log=/dev/null", "--purge", "ztna"])
    assert p.returncode == 0, p.stdout + p.stderr
    left = [os.path.join(d, f) for d, _, fs in os.walk(root / "usr")
            for f in fs]
    assert left == [], left
