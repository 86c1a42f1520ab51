"""The multi-call binary: dispatch, help, errors, --install."""
import os
import subprocess

APPLETS = ["intermediate", "connector", "agent", "keygen", "diag"]


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def test_help_lists_every_applet(ztna):
    for args in ([ztna], [ztna, "-h"], [ztna, "--help"]):
        p = run(args)
        assert p.returncode == 0
        for a in APPLETS:
            assert "\n  %s " % a in p.stdout


def test_version_names_the_libraries(ztna):
    p = run([ztna, "--version"])
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ztna ")
    for lib in ("ngtcp2 1.", "wolfSSL 5.", "libuv 1.", "lwIP 2.",
                "hiredis 1."):
        assert any(line.startswith(lib) for line in lines), lib


def test_statically_linked_dependencies(ztna):
    out = run(["ldd", ztna]).stdout
    for lib in ("wolfssl", "ngtcp2", "lwip", "libuv", "hiredis"):
        assert lib not in out


def test_unknown_applet_exits_127(ztna):
    p = run([ztna, "frobnicate"])
    assert p.returncode == 127
    assert "'frobnicate' is not an applet" in p.stderr


def test_bad_option_prints_usage_and_exits_1(ztna):
    p = run([ztna, "keygen", "--no-such-option"])
    assert p.returncode == 1
    assert "Usage: ztna keygen" in p.stderr
    assert p.stdout == ""


def test_applet_help(ztna):
    p = run([ztna, "keygen", "--help"])
    assert p.returncode == 0 and p.stdout.startswith("Usage: ztna keygen")
    for a in ("intermediate", "connector", "agent", "diag"):
        p = run([ztna, a, "--help"])
        assert p.returncode == 0 and "Usage: ztna %s" % a in p.stdout


def test_connector_egress_guard(ztna, tmp_path):
    from ztna import Pki
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("connector", "c", "--service", "x")
    base = [ztna, "connector", "-n", "--server", "127.0.0.1:4433",
            "--service", "x", "--cert", cert, "--key", key, "--ca", pki.ca,
            "--forward"]
    for backend, why in (("169.254.169.254:80", "metadata"),
                         ("[fe80::1]:80", "link-local"),
                         ("localhost:80", "resolves to loopback")):
        p = run(base + [backend])
        assert p.returncode == 1 and why in p.stderr, p.stderr
    p = run(base + ["127.0.0.1:80"])  # explicitly on loopback: allowed
    assert p.returncode == 0 and p.stdout == "configuration OK\n", p.stderr


def test_diag_needs_a_test_name(ztna):
    p = run([ztna, "diag"])
    assert p.returncode == 1
    assert "punch, status or api" in p.stderr, p.stderr
    p = run([ztna, "diag", "stun"])
    assert p.returncode == 1 and "unknown command 'stun'" in p.stderr


def test_intermediate_without_certificate_explains(ztna, tmp_path):
    p = run([ztna, "intermediate"], cwd=str(tmp_path))
    assert p.returncode == 1
    assert "no certificate: give --cert and --key" in p.stderr
    p = run([ztna, "intermediate", "--port", "99999"])
    assert p.returncode == 1 and "--port '99999' is not a port" in p.stderr


def test_symlink_dispatch_and_install(ztna, tmp_path):
    p = run([ztna, "--install", str(tmp_path)])
    assert p.returncode == 0, p.stderr
    for a in APPLETS:
        link = tmp_path / a
        assert os.path.islink(link)
        assert os.path.realpath(link) == os.path.realpath(ztna)
    p = run([str(tmp_path / "keygen"), "--help"])
    assert p.returncode == 0 and p.stdout.startswith("Usage: ztna keygen")
    os.symlink(ztna, tmp_path / "ztna-keygen")
    p = run([str(tmp_path / "ztna-keygen"), "--help"])
    assert p.returncode == 0 and p.stdout.startswith("Usage: ztna keygen")


def test_make_install(ztna, tmp_path):
    root = os.path.dirname(ztna)
    p = run(["make", "-C", root, "install", "DESTDIR=%s" % tmp_path,
             "PREFIX=/usr"])
    assert p.returncode == 0, p.stderr
    assert os.access(tmp_path / "usr/bin/ztna", os.X_OK)
    for a in APPLETS:
        link = tmp_path / "usr/bin" / ("ztna-" + a)
        assert os.readlink(link) == "ztna"
        out = run([str(link), "--help"])
        assert out.returncode == 0 and "Usage: ztna %s" % a in out.stdout
    for unit in ("ztna-intermediate.service", "ztna-agent.service",
                 "ztna-connector@.service"):
        text = (tmp_path / "usr/lib/systemd/system" / unit).read_text()
        assert "ExecStart=/usr/bin/ztna " in text
    assert (tmp_path / "usr/lib/sysusers.d/ztna.conf").exists()
