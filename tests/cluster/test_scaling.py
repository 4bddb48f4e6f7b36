"""Scaling out and in (docs/operations.md, "Scale out: router-only nodes",
"Remove a node").

Three voters serve an app through keyplane-mock. A fourth node joins as a
router only (a Raft standby: a full replica that does not vote), turns ready
once it caught up, and serves the app's calls. `clusterctl members remove`
takes it out: it answers 503 "removed" on /readyz so a load balancer drops
it, stops cleanly, and the cluster keeps three healthy voters that take
writes. Removing the leader with clusterctl moves leadership off it first.
"""

import json
import unittest

from harness import http, wait_until
from test_raft_cluster import Cluster

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


class ScalingTest(unittest.TestCase):
    def setUp(self):
        self.c = Cluster(self).start(3)
        self.mock = self.c.h.start_mock()
        leader = self.c.wait_leader()
        for path, body in (
                ("/providers/mock", {"kind": "openai-compatible",
                                     "base_url": self.mock.url + "/v1", "allow_insecure": True}),
                ("/tenants/acme", {"display_name": "Acme"}),
                ("/keys/k1", {"provider": "mock", "secret": "sk-mock-scaling-0001"}),
                ("/pools/default", {"members": [{"key": "k1"}]})):
            status, raw = self.c.json(leader, "PUT", "/admin/v1" + path, body=body)
            self.assertIn(status, (200, 201), raw)
        status, raw = self.c.json(leader, "POST", "/admin/v1/tokens",
                                  body={"name": "app", "role": "app", "tenant": "acme"})
        self.assertEqual(status, 201, raw)
        self.app = raw["token"]

    def ctl(self, node, *args):
        return self.c.h.run(["clusterctl", "--server", node.control_url, *args],
                            env={"KEYPLANE_TOKEN": self.c.token})

    def chat(self, node):
        return http("POST", node.gateway_url + "/v1/chat/completions", body=CHAT,
                    headers={"Authorization": "Bearer " + self.app}, timeout=30)

    def readyz(self, node):
        status, _, raw = http("GET", node.control_url + "/readyz")
        return status, json.loads(raw)

    def healthy_voters(self, n):
        self.c.wait_members(n)
        status, body = self.c.put_tenant(self.c.wait_leader(), f"healthy-with-{n}")
        self.assertIn(status, (200, 201), body)

    def test_router_only_node_in_and_out(self):
        c = self.c
        r4 = c.add_node("r4", extra_config={"raft_role": "standby", "meter": "no"})
        # Ready means caught up: it knows the app's token at once.
        self.assertEqual(self.readyz(r4)[0], 200)
        for _ in range(5):
            status, hdrs, body = self.chat(r4)
            self.assertEqual(status, 200, body)
            self.assertEqual(hdrs["x-keyplane-key"], "k1")
        # The usage event is recorded as the call ends, which may be just
        # after its answer reached the client.
        wait_until(lambda: len(c.json(r4, "GET", "/admin/v1/usage/recent")[1]["events"]) == 5,
                   what="r4's 5 usage events")
        status, raw = c.json(r4, "GET", "/admin/v1/usage/recent")
        self.assertEqual((status, raw["node"], len(raw["events"])), (200, "r4", 5), raw)
        listed = self.ctl(r4, "members", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"r4\s+\d+\s+127\.0\.0\.1:\d+\s+standby\s+no")
        # A standby does not count towards the majority.
        st = c.state(c.wait_leader())
        self.assertEqual(sorted(m["role"] for m in st["members"]),
                         ["standby", "voter", "voter", "voter"])

        # Scale in: remove it, it says so, a load balancer stops sending.
        done = self.ctl(c.nodes[0], "members", "remove", "r4")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("member r4: removed", done.stdout)
        wait_until(lambda: self.readyz(r4) == (503, {
            "status": "removed",
            "reason": "this node is no longer in the cluster's Raft configuration: stop it"}),
            what="r4 says it was removed", alive=r4)
        self.assertEqual(r4.stop(), 0)
        self.healthy_voters(3)
        status, raw = c.json(c.wait_leader(), "GET", "/admin/v1/members")
        self.assertEqual(sorted(m["id"] for m in raw["items"]), ["n1", "n2", "n3"])

    def test_removing_the_leader_moves_leadership_first(self):
        c = self.c
        leader = c.wait_leader()
        other = next(nd for nd in c.nodes if nd is not leader)
        done = self.ctl(other, "members", "remove", leader.name)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"{leader.name} leads the cluster: handing leadership to another voter",
                      done.stderr)
        self.assertIn(f"member {leader.name}: removed", done.stdout)
        wait_until(lambda: self.readyz(leader)[1]["status"] == "removed",
                   what="the old leader says it was removed", alive=leader)
        self.assertEqual(leader.stop(), 0)
        c.nodes = [nd for nd in c.nodes if nd is not leader]
        self.healthy_voters(2)
        self.assertEqual(self.chat(c.nodes[0])[0], 200)


if __name__ == "__main__":
    unittest.main()
