"""Real hosts, routers and NATs on one machine: Linux network namespaces.

Every namespace is named ztna-<pid>-<role> so runs never collide, and
Net.cleanup() deletes all of them, pass or fail. Addresses follow
testing.md: 198.51.100.0/24 and 203.0.113.0/24 for the "internet",
192.0.2.0/24 split into /28s for private LANs.
"""
import os
import subprocess


def run(cmd, check=True, **kw):
    """Runs a command (a list), returns CompletedProcess; raises with the
    command's stderr on failure when check is set."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode,
                                                   p.stderr.strip()))
    return p


class Net:
    def __init__(self, tag=None):
        self.prefix = "ztna-%d" % os.getpid() + ("-" + tag if tag else "")
        self.namespaces = []
        self.procs = []
        self._veth = 0

    def ns(self, role):
        """Creates namespace ztna-<pid>-<role> with loopback up."""
        name = "%s-%s" % (self.prefix, role)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.exec(name, ["ip", "link", "set", "lo", "up"])
        return name

    def exec(self, ns, cmd, check=True, **kw):
        return run(["ip", "netns", "exec", ns] + cmd, check=check, **kw)

    def popen(self, ns, cmd, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", ns] + cmd, **kw)
        self.procs.append(p)
        return p

    def link(self, a, a_addr, b, b_addr):
        """A veth pair between namespaces a and b with addresses in CIDR
        form; returns the interface names (in a, in b)."""
        self._veth += 1
        ia, ib = "v%da" % self._veth, "v%db" % self._veth
        run(["ip", "link", "add", ia, "netns", a, "type", "veth", "peer",
             "name", ib, "netns", b])
        for ns, ifname, addr in ((a, ia, a_addr), (b, ib, b_addr)):
            self.exec(ns, ["ip", "addr", "add", addr, "dev", ifname])
            self.exec(ns, ["ip", "link", "set", ifname, "up"])
        return ia, ib

    def route(self, ns, dest, via):
        self.exec(ns, ["ip", "route", "add", dest, "via", via])

    def router(self, ns):
        self.exec(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def nat(self, ns, out_if, hard=False, action=None, firewall=True):
        """Source NAT on out_if: masquerade ("easy", endpoint-independent
        mapping, port kept when free), masquerade fully-random ("hard",
        endpoint-dependent mapping), or another nft action. firewall=False
        leaves out the input filter below (plain Linux masquerade, as a
        new user would set it up). Replaces the namespace's rules and
        forgets existing mappings."""
        self.router(ns)
        if action is None:
            action = "masquerade" + (" fully-random" if hard else "")
        # Like a home router, the NAT drops unsolicited packets addressed
        # to itself from outside. (Without it, Linux would keep a
        # conntrack entry for such a packet, and the mapping a hole punch
        # then opens from inside would get another port.)
        rules = ("flush ruleset\n"
                 "table ip nat {\n"
                 " chain post {\n"
                 "  type nat hook postrouting priority 100;\n"
                 "  oifname \"%s\" %s\n"
                 " }\n"
                 "}\n") % (out_if, action)
        if firewall:
            rules += ("table ip filter {\n"
                      " chain input {\n"
                      "  type filter hook input priority 0;\n"
                      "  iifname \"%s\" ct state new drop\n"
                      " }\n"
                      "}\n") % out_if
        self.exec(ns, ["nft", "-f", "-"], input=rules)
        self.exec(ns, ["conntrack", "-F"], check=False)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "delete", ns], check=False)
        self.namespaces = []
