"""Budgets in the control API: the state of every policy's budgets, one
budget, and an operator's reset (docs/budgets.md). The router does not
lease from budgets yet, so spent stays 0 here; the lease protocol itself is
tested in tests/unit/test_budget.c and test_raft_fixture.c."""

import json
import secrets
import time
import unittest

from harness import Harness, wait_until

ADMIN = "/admin/v1"


class BudgetApiTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.start_node(env={"KEYPLANE_MASTER_KEY": secrets.token_hex(32)})
        wait_until(lambda: self.node.admin_token, what="admin.token", alive=self.node)

    def req(self, method, path, body=None):
        status, _, raw = self.node.control(method, ADMIN + path, body=body)
        return status, (json.loads(raw) if raw else None)

    def test_list_show_reset(self):
        self.assertEqual(self.req("PUT", "/tenants/acme", {"display_name": "Acme"})[0], 201)
        status, body = self.req("PUT", "/policies/acme-spend", {
            "scope_kind": "tenant", "scope_target": "acme",
            "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": 5_000_000_000,
                         "kind": "hard"},
                        {"name": "monthly", "window": "monthly", "limit_nanousd": 90_000_000_000,
                         "kind": "soft"}]})
        self.assertIn(status, (200, 201), body)

        status, body = self.req("GET", "/budgets")
        self.assertEqual(status, 200, body)
        items = {(b["policy"], b["budget"]): b for b in body["items"]}
        self.assertEqual(set(items), {("acme-spend", "daily"), ("acme-spend", "monthly")})
        daily = items[("acme-spend", "daily")]
        self.assertEqual(daily["limit_usd"], "5.000000000")
        self.assertEqual(daily["spent_nanousd"], 0)
        self.assertEqual(daily["remaining_nanousd"], 5_000_000_000)
        self.assertEqual((daily["kind"], daily["window"]), ("hard", "daily"))
        self.assertEqual((daily["scope_kind"], daily["scope_target"]), ("tenant", "acme"))
        today = time.strftime("%Y-%m-%dT00:00:00", time.gmtime())
        self.assertTrue(daily["window_start"].startswith(today), daily["window_start"])
        self.assertEqual(items[("acme-spend", "monthly")]["kind"], "soft")

        status, one = self.req("GET", "/budgets/acme-spend/daily")
        self.assertEqual((status, one), (200, daily))
        self.assertEqual(self.req("GET", "/budgets/acme-spend/weekly")[0], 404)
        self.assertEqual(self.req("GET", "/budgets/nope/daily")[0], 404)

        status, body = self.req("POST", "/budgets/acme-spend/daily/reset")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["spent_nanousd"], 0)
        status, audit = self.req("GET", "/audit?action=budget_reset")
        self.assertEqual(status, 200, audit)
        self.assertEqual(len(audit["entries"]), 1, audit)
        self.assertEqual(self.req("POST", "/budgets/acme-spend/weekly/reset")[0], 404)

        # clusterctl shows and resets the same.
        env = {"KEYPLANE_SERVER": self.node.control_url, "KEYPLANE_TOKEN": self.node.admin_token}
        cp = self.h.run(["clusterctl", "budgets", "list"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("acme-spend", cp.stdout)
        self.assertIn("$5", cp.stdout)
        cp = self.h.run(["clusterctl", "budgets", "show", "acme-spend", "daily", "-o", "json"],
                        env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual(json.loads(cp.stdout)["remaining_nanousd"], 5_000_000_000)
        cp = self.h.run(["clusterctl", "budgets", "reset", "acme-spend", "daily"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        cp = self.h.run(["clusterctl", "budgets", "show", "acme-spend", "weekly"], env=env)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("no budget weekly", cp.stderr)

        # A finance token reads budgets but cannot reset them.
        status, tok = self.req("POST", "/tokens", {"role": "finance", "name": "fin"})
        self.assertEqual(status, 201, tok)
        hdrs = {"Authorization": "Bearer " + tok["token"]}
        status, _, _ = self.node.control("GET", ADMIN + "/budgets", headers=hdrs)
        self.assertEqual(status, 200)
        status, _, raw = self.node.control("POST", ADMIN + "/budgets/acme-spend/daily/reset",
                                           headers=hdrs)
        self.assertEqual(status, 403, raw)


if __name__ == "__main__":
    unittest.main()
