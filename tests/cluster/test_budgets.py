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


    def clusterctl(self, *args):
        env = {"KEYPLANE_SERVER": self.node.control_url, "KEYPLANE_TOKEN": self.node.admin_token}
        return self.h.run(["clusterctl", *args], env=env)

    def test_set_and_windows(self):
        """`clusterctl budgets set` adds and changes one budget of a policy,
        keeping the others, and refuses to write over a change made since it
        read the policy; a weekly budget at +05:30 and a fixed 14-day one
        show the window boundaries the offset and the anchor give, also
        through clusterctl's YAML and apply -f."""
        self.assertEqual(self.req("PUT", "/tenants/acme", {"display_name": "Acme"})[0], 201)
        status, body = self.req("PUT", "/policies/acme-spend", {
            "scope_kind": "tenant", "scope_target": "acme",
            "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": 5_000_000_000}]})
        self.assertEqual(status, 201, body)

        # A new weekly budget at +05:30, with the window of that offset.
        before = int(time.time() * 1000)
        cp = self.clusterctl("budgets", "set", "acme-spend", "weekly", "--limit", "70",
                             "--window", "weekly", "--utc-offset", "+05:30", "-o", "json")
        after = int(time.time() * 1000)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        weekly = json.loads(cp.stdout)
        self.assertEqual((weekly["budget"], weekly["window"], weekly["kind"]),
                         ("weekly", "weekly", "hard"))
        self.assertEqual(weekly["limit_nanousd"], 70_000_000_000)
        self.assertEqual(weekly["utc_offset_minutes"], 330)
        self.assertEqual(weekly["actions"], [])
        bounds = {week_bounds(before, 330), week_bounds(after, 330)}
        self.assertIn((weekly["window_start"][:19], weekly["resets_at"][:19]), bounds)
        status, listed = self.req("GET", "/budgets/acme-spend/weekly")
        self.assertEqual(status, 200, listed)
        self.assertEqual(listed["utc_offset_minutes"], 330)

        # Change the daily budget's limit: the weekly one stays.
        cp = self.clusterctl("budgets", "set", "acme-spend", "daily", "--limit", "7.5")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("$7.50", cp.stdout)
        status, pol = self.req("GET", "/policies/acme-spend")
        self.assertEqual(status, 200, pol)
        byname = {b["name"]: b for b in pol["budgets"]}
        self.assertEqual(byname["daily"]["limit_nanousd"], 7_500_000_000)
        self.assertEqual(byname["weekly"]["utc_offset_minutes"], 330)
        version = pol["version"]

        # Someone else changes the policy after it was read at `version`.
        pol_body = {k: v for k, v in pol.items()
                    if k not in ("id", "kind", "version", "created_ms", "updated_ms")}
        pol_body["rpm"] = 100
        status, _, raw = self.node.control("PUT", ADMIN + "/policies/acme-spend", body=pol_body,
                                           headers={"If-Match": '"%d"' % version})
        self.assertEqual(status, 200, raw)
        cp = self.clusterctl("budgets", "set", "acme-spend", "daily", "--limit", "9",
                             "--if-version", str(version))
        self.assertEqual(cp.returncode, 1, cp.stdout)
        self.assertIn("409", cp.stderr)
        status, pol = self.req("GET", "/policies/acme-spend")
        self.assertEqual((pol["rpm"], pol["budgets"][0]["limit_nanousd"]), (100, 7_500_000_000))

        # A fixed 14-day sprint from Monday 2026-01-05, windows either side
        # of the anchor.
        anchor, period = 1767571200000, 14 * 86400000
        cp = self.clusterctl("budgets", "set", "acme-spend", "sprint", "--limit", "100",
                             "--kind", "soft", "--window", "fixed", "--period-start",
                             "2026-01-05T00:00:00Z", "--period", "14d", "-o", "json")
        now = int(time.time() * 1000)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        sprint = json.loads(cp.stdout)
        self.assertEqual((sprint["period_start_ms"], sprint["period_ms"]), (anchor, period))
        start = anchor + (now - anchor) // period * period
        self.assertIn(sprint["window_start"][:19], {iso(start), iso(start - period)})
        self.assertNotIn("utc_offset_minutes", {k for k, v in sprint.items() if v})
        cp = self.clusterctl("budgets", "show", "acme-spend", "sprint")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("fixed 14d from 2026-01-05T00:00:00Z", cp.stdout)
        cp = self.clusterctl("budgets", "list")
        self.assertIn("weekly UTC+05:30", cp.stdout)

        # Refused before any request: a budget to add without a limit, a
        # zone name, a fixed window without its period, an offset on it.
        for args, why in ((["nope", "--kind", "soft"], "give --limit"),
                          (["daily", "--utc-offset", "Europe/Paris"], "fixed offset"),
                          (["daily", "--window", "fixed"], "needs --period-start"),
                          (["sprint", "--utc-offset", "+01:00"], "no --utc-offset"),
                          (["daily", "--period", "7d"], "for a fixed window"),
                          (["daily"], "nothing to change")):
            cp = self.clusterctl("budgets", "set", "acme-spend", *args)
            self.assertEqual(cp.returncode, 2, (args, cp.stderr))
            self.assertIn(why, cp.stderr)
        # Refused by the registry, with the field's path.
        cp = self.clusterctl("budgets", "set", "acme-spend", "weekly", "--period-start",
                             "2026-01-05", "--period", "30m", "--window", "fixed")
        self.assertEqual(cp.returncode, 1, cp.stderr)
        self.assertIn("budgets[1].period_ms: must be 3600000..", cp.stderr)

        # Actions and the new fields round-trip through YAML and apply -f.
        status, pol = self.req("GET", "/policies/acme-spend")
        pol_body = {k: v for k, v in pol.items()
                    if k not in ("id", "kind", "version", "created_ms", "updated_ms")}
        pol_body["budgets"][1]["actions"] = [
            {"at_percent": 80, "do": "alert"},
            {"at_percent": 100, "do": "downgrade", "model": "gpt-4o-mini"},
            {"at_percent": 120, "do": "throttle", "rpm": 30}]
        status, _, raw = self.node.control("PUT", ADMIN + "/policies/acme-spend", body=pol_body)
        self.assertEqual(status, 200, raw)
        cp = self.clusterctl("get", "policies", "acme-spend", "-o", "yaml")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("utc_offset_minutes: 330", cp.stdout)
        self.assertIn("do: downgrade", cp.stdout)
        path = self.h.write_file("policy.yaml",
                                 "policies:\n- " + cp.stdout.rstrip("\n").replace("\n", "\n  "))
        cp = self.clusterctl("apply", "-f", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("unchanged", cp.stdout)
        cp = self.clusterctl("budgets", "show", "acme-spend", "weekly")
        self.assertIn("80% alert, 100% downgrade gpt-4o-mini, 120% throttle 30rpm", cp.stdout)
        status, _, raw = self.node.control("PUT", ADMIN + "/policies/acme-spend", body={
            "scope_kind": "global", "budgets": [{"name": "b", "window": "daily",
                                                 "limit_nanousd": 1, "actions": [
                                                     {"at_percent": 50, "do": "downgrade"}]}]})
        self.assertEqual(status, 400, raw)
        err = json.loads(raw)["error"]
        self.assertEqual(err["field"], "budgets[0].actions[0].model")
        self.assertIn("required for downgrade", err["message"])


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))


def week_bounds(ms, offset_minutes):
    """The ISO week containing @ms at a fixed offset: (start, end) in UTC."""
    off = offset_minutes * 60000
    day = (ms + off) // 86400000
    monday = day - (day + 3) % 7  # 1970-01-01 was a Thursday
    return iso(monday * 86400000 - off), iso((monday + 7) * 86400000 - off)


if __name__ == "__main__":
    unittest.main()
