"""Three real keyplaned processes forming a Raft cluster on loopback.

Covers the registry's replication end to end: bootstrap and join, writes on
the leader seen by followers, writes sent to a follower (forwarded), kill -9
of the leader with no acknowledged write lost, a restarted node catching up
through a snapshot, adding and removing a member, nodes with the wrong
master key refusing to run, and the audit chain verifying on every node.
"""

import json
import os
import signal
import unittest

from harness import Harness, http, wait_until

MASTER_KEY = "5" * 64
OTHER_KEY = "6" * 64

# Fast elections so kills are noticed quickly; tiny snapshots so a node that
# misses a few dozen entries must be sent one.
CONFIG = {
    "election_timeout_ms": "400ms",
    "heartbeat_timeout_ms": "50ms",
    "snapshot_threshold": 32,
    "snapshot_trailing": 8,
    "workers": 1,
}


class Cluster:
    def __init__(self, test):
        self.test = test
        self.h = Harness(test)
        self.nodes = []
        self.token = None
        self.extra_config = {}

    def start(self, n=3, extra_config=None):
        self.extra_config = extra_config or {}
        first = self.h.start_node("n1", config=dict(CONFIG, **self.extra_config),
                                  env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
        self.token = first.admin_token
        self.test.assertTrue(self.token and self.token.startswith("kp_"), "admin.token written")
        self.nodes.append(first)
        for i in range(2, n + 1):
            self.add_node(f"n{i}", self.extra_config)
        self.wait_members(n)
        return self

    def add_node(self, name, extra_config=None, key=MASTER_KEY, wait_ready=True):
        cfg = dict(CONFIG)
        cfg.update(extra_config or {})
        joins = ",".join(nd.listen["control"] for nd in self.nodes if nd.running())
        node = self.h.start_node(name, config=cfg, args=["--join", joins],
                                 env={"KEYPLANE_MASTER_KEY": key}, wait_ready=wait_ready)
        if wait_ready:
            self.nodes.append(node)
        return node

    def req(self, node, method, path, body=None, headers=None):
        hdrs = {"Authorization": "Bearer " + self.token}
        hdrs.update(headers or {})
        return node.control(method, path, body=body, headers=hdrs)

    def json(self, node, method, path, body=None, headers=None):
        import json as _json
        status, _, raw = self.req(node, method, path, body=body, headers=headers)
        try:
            return status, _json.loads(raw or b"null")
        except ValueError:
            return status, raw

    def state(self, node):
        status, body = self.json(node, "GET", "/admin/v1/cluster")
        return body if status == 200 else None

    def leader(self, among=None):
        """The node that says it is leader and that the others follow."""
        live = [nd for nd in (among or self.nodes) if nd.running()]
        for nd in live:
            st = self.state(nd)
            if st and st.get("state") == "leader":
                return nd
        return None

    def wait_leader(self, among=None, timeout=30):
        return wait_until(lambda: self.leader(among), timeout=timeout, what="a leader")

    def wait_members(self, n):
        def ok():
            ld = self.leader()
            if ld is None:
                return False
            st = self.state(ld)
            voters = [m for m in st["members"] if m["role"] == "voter"]
            return len(voters) == n and all(m.get("reachable") for m in st["members"])
        wait_until(ok, timeout=60, what=f"{n} reachable voters")

    def tenants(self, node):
        status, body = self.json(node, "GET", "/admin/v1/tenants")
        if status != 200:
            return None
        return {t["id"] for t in body["items"]}

    def put_tenant(self, node, name):
        status, body = self.json(node, "PUT", f"/admin/v1/tenants/{name}",
                                 body={"display_name": f"tenant {name}"})
        return status, body


class RaftClusterTest(unittest.TestCase):
    def test_replication_failover_catch_up_membership(self):
        c = Cluster(self).start(3)
        leader = c.wait_leader()
        followers = [nd for nd in c.nodes if nd is not leader]

        # Writes on the leader show up on every follower.
        acked = set()
        for i in range(5):
            status, body = c.put_tenant(leader, f"lead-{i}")
            self.assertIn(status, (200, 201), body)
            acked.add(f"lead-{i}")
        for nd in followers:
            wait_until(lambda nd=nd: acked <= (c.tenants(nd) or set()), timeout=30,
                       what=f"{nd.name} to see the leader's writes")

        # A write sent to a follower is forwarded and succeeds.
        status, body = c.put_tenant(followers[0], "via-follower")
        self.assertIn(status, (200, 201), body)
        self.assertEqual(body["id"], "via-follower")
        acked.add("via-follower")
        # A consistent read on a follower sees it at once.
        status, body = c.json(followers[1], "GET", "/admin/v1/tenants/via-follower?consistent=true")
        self.assertEqual(status, 200, body)

        # kill -9 of the leader: a new leader takes writes, nothing acknowledged is lost.
        leader.kill()
        survivors = [nd for nd in c.nodes if nd.running()]
        new_leader = c.wait_leader(survivors)
        self.assertIsNot(new_leader, leader)
        def write_after_failover():
            status, _ = c.put_tenant(survivors[0], "after-failover")
            return status in (200, 201)
        wait_until(write_after_failover, timeout=30, what="a write accepted after the kill")
        acked.add("after-failover")
        # While the old leader is down, enough entries for several snapshots.
        for i in range(80):
            status, body = c.put_tenant(new_leader, f"bulk-{i}")
            self.assertIn(status, (200, 201), body)
            acked.add(f"bulk-{i}")
        for nd in survivors:
            wait_until(lambda nd=nd: acked <= (c.tenants(nd) or set()), timeout=30,
                       what=f"{nd.name} to hold every acknowledged write")

        # The killed node restarts and catches up (through a snapshot: its log
        # ends long before what the leader still keeps).
        leader.restart(wait_ready=True)
        wait_until(lambda: acked <= (c.tenants(leader) or set()), timeout=60,
                   what="the restarted node to catch up")
        self.assertIn("restored snapshot", leader.stderr_text(),
                      "the restarted node should have been sent a snapshot")

        # Add a fourth node as a standby, then remove it.
        n4 = c.add_node("n4", extra_config={"raft_role": "standby"})
        ld = c.wait_leader()
        wait_until(lambda: any(m.get("name") == "n4" and m["role"] == "standby"
                               for m in c.state(ld)["members"]), timeout=30,
                   what="n4 listed as a standby")
        wait_until(lambda: acked <= (c.tenants(n4) or set()), timeout=30,
                   what="the standby to replicate the registry")
        status, body = c.json(ld, "DELETE", "/admin/v1/members/n4")
        self.assertEqual(status, 200, body)
        wait_until(lambda: all(m.get("name") != "n4" for m in c.state(c.wait_leader())["members"]),
                   timeout=30, what="n4 gone from the configuration")
        status, body = c.json(c.wait_leader(), "GET", "/admin/v1/members")
        self.assertNotIn("n4", {m["id"] for m in body["items"]})

        # The audit chain verifies on every node, and records the writes.
        for nd in [nd for nd in c.nodes if nd.running()]:
            wait_until(lambda nd=nd: c.json(nd, "GET", "/admin/v1/audit/verify")[1].get("ok"),
                       timeout=30, what=f"{nd.name} audit chain verifies")
        status, body = c.json(c.wait_leader(), "GET", "/admin/v1/audit?target=after-failover")
        self.assertEqual(status, 200, body)
        self.assertTrue(any(e["action"] == "put_tenant" for e in body["entries"]), body)

    def test_master_key_rotation_reseals_every_secret(self):
        key_b, key_c = "7" * 64, "8" * 64
        c = Cluster(self).start(1)
        n1 = c.nodes[0]
        status, body = c.json(n1, "PUT", "/admin/v1/providers/p1",
                              body={"kind": "openai", "base_url": "https://api.openai.com/v1"})
        self.assertEqual(status, 201, body)
        status, body = c.json(n1, "PUT", "/admin/v1/keys/k1",
                              body={"provider": "p1", "secret": "sk-rotation-test-000000001"})
        self.assertEqual(status, 201, body)

        def restart_with(current, previous=None):
            n1.stop()
            n1.env["KEYPLANE_MASTER_KEY"] = current
            n1.env.pop("KEYPLANE_PREVIOUS_MASTER_KEY", None)
            if previous:
                n1.env["KEYPLANE_PREVIOUS_MASTER_KEY"] = previous
            n1.start()

        # Step 1: the new key as master key, the old one as previous.
        restart_with(key_b, MASTER_KEY)
        self.assertIn("master key rotation in progress", n1.stderr_text())
        # A secret added now is sealed under the new key already.
        status, body = c.json(n1, "PUT", "/admin/v1/keys/k2",
                              body={"provider": "p1", "secret": "sk-rotation-test-000000002"})
        self.assertEqual(status, 201, body)
        # Step 2: reseal everything under the new key (with clusterctl).
        done = c.h.run(["clusterctl", "--server", n1.control_url, "secrets", "rewrap"],
                       env={"KEYPLANE_TOKEN": c.token})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("resealed 2 secrets", done.stdout)
        status, again = c.json(n1, "POST", "/admin/v1/secrets/rewrap")
        self.assertEqual((status, again["secrets"]), (200, 0), again)
        # Step 3: the old key can go. The registry now needs key B: a further
        # rotation from B to C can only unwrap the blobs if they are under B.
        restart_with(key_b)
        restart_with(key_c, key_b)
        status, body = c.json(n1, "POST", "/admin/v1/secrets/rewrap")
        self.assertEqual((status, body.get("secrets")), (200, 2), body)
        # And a node with only the retired key A is refused.
        n1.stop()
        n1.env["KEYPLANE_MASTER_KEY"] = MASTER_KEY
        n1.env.pop("KEYPLANE_PREVIOUS_MASTER_KEY", None)
        n1.start(wait_ready=False)
        n1.wait_exit(timeout=30)
        self.assertIn("wrong master key", n1.stderr_text())

    def test_wrong_master_key_refuses_to_run(self):
        c = Cluster(self).start(1)
        # Joining with another key: the cluster refuses the node, which exits.
        bad = c.add_node("bad", key=OTHER_KEY, wait_ready=False)
        bad.wait_exit(timeout=30)
        self.assertNotEqual(bad.poll(), 0)
        self.assertIn("master key", bad.stderr_text())
        # The node it asked logs the refusal, naming the call and the caller.
        wait_until(lambda: "refused POST /internal/v1/join from 127.0.0.1:" in
                   c.nodes[0].stderr_text(), what="the leader logs the refused join",
                   alive=c.nodes[0])
        # Restarting a member with another key: it stops instead of serving.
        n1 = c.nodes[0]
        n1.stop()
        n1.env["KEYPLANE_MASTER_KEY"] = OTHER_KEY
        n1.start(wait_ready=False)
        n1.wait_exit(timeout=30)
        self.assertNotEqual(n1.poll(), 0)
        self.assertIn("wrong master key", n1.stderr_text())

    def test_join_while_the_leader_loses_its_quorum(self):
        # The two followers die; a node asks the leader to add it at once.
        # The change fails as raft steps down, and the failed change's
        # member record must not be proposed from inside that callback
        # (raft 0.15 crashed in raft_apply: raftstore/store.c "failing").
        c = Cluster(self).start(3)
        n1, n2, n3 = c.nodes
        n2.send_signal(signal.SIGKILL)
        n3.send_signal(signal.SIGKILL)
        n2.wait_exit()
        n3.wait_exit()
        c.add_node("late", wait_ready=False)
        wait_until(lambda: (c.state(n1) or {}).get("state") not in (None, "leader"), timeout=20,
                   what="n1 steps down", alive=n1)
        self.assertTrue(n1.running())

    def test_a_node_cut_off_from_the_leader_turns_unready(self):
        # 3 voters with a 1 s staleness bound; stop two: the third knows no
        # leader any more, and /readyz says so within the bound (plus an
        # election timeout); bring one back and it is ready again.
        global CONFIG
        saved = CONFIG
        CONFIG = dict(CONFIG, ready_max_staleness_ms="1s")
        try:
            c = Cluster(self).start(3)
        finally:
            CONFIG = saved
        n1, n2, n3 = c.nodes

        def readyz(node):
            status, _, raw = http("GET", node.control_url + "/readyz")
            return status, json.loads(raw)

        self.assertEqual(readyz(n3)[0], 200)
        n1.stop()
        n2.stop()
        wait_until(lambda: readyz(n3) == (503, {"status": "stale", "reason": (
            "no Raft leader known: the registry view may be stale")}),
            what="n3 unready once no leader is known", alive=n3)
        n2.start()
        wait_until(lambda: readyz(n3)[0] == 200, what="n3 ready again", alive=n3)


if __name__ == "__main__":
    unittest.main()
