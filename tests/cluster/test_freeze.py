"""The stop-loss button on a three-node cluster (docs/budgets.md "Freeze").

An operator freezes a tenant with clusterctl through one node; once every
node's published view holds the freeze (GET /admin/v1/freezes reads that
view, the one the node's router workers refuse calls by), the next call of
that tenant on every node's gateway is refused 403 frozen with the reason,
and another tenant's calls still go through. Unfreezing (through another
node) restores them everywhere. Both actions are in the audit chain with
the operator's token and the reason; a token without the operate
permission cannot freeze. Waits are conditions, never sleeps.
"""

import json
import unittest

from harness import http, wait_until
from test_raft_cluster import Cluster

ADMIN = "/admin/v1"
KEY_A = "sk-mock-freeze-key-a-0001"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
REASON = "runaway agent, see INC-42"


class FreezeTest(unittest.TestCase):
    def setUp(self):
        self.c = Cluster(self).start(3)
        self.h = self.c.h
        self.mock = self.h.start_mock()
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": KEY_A})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin("PUT", "/tenants/globex", {"display_name": "Globex"})
        oncall = self.admin("POST", "/tokens", {"role": "operator", "name": "oncall"})
        self.operator, self.operator_id = oncall["token"], oncall["item"]["id"]
        self.finance = self.admin("POST", "/tokens", {"role": "finance", "name": "fin"})["token"]
        # An app token for every tenant (X-Tenant says whose call it is),
        # made last: a node that has it has every write before it.
        self.app = self.admin("POST", "/tokens", {"role": "app", "name": "app"})["token"]
        for node in self.c.nodes:
            wait_until(lambda node=node: self.call(node, "globex")[0] == 200, timeout=30,
                       what=f"{node.name} to serve calls")

    def admin(self, method, path, body=None, node=None):
        status, raw = self.c.json(node or self.c.wait_leader(), method, ADMIN + path, body=body)
        self.assertIn(status, (200, 201), raw)
        return raw

    def call(self, node, tenant, rid=None):
        hdrs = {"Authorization": "Bearer " + self.app, "Content-Type": "application/json",
                "X-Tenant": tenant}
        if rid:
            hdrs["X-Request-Id"] = rid
        return http("POST", node.gateway_url + "/v1/chat/completions", body=CHAT, headers=hdrs,
                    timeout=30)

    def clusterctl(self, node, *args, token=None):
        env = {"KEYPLANE_SERVER": node.control_url,
               "KEYPLANE_TOKEN": token or self.operator}
        return self.h.run(["clusterctl", *args], env=env)

    def published_freezes(self, node):
        """The freezes in the view this node's routers read."""
        status, _, raw = node.control("GET", ADMIN + "/freezes",
                                      headers={"Authorization": "Bearer " + self.c.token})
        if status != 200:
            return None
        return {f["id"]: f for f in json.loads(raw)["items"]}

    def test_freeze_refuses_on_every_router_and_unfreeze_restores(self):
        c = self.c
        leader = c.wait_leader()
        follower, other = [n for n in c.nodes if n is not leader]

        # Frozen through a follower (the write is forwarded to the leader).
        cp = self.clusterctl(follower, "freeze", "tenant", "acme", "--reason", REASON)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(f'frozen tenant acme: "{REASON}"', cp.stdout)
        for node in c.nodes:
            wait_until(lambda node=node: "tenant:acme" in (self.published_freezes(node) or {}),
                       timeout=30, what=f"{node.name}'s view to hold the freeze")
        frozen = self.published_freezes(leader)["tenant:acme"]
        self.assertEqual((frozen["scope"], frozen["target"], frozen["reason"]),
                         ("tenant", "acme", REASON))
        self.assertEqual(frozen["frozen_by"], self.operator_id)

        upstream_before = json.loads(http("GET", self.mock.url + "/mock/stats")[2])["requests"]
        for node in c.nodes:
            rid = f"frozen-{node.name}"
            status, hdrs, raw = self.call(node, "acme", rid=rid)
            self.assertEqual(status, 403, raw)
            self.assertEqual(hdrs["x-keyplane-error"], "frozen")
            err = json.loads(raw)["error"]
            self.assertEqual((err["type"], err["code"]), ("permission_error", "frozen"))
            self.assertTrue(err["message"].startswith(
                f'tenant acme is frozen by an operator: "{REASON}" (since 20'), err["message"])
            self.assertTrue(err["message"].endswith("Z)"), err["message"])
            # The usage event of the refused call says why.
            ev = wait_until(lambda node=node, rid=rid: next(
                (e for e in c.json(node, "GET", ADMIN + "/usage/recent?limit=100")[1]["events"]
                 if e["request_id"] == rid), None), what=f"{node.name}'s usage event")
            self.assertEqual((ev["status"], ev["error_class"], ev["tenant"]),
                             (403, "frozen", "acme"))
            # Another tenant's calls still go through.
            status, _, raw = self.call(node, "globex")
            self.assertEqual(status, 200, raw)
        upstream_after = json.loads(http("GET", self.mock.url + "/mock/stats")[2])["requests"]
        self.assertEqual(upstream_after - upstream_before, 3, "only globex's calls went upstream")

        cp = self.clusterctl(other, "freezes")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("acme", cp.stdout)
        self.assertIn(REASON, cp.stdout)

        # Unfrozen through the other follower: every router serves acme again.
        cp = self.clusterctl(other, "unfreeze", "tenant", "acme")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("unfrozen tenant acme", cp.stdout)
        for node in c.nodes:
            wait_until(lambda node=node: self.published_freezes(node) == {}, timeout=30,
                       what=f"{node.name}'s view to drop the freeze")
            status, _, raw = self.call(node, "acme")
            self.assertEqual(status, 200, raw)
        cp = self.clusterctl(other, "unfreeze", "tenant", "acme")
        self.assertEqual(cp.returncode, 1)
        self.assertIn("no freeze 'tenant:acme'", cp.stderr)

        # Both actions are audited with the operator's token and the reason.
        status, audit = c.json(leader, "GET", ADMIN + "/audit?target=tenant:acme")
        self.assertEqual(status, 200, audit)
        done = [e for e in audit["entries"] if e["result"].startswith("ok")]
        self.assertEqual([e["action"] for e in done], ["put_freeze", "delete_freeze"], audit)
        for e in done:
            self.assertEqual((e["actor"], e["role"]), (self.operator_id, "operator"))
            self.assertIn(REASON, e["result"])
        cp = self.clusterctl(leader, "audit", "list", "--target", "tenant:acme",
                             token=c.token)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("put_freeze", cp.stdout)
        self.assertIn("delete_freeze", cp.stdout)

    def test_refusals(self):
        c = self.c
        node = c.nodes[1]
        # A token without the operate permission cannot freeze (nor
        # unfreeze); the denial is audited like any other.
        fin = {"Authorization": "Bearer " + self.finance}
        status, _, raw = node.control("PUT", ADMIN + "/freezes/tenant/acme",
                                      body={"reason": "x"}, headers=fin)
        self.assertEqual(status, 403, raw)
        self.assertIn("lacks permission operate", json.loads(raw)["error"]["message"])
        status, _, raw = node.control("DELETE", ADMIN + "/freezes/tenant/acme", headers=fin)
        self.assertEqual(status, 403, raw)
        cp = self.clusterctl(node, "freeze", "tenant", "acme", "--reason", "x",
                             token=self.finance)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("lacks permission operate", cp.stderr)
        cp = self.clusterctl(node, "freeze", "tenant", "acme")
        self.assertEqual(cp.returncode, 2)
        self.assertIn("--reason is required", cp.stderr)

        op = {"Authorization": "Bearer " + self.operator}

        def put(path, body):
            status, _, raw = node.control("PUT", ADMIN + path, body=body, headers=op)
            return status, json.loads(raw)

        status, body = put("/freezes/tenant/acme", {})
        self.assertEqual((status, body["error"].get("field")), (400, "reason"), body)
        status, body = put("/freezes/tenant/acme", {"reason": "x", "scope": "pool"})
        self.assertEqual((status, body["error"].get("field")), (400, "scope"), body)
        status, body = put("/freezes/everything/acme", {"reason": "x"})
        self.assertEqual((status, body["error"].get("field")), (400, "scope"), body)
        status, body = put("/freezes/pool/nope", {"reason": "typo"})
        self.assertEqual(status, 400, body)
        self.assertEqual(body["error"]["message"], "target: no pool 'nope'")
        # Features are free names; a frozen pool cannot be deleted.
        self.assertEqual(put("/freezes/feature/summarize", {"reason": "cost spike"})[0], 201)
        status, body = put("/freezes/pool/default", {"reason": "provider outage"})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["id"], "pool:default")
        status, body = c.json(node, "DELETE", ADMIN + "/pools/default")
        self.assertEqual(status, 409, body)
        self.assertIn("freeze 'pool:default'", body["error"]["message"])
        # This node's view has the freeze once it applied the write.
        wait_until(lambda: c.json(node, "GET", ADMIN + "/freezes/pool/default")[0] == 200,
                   what="the freeze in this node's view")
        status, body = c.json(node, "GET", ADMIN + "/freezes/pool/default")
        self.assertEqual((status, body["reason"]), (200, "provider outage"), body)
        # A consistent list is the leader's, with everything committed.
        status, body = c.json(c.nodes[2], "GET", ADMIN + "/freezes?consistent=true")
        self.assertEqual(status, 200, body)
        self.assertEqual([f["id"] for f in body["items"]], ["feature:summarize", "pool:default"])
        status, body = c.json(node, "DELETE", ADMIN + "/freezes/tenant/acme")
        self.assertEqual(status, 404, body)


class FreezeScopesTest(unittest.TestCase):
    """Every scope on one node (test_router's gateway: pool default of
    key-a then key-b, tenant acme with project search, an app token of
    acme): a frozen key is skipped, the others refuse the call."""

    def test_each_scope(self):
        from test_router import KEY_A, KEY_B, Gateway, fp
        g = Gateway(self)
        token_id = next(t["id"] for t in g.admin("GET", "/tokens")["items"]
                        if t.get("name") == "app")

        def freeze(scope, name, reason):
            g.admin("PUT", f"/freezes/{scope}/{name}", {"reason": reason})

        def unfreeze(scope, name):
            g.admin("DELETE", f"/freezes/{scope}/{name}")

        # A frozen key is skipped like a disabled one: key-b serves.
        freeze("key", "key-a", "leaked in a log")
        status, h, raw = g.call("/v1/chat/completions", CHAT)
        self.assertEqual((status, h.get("x-keyplane-key")), (200, "key-b"), raw)
        freeze("key", "key-b", "leaked too")
        status, h, raw = g.call("/v1/chat/completions", CHAT)
        self.assertEqual(status, 503, raw)
        self.assertIn("is frozen by an operator", json.loads(raw)["error"]["message"])
        unfreeze("key", "key-a")
        unfreeze("key", "key-b")
        self.assertEqual(g.stats()["keys"], {fp(KEY_B): 1})

        cases = [("tenant", "acme", {}), ("project", "search", {"X-Project": "search"}),
                 ("feature", "chat", {"X-Feature": "chat"}), ("pool", "default", {}),
                 ("token", token_id, {})]
        for scope, name, headers in cases:
            freeze(scope, name, f"stop {scope}")
            status, h, raw = g.call("/v1/chat/completions", CHAT, headers=headers)
            self.assertEqual((status, h["x-keyplane-error"]), (403, "frozen"), raw)
            self.assertIn(f'{scope} {name} is frozen by an operator: "stop {scope}"',
                          json.loads(raw)["error"]["message"])
            # The Anthropic-shaped endpoint answers in its own shape.
            status, _, raw = g.call("/anthropic/v1/messages",
                                    {"model": "gpt-4o-mini", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]},
                                    headers=headers)
            self.assertEqual(status, 403, raw)
            self.assertEqual(json.loads(raw)["error"]["type"], "permission_error")
            unfreeze(scope, name)
            status, _, raw = g.call("/v1/chat/completions", CHAT, headers=headers)
            self.assertEqual(status, 200, raw)
        # A feature nobody froze is not refused while another is.
        freeze("feature", "chat", "stop chat")
        status, _, raw = g.call("/v1/chat/completions", CHAT, headers={"X-Feature": "search"})
        self.assertEqual(status, 200, raw)
        self.assertEqual(g.stats()["keys"].get(fp(KEY_A)), 6)


if __name__ == "__main__":
    unittest.main()
