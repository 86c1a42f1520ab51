"""keygen output checked by an independent verifier: the openssl tool."""
import os
import stat
import subprocess

import pytest


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def ossl(*args):
    p = run(["openssl"] + list(args))
    assert p.returncode == 0, p.stderr
    return p.stdout


def text(cert):
    return ossl("x509", "-in", str(cert), "-noout", "-text")


def sans(cert):
    out = ossl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    return [s.strip() for s in out.splitlines()[1].split(",")]


@pytest.fixture(params=["ec", "ed25519"])
def ca(ztna, tmp_path, request):
    d = tmp_path / "ca"
    p = run([ztna, "keygen", "ca", "--out", str(d), "--type", request.param])
    assert p.returncode == 0, p.stderr
    return d, request.param


def issue(ztna, ca_dir, out, *args):
    p = run([ztna, "keygen", "issue", "--ca", str(ca_dir), "--out", str(out)]
            + list(args))
    assert p.returncode == 0, p.stderr
    return p


def test_ca(ca):
    d, kind = ca
    t = text(d / "ca.crt")
    assert "CA:TRUE" in t
    assert "Certificate Sign" in t
    ossl("verify", "-CAfile", str(d / "ca.crt"), str(d / "ca.crt"))
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    assert ("ED25519" if kind == "ed25519" else "prime256v1") in \
        ossl("pkey", "-in", str(d / "ca.key"), "-noout", "-text").upper() \
        .replace("PRIME256V1", "prime256v1")


def test_roles(ztna, ca, tmp_path):
    d, kind = ca
    out = tmp_path / "certs"
    issue(ztna, d, out, "--role", "intermediate", "--name", "relay",
          "--dns", "relay.example.org", "--ip", "198.51.100.10",
          "--ip", "2001:db8::10", "--type", kind)
    issue(ztna, d, out, "--role", "connector", "--name", "conn",
          "--service", "echo-service", "--service", "web")
    issue(ztna, d, out, "--role", "agent", "--name", "alice",
          "--service", "Echo-Service", "--service", "*")
    issue(ztna, d, out, "--role", "admin", "--name", "ops")

    for name in ("relay", "conn", "alice", "ops"):
        ossl("verify", "-CAfile", str(d / "ca.crt"), str(out / (name + ".crt")))
        assert stat.S_IMODE(os.stat(out / (name + ".key")).st_mode) == 0o600
        # The key is the certificate's key.
        pub_key = ossl("pkey", "-in", str(out / (name + ".key")), "-pubout")
        pub_crt = ossl("x509", "-in", str(out / (name + ".crt")), "-noout",
                       "-pubkey")
        assert pub_key == pub_crt

    assert sans(out / "relay.crt") == [
        "DNS:ztna-server", "DNS:relay.example.org", "IP Address:198.51.100.10",
        "IP Address:2001:DB8:0:0:0:0:0:10"]
    assert sans(out / "conn.crt") == [
        "DNS:ztna-connector", "DNS:connector.echo-service.ztna",
        "DNS:connector.web.ztna"]
    assert sans(out / "alice.crt") == ["DNS:agent.echo-service.ztna",
                                       "DNS:agent.*.ztna"]
    assert sans(out / "ops.crt") == ["DNS:admin.ztna"]
    t = text(out / "ops.crt")
    assert "TLS Web Client Authentication" in t
    assert "Server Authentication" not in t
    assert "OU = admin, CN = ops" in t

    # An intermediate's certificate is also a client's: the members of a
    # cluster present it on their links to each other (docs/cluster.md).
    t = text(out / "relay.crt")
    assert "TLS Web Server Authentication, TLS Web Client Authentication" \
        in t
    assert "CA:TRUE" not in t
    t = text(out / "conn.crt")
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in t
    t = text(out / "alice.crt")
    assert "TLS Web Client Authentication" in t
    assert "Server Authentication" not in t
    assert "OU = agent, CN = alice" in t
    assert "Digital Signature" in t


def test_never_overwrites_without_force(ztna, ca, tmp_path):
    d, _ = ca
    out = tmp_path / "c"
    issue(ztna, d, out, "--role", "agent", "--name", "a", "--service", "s")
    before = (out / "a.key").read_bytes()
    p = run([ztna, "keygen", "issue", "--ca", str(d), "--out", str(out),
             "--role", "agent", "--name", "a", "--service", "s"])
    assert p.returncode == 1 and "--force" in p.stderr
    assert (out / "a.key").read_bytes() == before
    issue(ztna, d, out, "--role", "agent", "--name", "a", "--service", "s",
          "--force")
    assert (out / "a.key").read_bytes() != before
    p = run([ztna, "keygen", "ca", "--out", str(d)])
    assert p.returncode == 1 and "--force" in p.stderr


def test_validity(ztna, ca, tmp_path):
    d, _ = ca
    out = tmp_path / "c"
    issue(ztna, d, out, "--role", "agent", "--name", "old", "--service", "s",
          "--not-before", "2020-01-01", "--days", "30")
    p = run(["openssl", "verify", "-CAfile", str(d / "ca.crt"),
             str(out / "old.crt")])
    assert p.returncode != 0 and "expired" in p.stdout + p.stderr
    assert "Not After : Jan 31 00:00:00 2020 GMT" in text(out / "old.crt")


@pytest.mark.parametrize("args,msg", [
    (["--role", "root", "--name", "x"], "--role must be"),
    # An admin certificate is for the API: it grants no service.
    (["--role", "admin", "--name", "x", "--service", "s"],
     "grants no service"),
    (["--role", "agent", "--name", "x"], "needs at least one --service"),
    (["--role", "agent", "--name", "../x", "--service", "s"], "--name"),
    (["--role", "agent", "--name", "x", "--service", "a b"], "--service"),
    (["--role", "intermediate", "--name", "x", "--ip", "1.2.3"],
     "not an IPv4 or IPv6"),
    (["--role", "intermediate", "--name", "x", "--dns", "a..b"],
     "is not a DNS name"),
    (["--role", "agent", "--name", "x", "--service", "s", "--days", "0"],
     "--days"),
    # Names that grant roles come from --role and --service alone.
    (["--role", "connector", "--name", "x", "--service", "s", "--dns",
      "ztna-server"], "is reserved"),
    (["--role", "agent", "--name", "x", "--service", "s", "--dns",
      "ZTNA-Connector"], "is reserved"),
    (["--role", "agent", "--name", "x", "--service", "s", "--dns",
      "connector.web.ztna"], "is reserved"),
    (["--role", "intermediate", "--name", "x", "--dns", "agent.web.ztna"],
     "is reserved"),
])
def test_bad_input(ztna, tmp_path, args, msg):
    d = tmp_path / "ca"
    assert run([ztna, "keygen", "ca", "--out", str(d)]).returncode == 0
    p = run([ztna, "keygen", "issue", "--ca", str(d), "--out",
             str(tmp_path / "o")] + args)
    assert p.returncode == 1
    assert msg in p.stderr


def test_force_does_not_follow_symlinks(ztna, ca, tmp_path):
    """--force replaces files; a symbolic link planted where a key goes
    must not make keygen write through it."""
    d, _ = ca
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / "a.key").symlink_to(victim)
    p = run([ztna, "keygen", "issue", "--ca", str(d), "--out", str(out),
             "--role", "agent", "--name", "a", "--service", "s", "--force"])
    assert p.returncode == 1
    assert "symbolic link" in p.stderr
    assert victim.read_text() == "precious\n"


def test_daemon_warns_of_a_readable_key(ztna, ca, tmp_path):
    d, _ = ca
    issue(ztna, d, tmp_path, "--role", "agent", "--name", "a", "--service",
          "s")
    key = tmp_path / "a.key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    p = run([ztna, "agent", "-n", "--server", "127.0.0.1:4433", "--service",
             "s=10.100.0.2", "--cert", str(tmp_path / "a.crt"), "--key",
             str(key), "--ca", str(d / "ca.crt")])
    assert "readable by everyone" in p.stderr, p.stderr
