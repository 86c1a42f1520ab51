"""Helpers to run ztna's applets and the test client in e2e tests."""
import os
import pathlib
import select
import signal
import socket
import struct
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
# ZTNA_BIN runs the suites against another build (the sanitizer pass uses
# an ASan+UBSan binary).
ZTNA = os.environ.get("ZTNA_BIN") or str(ROOT / "ztna")
ZCLIENT = str(ROOT / "build" / "zclient")
ZLOAD = os.environ.get("ZTNA_ZLOAD") or str(ROOT / "build" / "zload")


def free_port(kind=socket.SOCK_STREAM):
    """A port on 127.0.0.1 that nothing holds now (TCP, or UDP with
    socket.SOCK_DGRAM)."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(cond, timeout=20.0, what="condition"):
    """Polls cond() until it is true; fails after a generous timeout."""
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s"
                         % (timeout, what))


def rss_kb(pid):
    """The resident set of process pid, in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def netns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


class Pki:
    """A CA and certificates made by ztna keygen."""

    def __init__(self, d):
        self.dir = pathlib.Path(d)
        self.run("ca", "--out", str(self.dir))

    def run(self, *args):
        p = subprocess.run([ZTNA, "keygen"] + list(args), capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr

    def issue(self, role, name, *args):
        self.run("issue", "--ca", str(self.dir), "--role", role, "--name",
                 name, "--out", str(self.dir), "--force", *args)
        return str(self.dir / (name + ".crt")), str(self.dir / (name + ".key"))

    @property
    def ca(self):
        return str(self.dir / "ca.crt")


class Intermediate:
    def __init__(self, pki, ns=None, port=4433, metrics_port=9090,
                 bind="0.0.0.0", extra=(), name="relay", logdir=None,
                 env=None, creds=None):
        """creds: (certificate, key) to run with, as a restarted daemon
        does; default: a new pair issued for name."""
        self.cert, self.key = creds or pki.issue("intermediate", name,
                                                 "--ip", "127.0.0.1")
        self.ns = ns
        self.port = port
        self.metrics_port = metrics_port
        self.log = open(os.path.join(logdir or str(pki.dir),
                                     "intermediate-%d.log" % port), "w+")
        args = [ZTNA, "intermediate", "-v", "--cert", self.cert, "--key",
                self.key, "--ca", pki.ca, "-p", str(port), "-b", bind,
                "--metrics-port", str(metrics_port), "--metrics-bind",
                "127.0.0.1"] + list(extra)
        self.proc = subprocess.Popen(netns_prefix(ns) + args,
                                     stdout=self.log, stderr=self.log,
                                     env=dict(os.environ, **(env or {})))
        wait_for(lambda: self.healthy(), what="intermediate /healthz")

    def http(self, path):
        if self.ns:
            p = subprocess.run(netns_prefix(self.ns) + [
                "curl", "-s", "--max-time", "5",
                "http://127.0.0.1:%d%s" % (self.metrics_port, path)],
                capture_output=True, text=True)
            return p.stdout if p.returncode == 0 else None
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (
                    self.metrics_port, path), timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    def healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError("intermediate exited: " + self.logtext())
        return self.http("/healthz") == "ok\n"

    def metrics(self):
        out = {}
        for line in (self.http("/metrics") or "").splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = int(v)
        return out

    def metric(self, name):
        return self.metrics().get(name, 0)

    def logtext(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Zload:
    """n simulated agents in one process (build/zload) at the intermediate
    on 127.0.0.1:port, registered for service; unless no_open, each asks
    for a relay session. Waits until zload says ready; stages holds what
    it printed per stage ("connected", "registered", "opened": the words
    after the stage's name). quit() closes every connection."""

    def __init__(self, ca, cert, port, service, n, no_open=False):
        self.proc = subprocess.Popen(
            [ZLOAD, "--server", "127.0.0.1:%d" % port, "--ca", ca, "--cert",
             cert[0], "--key", cert[1], "--service", service, "-n", str(n)]
            + (["--no-open"] if no_open else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.stages = {}
        for line in self.proc.stdout:
            w = line.split()
            if w and w[0] == "ready":
                return
            if w:
                self.stages[w[0]] = w[1:]
        rc = self.proc.wait(timeout=30)
        raise AssertionError("zload ended before its %d agents were ready "
                             "(exit %s)" % (n, rc))

    def quit(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Client:
    """The test client: send commands, wait for events."""

    def __init__(self, server, pki, cert=None, ns=None, bind="0.0.0.0:0",
                 sni="ztna-server", alpn=None):
        args = [ZCLIENT, "--server", server, "--ca", pki.ca, "--sni", sni,
                "--bind", bind]
        if alpn:
            args += ["--alpn", alpn]
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        self.proc = subprocess.Popen(netns_prefix(ns) + args,
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.events = []
        self.buf = ""

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _pump(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return False
        data = os.read(self.proc.stdout.fileno(), 65536).decode()
        if not data:
            return None
        self.buf += data
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.events.append(line)
        return True

    def expect(self, prefix, timeout=20.0):
        """Returns (and consumes) the first event starting with prefix."""
        end = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e.startswith(prefix):
                    del self.events[i]
                    return e
            left = end - time.time()
            if left <= 0:
                break
            if self._pump(min(left, 0.2)) is None:
                break
        raise AssertionError("no '%s' event; got %r; stderr: %s" % (
            prefix, self.events, self.stderr()))

    def quiet(self, prefix, seconds=1.0):
        """Asserts that no event starting with prefix arrives."""
        end = time.time() + seconds
        while time.time() < end:
            self._pump(0.1)
        assert not [e for e in self.events if e.startswith(prefix)], \
            self.events

    def stderr(self):
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# --- packets ---------------------------------------------------------------

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff


def udp4(src, dst, sport, dport, payload):
    """An IPv4/UDP packet with correct checksums."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    ph = s + d + struct.pack("!BBH", 0, 17, ulen)
    uh = struct.pack("!HHHH", sport, dport, ulen, 0)
    uc = csum(ph + uh + payload) or 0xffff
    uh = struct.pack("!HHHH", sport, dport, ulen, uc)
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0x4000, 64, 17,
                     0, s, d)
    ih = ih[:10] + struct.pack("!H", csum(ih)) + ih[12:]
    return ih + uh + payload


def parse_udp4(pkt):
    """(src, dst, sport, dport, payload), asserting every checksum."""
    assert pkt[0] == 0x45, pkt[:1].hex()
    assert csum(pkt[:20]) == 0, "bad IPv4 header checksum"
    src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
    ulen = struct.unpack("!H", pkt[24:26])[0]
    ph = pkt[12:20] + struct.pack("!BBH", 0, 17, ulen)
    assert csum(ph + pkt[20:20 + ulen]) == 0, "bad UDP checksum"
    sport, dport = struct.unpack("!HH", pkt[20:24])
    return src, dst, sport, dport, pkt[28:20 + ulen]
