"""deploy/local-cluster.sh: three keyplaned nodes behind HAProxy on loopback.

The script is run as an operator would run it, with a temporary state
directory, a free base port (so a developer's own local cluster is never
touched) and the binaries of KEYPLANE_BIN_DIR (it builds nothing then). The
test calls the gateway through HAProxy, checks `status`, stops the
bootstrap node (the Raft leader) with SIGTERM while calls keep flowing
through HAProxy and counts that none failed, brings the node back with
`up`, then `down` and `down --purge`.

Skipped when haproxy is not installed (deploy/install-deps.sh installs it).
"""

import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import threading
import time
import unittest

from harness import (REPO_ROOT, Harness, bin_dir, bin_path, http, timeout_scale,
                     wait_until)

SCRIPT = os.path.join(REPO_ROOT, "deploy", "local-cluster.sh")
NAMES = ("haproxy", "kp-1", "kp-2", "kp-3", "mock")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def ports_of(base):
    """Every port the script binds for @base (see local-cluster.sh)."""
    ports = [base, base + 1, base + 2, base + 100]
    for n in (1, 2, 3):
        ports += [base + 10 * n, base + 10 * n + 1, base + 10 * n + 2]
    return ports


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base():
    """A base port whose whole range is free now (from a random start, so
    parallel runs rarely pick the same)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 10)
        if all(port_free(p) for p in ports_of(base)):
            return base
    raise AssertionError("no free range of ports for the local cluster")


def alive(pid):
    """True while @pid runs (a zombie waiting for init to reap it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalClusterTest(unittest.TestCase):
    def setUp(self):
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if haproxy is None:
            self.skipTest("haproxy is not installed (deploy/install-deps.sh or "
                          "apt-get install haproxy): local-cluster.sh runs the nodes behind it")
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed (deploy/install-deps.sh)")
        for b in ("keyplaned", "keyplane-mock", "clusterctl"):
            bin_path(b)  # a clear error when the build is missing
        self.h = Harness(self)
        self.state = self.h.path("cluster")
        self.base = free_base()
        self.env = {
            "KEYPLANE_LOCAL_DIR": self.state,
            "KEYPLANE_LOCAL_BASE_PORT": str(self.base),
            "KEYPLANE_BIN_DIR": bin_dir(),
            "KEYPLANE_LOCAL_TIMEOUT": str(int(30 * timeout_scale())),
            "HAPROXY": haproxy,
        }
        self.gateway = f"http://127.0.0.1:{self.base}"
        self.control = f"http://127.0.0.1:{self.base + 1}"
        self.stats = f"http://127.0.0.1:{self.base + 2}/;csv"
        # Runs before the harness's cleanup (which removes the directory).
        self.addCleanup(self._stop_cluster)

    # -- helpers --

    def script(self, *args, timeout=90):
        cp = self.h.run([SCRIPT, *args], env=self.env, timeout=timeout,
                        name="local-cluster-" + args[0])
        return cp

    def pids(self):
        out = {}
        for name in NAMES:
            try:
                with open(os.path.join(self.state, name + ".pid")) as f:
                    out[name] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        return out

    def app_token(self):
        with open(os.path.join(self.state, "app.token")) as f:
            return f.read().strip()

    def admin_token(self):
        with open(os.path.join(self.state, "kp-1", "admin.token")) as f:
            return f.read().strip()

    def chat(self, stream=False):
        body = dict(CHAT, stream=True) if stream else CHAT
        return http("POST", self.gateway + "/v1/chat/completions", body=body,
                    headers={"Authorization": "Bearer " + self.app_token(),
                             "X-Project": "demo-app"}, timeout=30)

    def server_states(self):
        """{(backend, server): status} from HAProxy's stats CSV."""
        status, _, body = http("GET", self.stats, timeout=5)
        if status != 200:
            return {}
        text = body.decode()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {(r["pxname"], r["svname"]): r["status"] for r in rows
                if r["svname"].startswith("kp-")}

    def served_chats(self, n):
        """Chat completions answered 200 by kp-N, from its own /metrics."""
        port = self.base + 10 * n + 1
        status, _, body = http("GET", f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(status, 200)
        for line in body.decode().splitlines():
            if line.startswith('keyplane_http_requests_total{listener="gateway",'
                               'route="/v1/chat/completions",code="200"}'):
                return int(line.rsplit(" ", 1)[1])
        return 0

    def _stop_cluster(self):
        """Whatever happened: stop what the script started, keep the logs for
        the harness (printed when the test failed, scanned for sanitizer
        reports)."""
        if not os.path.isdir(self.state):
            return
        known = self.pids()
        try:
            self.h.run([SCRIPT, "down"], env=self.env, timeout=120, name="local-cluster-cleanup")
        finally:
            for name, pid in known.items():
                if alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self._keep_logs()

    def _keep_logs(self):
        if not os.path.isdir(self.state):
            return
        for name in sorted(os.listdir(self.state)):
            if name.endswith((".log", ".out")):
                shutil.copyfile(os.path.join(self.state, name),
                                os.path.join(self.h.log_dir, "local-" + name))

    # -- the test --

    def test_up_failover_down(self):
        # up: everything starts, and the output says where.
        cp = self.script("up")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertIn(f"http://127.0.0.1:{self.base}/v1", cp.stdout)
        self.assertIn(self.app_token(), cp.stdout)
        self.assertIn(os.path.join(self.state, "kp-1", "admin.token"), cp.stdout)
        self.assertNotIn("building", cp.stdout)  # KEYPLANE_BIN_DIR: nothing built
        first = self.pids()
        self.assertEqual(sorted(first), sorted(NAMES))
        self.assertTrue(all(alive(p) for p in first.values()), first)
        mode = os.stat(os.path.join(self.state, "master.key")).st_mode & 0o777
        self.assertEqual(mode, 0o600)

        # up again: nothing new is started.
        cp = self.script("up")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertEqual(self.pids(), first)
        self.assertEqual(cp.stdout.count("already running"), len(NAMES), cp.stdout)

        # status: every process, every node ready, the cluster through HAProxy.
        cp = self.script("status")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        for name in NAMES:
            self.assertRegex(cp.stdout, rf"{name}\s+running \(pid {first[name]}\)")
        self.assertEqual(cp.stdout.count('{"status":"ready"} 200'), 3, cp.stdout)
        for n in (1, 2, 3):
            self.assertRegex(cp.stdout, rf"kp-{n}\s+127\.0\.0\.1:{self.base + 10 * n + 2}\s+voter")

        # Two meters (kp-1 bootstrapped, kp-2 with meter: yes), through the
        # control port of HAProxy.
        status, _, body = http("GET", self.control + "/admin/v1/members",
                               headers={"Authorization": "Bearer " + self.admin_token()})
        self.assertEqual(status, 200, body)
        meters = sorted(m["id"] for m in json.loads(body)["items"] if m.get("meter"))
        self.assertEqual(meters, ["kp-1", "kp-2"])

        # Calls through HAProxy succeed and are spread over the nodes.
        before = {n: self.served_chats(n) for n in (1, 2, 3)}
        for _ in range(12):
            status, _, body = self.chat()
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["object"], "chat.completion")
        status, headers, body = self.chat(stream=True)
        self.assertEqual(status, 200, body)
        self.assertIn("text/event-stream", headers.get("content-type", ""))
        self.assertTrue(body.rstrip().endswith(b"data: [DONE]"), body[-200:])
        served = {n: self.served_chats(n) - before[n] for n in (1, 2, 3)}
        self.assertEqual(sum(served.values()), 13, served)
        self.assertGreaterEqual(sum(1 for v in served.values() if v > 0), 2, served)

        # SIGTERM to kp-1 (the bootstrap node, Raft leader) while calls keep
        # going through HAProxy: it drains (readyz 503, gateway open for
        # drain_delay_ms), HAProxy takes it out, and no call fails.
        results = []  # (monotonic time, status or error text)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    status = self.chat()[0]
                except OSError as e:
                    status = f"{type(e).__name__}: {e}"
                results.append((time.monotonic(), status))

        t = threading.Thread(target=load, daemon=True)
        t.start()
        try:
            wait_until(lambda: len(results) >= 20, what="calls before the stop")
            os.kill(first["kp-1"], signal.SIGTERM)
            wait_until(lambda: self.server_states().get(("keyplane_gateways", "kp-1"), "")
                       .startswith("DOWN"), what="HAProxy to mark kp-1 down")
            marked_down = time.monotonic()
            wait_until(lambda: not alive(first["kp-1"]), what="kp-1 to exit")
            gone = time.monotonic()
            wait_until(lambda: sum(1 for ts, _ in results if ts > gone) >= 30,
                       what="calls after kp-1 exited")
        finally:
            stop.set()
            t.join(timeout=60)
        failed = [(round(ts - marked_down, 3), s) for ts, s in results if s != 200]
        self.assertEqual(failed, [], f"{len(failed)} of {len(results)} calls failed "
                                     "(seconds relative to HAProxy marking kp-1 down)")
        self.assertGreater(sum(1 for ts, _ in results if ts < marked_down), 20)

        # status says what is missing; the cluster still answers through HAProxy.
        cp = self.script("status")
        self.assertEqual(cp.returncode, 3, cp.stdout + cp.stderr)
        self.assertRegex(cp.stdout, r"kp-1\s+not running")
        self.assertRegex(cp.stdout, rf"kp-1\s+127\.0\.0\.1:{self.base + 11}\s+unreachable")
        self.assertIn("CLUSTER", cp.stdout)

        # Writes go on once kp-2 and kp-3 have a leader.
        wait_until(lambda: http("PUT", self.control + "/admin/v1/tenants/after-failover",
                                body={"display_name": "written without kp-1"},
                                headers={"Authorization": "Bearer " + self.admin_token()})[0]
                   in (200, 201), what="a write through HAProxy without kp-1")

        # up starts kp-1 again, and only kp-1.
        cp = self.script("up")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        again = self.pids()
        self.assertNotEqual(again["kp-1"], first["kp-1"])
        self.assertEqual({k: v for k, v in again.items() if k != "kp-1"},
                         {k: v for k, v in first.items() if k != "kp-1"})
        wait_until(lambda: self.server_states().get(("keyplane_gateways", "kp-1")) == "UP",
                   what="HAProxy to take kp-1 back")
        cp = self.script("status")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        for _ in range(6):
            status, _, body = self.chat()
            self.assertEqual(status, 200, body)

        # down stops everything and keeps the data; down --purge deletes it.
        cp = self.script("down")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertFalse([n for n, p in again.items() if alive(p)])
        self.assertTrue(os.path.isfile(os.path.join(self.state, "kp-1", "admin.token")))
        for p in ports_of(self.base):
            with self.assertRaises(ConnectionRefusedError, msg=f"127.0.0.1:{p} still listening"):
                socket.create_connection(("127.0.0.1", p), timeout=5).close()
        self._keep_logs()
        cp = self.script("down", "--purge")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertFalse(os.path.exists(self.state))


if __name__ == "__main__":
    unittest.main()
