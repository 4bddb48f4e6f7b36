"""Snapshot save and restore into a new cluster (docs/operations.md,
"Snapshots: save and restore").

Cluster A (three voters) gets a registry: a provider pointing at
keyplane-mock, keys with secrets, a pool, a tenant and project, an app token,
a policy with a budget, a price. `clusterctl snapshot save` takes the
snapshot through a follower (which forwards to the leader); cluster B starts
from it with `keyplaned --restore` on an empty data directory, and a second
node joins B. B's registry is A's, kind by kind, except the members and the
cluster id; A's app token calls B's gateway, which opens A's sealed key
secrets; B's audit chain verifies and records the restore. A node with
another master key refuses to restore, naming both key ids.
"""

import hashlib
import json
import os
import unittest

from harness import http, wait_until
from test_raft_cluster import MASTER_KEY, OTHER_KEY, Cluster

KINDS = ("providers", "keys", "pools", "tenants", "projects", "policies", "prices", "tokens",
         "alert-rules", "webhooks")
SECRET_1 = "sk-mock-snapshot-key-0001"
SECRET_2 = "sk-mock-snapshot-key-0002"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


class SnapshotTest(unittest.TestCase):
    def setUp(self):
        self.a = Cluster(self).start(3)
        self.h = self.a.h
        self.mock = self.h.start_mock()

    def admin(self, node, method, path, body=None, token=None):
        hdrs = {"Authorization": "Bearer " + (token or self.a.token)}
        status, _, raw = http(method, node.control_url + "/admin/v1" + path, body=body,
                              headers=hdrs)
        self.assertIn(status, (200, 201), (method, path, raw))
        return json.loads(raw) if raw else None

    def exports(self, node):
        """Every kind's items as the control API lists them."""
        out = {}
        for kind in KINDS:
            out[kind] = self.admin(node, "GET", f"/{kind}?limit=5000")["items"]
        return out

    def chat(self, node, token):
        return http("POST", node.gateway_url + "/v1/chat/completions", body=CHAT,
                    headers={"Authorization": "Bearer " + token, "X-Project": "web"},
                    timeout=30)

    def fill(self, leader):
        self.admin(leader, "PUT", "/providers/mock", {
            "kind": "openai-compatible", "base_url": self.mock.url + "/v1",
            "allow_insecure": True})
        self.admin(leader, "PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin(leader, "PUT", "/projects/web", {"tenant": "acme"})
        self.admin(leader, "PUT", "/keys/k1", {"provider": "mock", "secret": SECRET_1})
        self.admin(leader, "PUT", "/keys/k2", {"provider": "mock", "secret": SECRET_2,
                                               "tags": ["backup"]})
        self.admin(leader, "PUT", "/pools/default", {
            "members": [{"key": "k1", "priority": 0}, {"key": "k2", "priority": 1}]})
        self.admin(leader, "PUT", "/prices/gpt-4o-mini", {
            "input_per_mtok": 150_000_000, "cached_input_per_mtok": 75_000_000,
            "output_per_mtok": 600_000_000})
        self.admin(leader, "PUT", "/policies/acme-spend", {
            "scope_kind": "tenant", "scope_target": "acme", "rpm": 1000,
            "budgets": [{"name": "daily", "window": "daily",
                         "limit_nanousd": 50_000_000_000, "kind": "hard"}]})
        self.admin(leader, "PUT", "/alert-rules/spend",
                   {"kind": "budget_threshold", "params": {"percents": "50,80"}})
        answer = self.admin(leader, "POST", "/tokens",
                            {"name": "web app", "role": "app", "tenant": "acme"})
        return answer["token"]

    def test_save_and_restore_into_a_new_cluster(self):
        a = self.a
        leader = a.wait_leader()
        follower = next(nd for nd in a.nodes if nd is not leader)
        app = self.fill(leader)
        # A's gateway serves the app (and leases budget from the policy).
        status, _, body = self.chat(leader, app)
        self.assertEqual(status, 200, body)
        for nd in a.nodes:
            wait_until(lambda nd=nd: "acme-spend" in {p["id"] for p in self.exports(nd)["policies"]},
                       what=f"{nd.name} holds the registry")

        # Only an admin token may take a snapshot.
        op = self.admin(leader, "POST", "/tokens", {"name": "ops", "role": "operator"})["token"]
        denied = wait_until(
            lambda: (lambda r: r[0] != 401 and r)(
                http("GET", follower.control_url + "/admin/v1/snapshot",
                     headers={"Authorization": "Bearer " + op})),
            what="the follower to know the operator token")
        self.assertEqual(denied[0], 403, denied[2])
        self.assertIn(b"lacks permission change", denied[2])

        # Saved through a follower: the leader answers, its headers come along.
        path = self.h.path("a.snap")
        done = self.h.run(["clusterctl", "--server", follower.control_url, "snapshot", "save",
                           path], env={"KEYPLANE_TOKEN": a.token})
        self.assertEqual(done.returncode, 0, done.stderr)
        a_cluster = a.state(leader)["cluster_id"]
        self.assertIn(f"snapshot of cluster {a_cluster} at index", done.stderr)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, "rb") as f:
            data = f.read()
        self.assertIn(hashlib.sha256(data).hexdigest(), done.stderr)
        status, hdrs, raw = http("GET", follower.control_url + "/admin/v1/snapshot",
                                 headers={"Authorization": "Bearer " + a.token})
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["x-keyplane-forwarded-to"], "leader")
        self.assertEqual(hdrs["x-keyplane-snapshot-sha256"], hashlib.sha256(raw).hexdigest())
        self.assertEqual(hdrs["x-keyplane-cluster-id"], a_cluster)
        # What B must equal: A as it was when the snapshot was taken (the
        # second download only added an audit entry).
        want = self.exports(leader)
        self.admin(leader, "PUT", "/tenants/after-save", {"display_name": "not in the file"})

        # Another master key cannot restore it.
        bad = self.h.start_node("bad", config={"workers": 1}, args=["--restore", path],
                                env={"KEYPLANE_MASTER_KEY": OTHER_KEY}, wait_listen=False)
        self.assertEqual(bad.wait_exit(), 2)
        self.assertIn("seals its keys under master key", bad.stderr_text())

        # Cluster B: a new cluster from the file, and a node joining it.
        b1 = self.h.start_node("b1", config={"workers": 1}, args=["--restore", path],
                               env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
        b = Cluster(self)
        b.h, b.token, b.nodes = self.h, a.token, [b1]
        b.add_node("b2")
        b.wait_members(2)
        st = b.state(b1)
        self.assertNotEqual(st["cluster_id"], a_cluster)
        self.assertEqual(sorted(m["name"] for m in st["members"]), ["b1", "b2"])
        with open(os.path.join(b1.data_dir, "cluster.json")) as f:
            self.assertEqual(json.load(f)["cluster_id"], st["cluster_id"])
        for nd in b.nodes:
            got = wait_until(lambda nd=nd: self.exports(nd) == want and want,
                             what=f"{nd.name}'s registry == A's at the snapshot")
            self.assertEqual(self.exports(nd), got)
            # b2's member record is written by the leader after the join
            # (record_member), a moment after Raft has it.
            wait_until(lambda nd=nd: [m["id"] for m in self.admin(nd, "GET", "/members")
                                      ["items"]] == ["b1", "b2"],
                       what=f"{nd.name} has both member records")
            self.assertNotIn("after-save", {t["id"] for t in self.exports(nd)["tenants"]})
        # The same with clusterctl, as an operator would compare.
        for kind, name in (("policies", "acme-spend"), ("keys", "k2")):
            outs = [self.h.run(["clusterctl", "--server", nd.control_url, "get", kind, name,
                                "-o", "yaml"], env={"KEYPLANE_TOKEN": a.token}).stdout
                    for nd in (leader, b1, b.nodes[1])]
            self.assertEqual(outs[0], outs[1])
            self.assertEqual(outs[0], outs[2])

        # A's app token works on B's gateways: the keys' secrets, sealed under
        # the same master key, open there.
        for nd in b.nodes:
            status, hdrs, body = self.chat(nd, app)
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body)["object"], "chat.completion")
            self.assertEqual(hdrs["x-keyplane-key"], "k1")

        # B's audit chain verifies and says where it came from.
        for nd in b.nodes:
            verified = self.admin(nd, "GET", "/audit/verify")
            self.assertTrue(verified["ok"], verified)
        entries = self.admin(b1, "GET", "/audit?action=restore_cluster")["entries"]
        self.assertEqual(len(entries), 1, entries)
        self.assertIn(f"cluster {a_cluster}", entries[0]["result"])
        self.assertIn("n1, n2, n3", entries[0]["result"])
        saves = self.admin(b1, "GET", "/audit?action=snapshot_save")["entries"]
        self.assertTrue(saves and saves[0]["target"] == a_cluster, saves)
        # B takes writes.
        self.admin(b.nodes[1], "PUT", "/tenants/on-b", {"display_name": "B only"})

        # --restore is read once: on a restart B1 restarts as the member it is.
        b1.restart()
        self.assertIn("already holds this node's Raft state", b1.stderr_text())
        self.assertEqual(b.state(b1)["cluster_id"], st["cluster_id"])


if __name__ == "__main__":
    unittest.main()
