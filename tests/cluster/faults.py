"""Fault injection for cluster tests: a private network per test, processes
stopped and killed, a disk that fills up.

The network. Network(harness, hosts) creates, as root:

    hub namespace  kp<pid>x<n>-hub   bridge br0 10.250.0.1/24 (the test client)
       │ veth h-NAME ── eth0
    node namespace kp<pid>x<n>-NAME  eth0 10.250.0.(10+i)/24, lo

and moves the test process's main thread into the hub namespace (setns), so
the test's HTTP clients, its threads and the commands it runs (clusterctl)
reach the nodes at their own addresses while nothing of the test touches the
machine's namespaces. Every node is started inside its namespace with
`ip netns exec`; its pid is the daemon's own, so kill -9 and SIGSTOP hit it.
Because each namespace is private, every test may use the same addresses.

Partitions drop packets silently at the receiver (as a cable pulled in the
middle would): an `ip rule ... blackhole` for the source address in the
receiving node's namespace, ahead of the local table (which is moved from
priority 0 to 32765 in each node namespace so that the rules apply to
local delivery). A one-way block is one such rule; a partition is the rule
in both directions; heal() removes them all. The test client in the hub is
never cut off unless a test asks for it (isolate(..., client=True)).

Packet loss and delay need the kernel's netem qdisc; where it is missing
(as in some VM kernels) shape() falls back to a token bucket (tbf) that
delays by queueing, and delay()/loss() raise SkipTest saying so.

Everything is removed in the harness's cleanup after the processes are
stopped: the thread goes back to its namespace, the namespaces are deleted
(which deletes their links), tmpfs mounts are unmounted. Namespaces left by
a test process that died (its pid in the name is gone) are removed by the
next Network. Where namespaces cannot be created (not root, no CAP_SYS_ADMIN,
a container without them) Network raises unittest.SkipTest with the reason;
tests that need only process faults use loopback and run anyway.

Python 3 standard library only (ctypes for setns(2)).
"""

import ctypes
import os
import re
import signal
import subprocess
import unittest

CLONE_NEWNET = 0x40000000
SUBNET = "10.250.0"
HUB_ADDR = SUBNET + ".1"
_RULE_PREF_BASE = 100

_libc = ctypes.CDLL(None, use_errno=True)
_counter = [0]


def _ip(*args, check=True):
    cp = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and cp.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {cp.stderr.strip() or cp.returncode}")
    return cp


def _setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_unavailable():
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode != 0:
        return "ip (iproute2) not installed"
    probe = f"kp{os.getpid()}probe"
    cp = _ip("netns", "add", probe, check=False)
    if cp.returncode != 0:
        return f"ip netns add: {cp.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _sweep_stale():
    """Delete namespaces of ours whose test process is gone."""
    cp = _ip("netns", "list", check=False)
    for line in cp.stdout.splitlines():
        m = re.match(r"(kp(\d+)x\d+-\S+|kp(\d+)probe)", line)
        if not m:
            continue
        pid = int(m.group(2) or m.group(3))
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", m.group(1), check=False)


class Host:
    """One node's namespace and address."""

    def __init__(self, net, name, ip):
        self.net = net
        self.name = name
        self.ip = ip
        self.ns = f"{net.prefix}-{name}"

    def wrap(self, argv):
        """@argv run inside this namespace (same pid: ip netns exec execs)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def __repr__(self):
        return f"Host({self.name}, {self.ip})"


class Network:
    """A private network of @names hosts; see the module comment."""

    def __init__(self, harness, names):
        why = netns_unavailable()
        if why:
            raise unittest.SkipTest(f"network namespaces not permitted ({why}): partition "
                                    f"faults need them; loopback-only faults still run")
        _sweep_stale()
        _counter[0] += 1
        self.prefix = f"kp{os.getpid()}x{_counter[0]}"
        self.hub = f"{self.prefix}-hub"
        self.hosts = {}
        self.rules = []  # (host, pref)
        self.shaped = set()
        self._home = None
        self._made = []
        harness.add_network(self)
        try:
            self._make_hub()
            for i, name in enumerate(names):
                self._add_host(name, f"{SUBNET}.{10 + i + 1}")
            self._enter()
        except BaseException:
            self.close()
            raise

    def _make_hub(self):
        _ip("netns", "add", self.hub)
        self._made.append(self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", HUB_ADDR + "/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def _add_host(self, name, ip):
        host = Host(self, name, ip)
        _ip("netns", "add", host.ns)
        self._made.append(host.ns)
        veth = f"h-{name}"[:15]
        _ip("link", "add", veth, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
            "netns", host.ns)
        _ip("-n", self.hub, "link", "set", veth, "master", "br0", "up")
        _ip("-n", host.ns, "link", "set", "lo", "up")
        _ip("-n", host.ns, "addr", "add", ip + "/24", "dev", "eth0")
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        # Rules must come before the local table for local delivery.
        _ip("-n", host.ns, "rule", "add", "pref", "32765", "lookup", "local")
        _ip("-n", host.ns, "rule", "del", "pref", "0")
        host.veth = veth
        self.hosts[name] = host
        return host

    def _enter(self):
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.hub}")

    def host(self, name):
        return self.hosts[name]

    # -- partitions --

    def block(self, src, dst):
        """Packets from @src to @dst are dropped (one way)."""
        src, dst = self._h(src), self._h(dst)
        from_ip = HUB_ADDR if src is None else src.ip
        pref = _RULE_PREF_BASE + len(self.rules)
        _ip("-n", dst.ns, "rule", "add", "from", from_ip, "pref", str(pref), "blackhole")
        self.rules.append((dst, pref))

    def partition(self, *groups):
        """Hosts in different @groups cannot reach each other (both ways).
        Hosts named in no group keep every link."""
        groups = [[self._h(x) for x in g] for g in groups]
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self.block(x, y)
                        self.block(y, x)

    def isolate(self, host, client=False):
        """@host loses every other host (and the test client when @client)."""
        host = self._h(host)
        others = [h for h in self.hosts.values() if h is not host]
        self.partition([host], others)
        if client:
            self.block(None, host)

    def heal(self):
        for host, pref in reversed(self.rules):
            _ip("-n", host.ns, "rule", "del", "pref", str(pref), check=False)
        self.rules.clear()

    def _h(self, x):
        if x is None or isinstance(x, Host):
            return x
        if hasattr(x, "host"):
            return x.host
        return self.hosts[x]

    # -- link quality --

    def shape(self, host, rate="1mbit", latency_ms=400):
        """A token bucket on @host's link in both directions: traffic over
        @rate waits up to @latency_ms in the queue, then is dropped."""
        host = self._h(host)
        spec = ["tbf", "rate", rate, "burst", "16kbit", "latency", f"{latency_ms}ms"]
        _ip("netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", "eth0", "root", *spec)
        _ip("netns", "exec", self.hub, "tc", "qdisc", "replace", "dev", host.veth, "root", *spec)
        self.shaped.add(host)

    def netem(self, host, *spec):
        """tc netem on @host's link (e.g. "delay", "50ms", "loss", "5%");
        SkipTest when the kernel has no netem."""
        host = self._h(host)
        cp = _ip("netns", "exec", host.ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
                 "netem", *spec, check=False)
        if cp.returncode != 0:
            raise unittest.SkipTest(f"tc netem unavailable in this kernel "
                                    f"({cp.stderr.strip()}): packet loss and delay not tested")
        self.shaped.add(host)

    def unshape(self, host=None):
        for h in [self._h(host)] if host else list(self.shaped):
            _ip("netns", "exec", h.ns, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
            _ip("netns", "exec", self.hub, "tc", "qdisc", "del", "dev", h.veth, "root",
                check=False)
            self.shaped.discard(h)

    # -- teardown --

    def close(self):
        if self._home is not None:
            try:
                if _libc.setns(self._home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
            finally:
                os.close(self._home)
                self._home = None
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()


# --- processes ----------------------------------------------------------------


def pause(proc):
    """SIGSTOP: the process keeps its sockets and memory but does nothing
    (a long GC pause, a VM frozen)."""
    os.kill(proc.pid, signal.SIGSTOP)


def resume(proc):
    os.kill(proc.pid, signal.SIGCONT)


# --- disks --------------------------------------------------------------------


class Tmpfs:
    """A small tmpfs mounted at @path (created) for the harness's lifetime;
    fill() takes every free byte with a filler file, drain() gives them
    back. Unmounted (lazily) in the harness's cleanup."""

    def __init__(self, harness, path, size="16m"):
        if os.geteuid() != 0:
            raise unittest.SkipTest("mounting a tmpfs needs root: disk-full faults not tested")
        os.makedirs(path, exist_ok=True)
        cp = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "kptmpfs",
                             path], capture_output=True, text=True)
        if cp.returncode != 0:
            raise unittest.SkipTest(f"mount tmpfs: {cp.stderr.strip()}: disk-full faults "
                                    f"not tested")
        self.path = path
        self.filler = os.path.join(path, "zz-filler")
        harness.add_mount(self)

    def free_bytes(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave=0):
        """Write the filler until the disk is full (or @leave bytes are left)."""
        chunk = b"\0" * 65536
        with open(self.filler, "ab") as f:
            while True:
                room = self.free_bytes() - leave
                if room <= 0:
                    break
                try:
                    f.write(chunk[:min(len(chunk), room)])
                    f.flush()
                except OSError:
                    break
        return self.free_bytes()

    def drain(self):
        try:
            os.unlink(self.filler)
        except FileNotFoundError:
            pass

    def close(self):
        subprocess.run(["umount", "-l", self.path], capture_output=True)
