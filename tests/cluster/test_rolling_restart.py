"""A rolling restart of the local cluster under steady load, with no failed
call (docs/operations.md, "Rolling restart and upgrade").

deploy/local-cluster.sh runs three nodes behind HAProxy, which checks
/readyz. Client threads call the gateway through HAProxy on keep-alive
connections (plain and streamed completions) while `local-cluster.sh
restart kp-N` restarts kp-1, kp-2 and kp-3 one after another: SIGTERM, wait
for the exit, start again on the same data directory, wait until /readyz is
200 (which now means caught up with the leader) and HAProxy has it back.
Every answer that is not a 200 with its whole body, and every connection
error, counts as a failure; there must be none. Skipped when haproxy is not
installed.
"""

from http import client as http_client
import json
import os
import threading
import time
import unittest

import test_local_cluster as local
from harness import http, wait_until

CHAT = local.CHAT
alive = local.alive


class Load:
    """Threads calling the gateway through HAProxy on keep-alive connections
    until stopped, recording (time, outcome) per call: 200 or what failed."""

    def __init__(self, port, token, threads=4):
        self.port = port
        self.token = token
        self.results = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i % 4 == 3,), daemon=True)
                        for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def record(self, outcome):
        with self.lock:
            self.results.append((time.monotonic(), outcome))

    def call(self, conn, stream):
        body = json.dumps(dict(CHAT, stream=True) if stream else CHAT)
        conn.request("POST", "/v1/chat/completions", body=body, headers={
            "Authorization": "Bearer " + self.token, "Content-Type": "application/json",
            "X-Project": "demo-app"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            return f"{resp.status}: {data[:200]!r}"
        if stream and not data.rstrip().endswith(b"data: [DONE]"):
            return f"stream cut short: {data[-200:]!r}"
        if not stream and json.loads(data).get("object") != "chat.completion":
            return f"not a completion: {data[:200]!r}"
        return 200

    def run(self, stream):
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http_client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                outcome = self.call(conn, stream)
            except Exception as e:  # every way a call can fail counts
                outcome = f"{type(e).__name__}: {e}"
                conn.close()
                conn = None
            self.record(outcome)
        if conn is not None:
            conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def count_since(self, t0):
        with self.lock:
            return sum(1 for ts, _ in self.results if ts > t0)


class RollingRestartTest(local.LocalClusterTest):
    # The setup and helpers of test_local_cluster, not its test.
    test_up_failover_down = None

    def cluster(self, via):
        status, _, body = http("GET", via + "/admin/v1/cluster",
                               headers={"Authorization": "Bearer " + self.admin_token()})
        return json.loads(body) if status == 200 else None

    def node_control(self, n):
        return f"http://127.0.0.1:{self.base + 10 * n + 1}"

    def write_through_haproxy(self, name):
        """A write through HAProxy's control port, retried while the cluster
        answers 503 (a leader moving)."""
        def put():
            return http("PUT", self.control + f"/admin/v1/tenants/{name}",
                        body={"display_name": name},
                        headers={"Authorization": "Bearer " + self.admin_token()})[0] in (200, 201)
        wait_until(put, what=f"the write of tenant {name}")

    def test_rolling_restart_under_load_fails_no_call(self):
        cp = self.script("up")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        first = self.pids()
        load = Load(self.base, self.app_token())
        load.start()
        try:
            wait_until(lambda: load.count_since(0) >= 50, what="calls before the restarts")
            for n in (1, 2, 3):
                # A write committed just before the restart must be on the
                # node once it is ready again: ready means caught up.
                self.write_through_haproxy(f"before-kp-{n}")
                st = self.cluster(self.node_control(n))
                was_leader = st is not None and st["state"] == "leader"
                before = time.monotonic()
                cp = self.script("restart", f"kp-{n}", timeout=120)
                self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
                self.assertIn(f"kp-{n} back in HAProxy's rotation", cp.stdout)
                self.assertFalse(alive(first[f"kp-{n}"]))
                status, _, body = http(
                    "GET", self.node_control(n) + f"/admin/v1/tenants/before-kp-{n}",
                    headers={"Authorization": "Bearer " + self.admin_token()})
                self.assertEqual(status, 200, body)
                with open(os.path.join(self.state, f"kp-{n}.log")) as f:
                    log = f.read()
                self.assertIn(", restarting\"", log)
                if was_leader:
                    self.assertIn("drain: leadership moved to node", log)
                # Traffic flowed while the node was away and back.
                self.assertGreater(load.count_since(before), 20)
            wait_until(lambda: all(self.served_chats(n) > 0 for n in (1, 2, 3)),
                       what="every restarted node serving again")
            t_end = time.monotonic()
            wait_until(lambda: load.count_since(t_end) >= 30, what="calls after the restarts")
        finally:
            load.finish()
        failed = [s for _, s in load.results if s != 200]
        self.assertEqual(failed, [], f"{len(failed)} of {len(load.results)} calls failed")
        self.assertGreater(len(load.results), 200)
        again = self.pids()
        for n in (1, 2, 3):
            self.assertNotEqual(again[f"kp-{n}"], first[f"kp-{n}"])
        # The cluster is whole: three voters, one leader, all caught up.
        st = wait_until(lambda: (lambda s: s and s.get("leader") and all(
            m.get("reachable") and m["applied_index"] >= s["commit_index"] - 5
            for m in s["members"]) and s)(self.cluster(self.control)),
            what="a healthy cluster after the rolling restart")
        self.assertEqual(sorted(m["role"] for m in st["members"]), ["voter"] * 3)
        cp = self.script("status")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)


if __name__ == "__main__":
    unittest.main()
