"""Key balances (docs/balances.md): an operator records a key's prepaid
credit and its top-ups in the registry; keyplane subtracts the meter's cost
for that key and shows what remains, the burn rate and when it runs out.

One node bootstraps and is the meter; its segments seal every 200 ms, so
calls reach the meter quickly. The checks compare the balance with the
usage API's own figure for the key, not with a figure computed here.
"""

import json
import secrets
import time
import unittest
import urllib.parse

from harness import Harness, http, wait_until

ADMIN = "/admin/v1"
MASTER = secrets.token_hex(32)
CONFIG = {"spool_seal_age_ms": "200ms", "alert_interval_ms": "200ms", "workers": 1}
# $10 per million input tokens, $30 per million output tokens.
PRICE = {"input_per_mtok": 10_000_000_000, "output_per_mtok": 30_000_000_000}
MODEL = "gpt-4o"


class Funded:
    """n1 (leader and meter), a mock provider, key key-a in pool default
    with a price for the model, and an app token of tenant acme."""

    def __init__(self, test):
        self.h = Harness(test)
        self.mock = self.h.start_mock()
        self.n1 = self.h.start_node("n1", config=CONFIG, env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: self.n1.admin_token, what="admin.token", alive=self.n1)
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": "sk-mock-balance-0001"})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        self.admin("PUT", "/prices/" + MODEL, PRICE)
        status, _, body = self.n1.control("POST", ADMIN + "/tokens", body={
            "role": "app", "tenant": "acme", "name": "acme"})
        assert status == 201, body
        self.token = json.loads(body)["token"]
        wait_until(lambda: http("GET", self.n1.gateway_url + "/v1/models", headers={
            "Authorization": "Bearer " + self.token})[0] == 200,
            what="the gateway knows the app token", alive=self.n1)

    def request(self, method, path, body=None):
        hdrs = {"Authorization": "Bearer " + self.n1.admin_token}
        status, _, raw = self.n1.control(method, ADMIN + path, body=body, headers=hdrs)
        return status, (json.loads(raw) if raw else None)

    def admin(self, method, path, body=None):
        status, v = self.request(method, path, body)
        assert status in (200, 201), (method, path, status, v)
        return v

    def call(self):
        body = {"model": MODEL, "max_tokens": 64,
                "messages": [{"role": "user", "content": "x" * 400}]}
        status, _, raw = http("POST", self.n1.gateway_url + "/v1/chat/completions", body=body,
                              headers={"Authorization": "Bearer " + self.token,
                                       "Content-Type": "application/json"}, timeout=60)
        assert status == 200, (status, raw)

    def meter_totals(self, since_ms):
        q = urllib.parse.urlencode({"granularity": "total", "from": str(since_ms),
                                    "filter": "key:key-a"})
        return self.admin("GET", "/usage?" + q)["totals"]

    def balance(self):
        return self.admin("GET", "/keys/key-a/balance")


class BalanceTest(unittest.TestCase):
    def test_spent_is_the_meters_cost_and_a_topup_raises_the_credit(self):
        f = Funded(self)
        status, v = f.request("GET", "/keys/key-a/balance")
        self.assertEqual(status, 404, v)
        status, v = f.request("POST", "/keys/key-a/balance/topups", {"amount_usd": "1"})
        self.assertEqual(status, 404, v)
        # A whole minute back, so that the meter's minute rounding counts
        # the same minutes for the balance and for the usage query below.
        since = (int(time.time() * 1000) // 60000) * 60000
        rec = f.admin("PUT", "/keys/key-a/balance", {"credit_usd": "1.00", "since": since})
        self.assertEqual(rec["credit_nanousd"], 1_000_000_000)
        self.assertEqual(rec["since_ms"], since)
        b = f.balance()
        self.assertEqual(b["spent_nanousd"], 0)
        self.assertEqual(b["remaining_nanousd"], 1_000_000_000)
        self.assertIsNone(b["exhaustion_at"])

        for _ in range(5):
            f.call()
        wait_until(lambda: f.meter_totals(since)["requests"] == 5, what="5 calls metered",
                   timeout=60, alive=f.n1)
        cost = f.meter_totals(since)["cost_nanousd"]
        self.assertGreater(cost, 0)
        b = f.balance()
        self.assertEqual(b["spent_nanousd"], cost)
        self.assertEqual(b["remaining_nanousd"], 1_000_000_000 - cost)
        self.assertEqual(b["credit_usd"], "1.000000000")
        self.assertGreater(b["burn_per_hour_nanousd"], 0)
        self.assertIsNotNone(b["exhaustion_at"])
        self.assertFalse(b["exhausted"])

        # A top-up raises the credit and what remains, and is audited.
        f.admin("POST", "/keys/key-a/balance/topups",
                {"amount_nanousd": 500_000_000, "note": "PO 4711"})
        b = f.balance()
        self.assertEqual(b["credit_nanousd"], 1_500_000_000)
        self.assertEqual(b["remaining_nanousd"], 1_500_000_000 - cost)
        self.assertEqual([t["amount_nanousd"] for t in b["topups"]], [500_000_000])
        self.assertEqual(b["topups"][0]["note"], "PO 4711")
        audit = f.admin("GET", "/audit?target=key-a")["entries"]
        actions = [e["action"] for e in audit if e["result"].startswith("ok")]
        self.assertIn("set_key_balance", actions)
        self.assertIn("add_key_topup", actions)
        topups = [e for e in audit if e["action"] == "add_key_topup"]
        self.assertIn("topped up 500000000 nano-USD, credit 1500000000", topups[-1]["result"])

        # clusterctl: a top-up in dollars, then the balance as JSON and as a record.
        env = {"KEYPLANE_CONFIG_DIR": f.h.path("ctl-config"),
               "KEYPLANE_SERVER": "http://" + f.n1.listen["control"],
               "KEYPLANE_TOKEN": f.n1.admin_token}
        cp = f.h.run(["clusterctl", "-o", "json", "keys", "balance", "key-a", "--topup", "0.25",
                      "--note", "from clusterctl"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        shown = json.loads(cp.stdout)
        self.assertEqual(shown["credit_nanousd"], 1_750_000_000)
        self.assertEqual(shown["topups"][-1]["note"], "from clusterctl")
        cp = f.h.run(["clusterctl", "keys", "balance", "key-a"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("$1.75", cp.stdout)

        # Bad bodies are refused naming the field.
        status, v = f.request("PUT", "/keys/key-a/balance", {"credit_usd": "-1"})
        self.assertEqual(status, 400, v)
        status, v = f.request("PUT", "/keys/key-a/balance", {"credit_usd": 1, "extra": 1})
        self.assertEqual(status, 400, v)

    def test_a_tiny_credit_opens_the_key_balance_alert(self):
        f = Funded(self)
        f.admin("PUT", "/keys/key-a/balance", {"credit_nanousd": 1000})

        def alert():
            items = f.admin("GET", "/alerts?state=open")["items"]
            return next((a for a in items if a["id"] == "key_balance:key-a"), None)

        # One call spends far more than $0.000001.
        f.call()
        wait_until(lambda: alert() is not None and alert()["severity"] == "critical",
                   what="the key_balance alert opens as critical", timeout=60, alive=f.n1)
        a = alert()
        self.assertEqual(a["rule"], "key_balance")
        self.assertEqual(a["subject"], "key key-a")
        self.assertIn("top up key key-a", a["action"])
        self.assertLess(a["last_value"], 0)
        # A top-up that covers the spend resolves it.
        f.admin("POST", "/keys/key-a/balance/topups", {"amount_usd": 100, "note": "refill"})
        wait_until(lambda: alert() is None, what="the key_balance alert resolves", timeout=60,
                   alive=f.n1)

    def test_the_canary_reads_a_providers_balance_endpoint(self):
        # A provider with a DeepSeek-style balance endpoint: the canary
        # reads it after a good probe, and the balance shown is the
        # provider's (no credit recorded); at zero the alert opens.
        h = Harness(self)
        mock = h.start_mock()
        cfg = dict(CONFIG, canary_interval_ms="1s")
        n1 = h.start_node("n1", config=cfg, env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        hdrs = {"Authorization": "Bearer " + n1.admin_token}

        def admin(method, path, body=None, want=(200, 201)):
            status, _, raw = n1.control(method, ADMIN + path, body=body, headers=hdrs)
            self.assertIn(status, want, raw)
            return json.loads(raw) if raw else None
        # The endpoint and the pointer go together, as a path and a JSON pointer.
        status, _, raw = n1.control("PUT", ADMIN + "/providers/ds", body={
            "kind": "openai-compatible", "base_url": mock.url + "/v1", "allow_insecure": True,
            "balance_path": "/user/balance"}, headers=hdrs)
        self.assertEqual(status, 400, raw)
        self.assertEqual(json.loads(raw)["error"]["field"], "balance_pointer")
        admin("PUT", "/providers/ds", {
            "kind": "openai-compatible", "base_url": mock.url + "/v1", "allow_insecure": True,
            "balance_path": "/user/balance", "balance_pointer": "/balance_infos/0/total_balance"})
        secret = "sk-mock-provider-balance-0002"
        status, _, raw = http("POST", mock.url + "/mock/balance",
                              body={"key": secret, "usd": "12.50"})
        self.assertEqual(status, 200, raw)
        admin("PUT", "/keys/key-p", {"provider": "ds", "secret": secret})
        health = wait_until(lambda: (lambda x: x if x.get("provider_balance_ms") else None)(
            admin("GET", "/keys/key-p/health")), what="the canary read the balance", alive=n1)
        self.assertEqual(health["provider_balance_nanousd"], 12_500_000_000)
        b = admin("GET", "/keys/key-p/balance")
        self.assertEqual(b["source"], "provider")
        self.assertEqual(b["remaining_nanousd"], 12_500_000_000)
        self.assertEqual(b["remaining_usd"], "12.500000000")
        self.assertFalse(b["exhausted"])
        self.assertIn("provider_balance_at", b)
        self.assertNotIn("credit_nanousd", b)
        self.assertGreaterEqual(json.loads(http("GET", mock.url + "/mock/stats")[2])
                                ["routes"]["/v1/user/balance"], 1)

        # The account runs dry: the next read says so, and the alert opens.
        admin("PUT", "/alert-rules/balances", {"kind": "key_balance", "params": {}})
        http("POST", mock.url + "/mock/balance", body={"key": secret, "usd": "0.00"})

        def alert():
            items = admin("GET", "/alerts?state=open")["items"]
            return next((a for a in items if a["id"] == "key_balance:key-p"), None)
        a = wait_until(alert, what="the key_balance alert opens", timeout=60, alive=n1)
        self.assertEqual(a["severity"], "critical")
        self.assertIn("its provider reports $0", a["message"])
        self.assertTrue(admin("GET", "/keys/key-p/balance")["exhausted"])
        # Topped up at the provider: the next read resolves it.
        http("POST", mock.url + "/mock/balance", body={"key": secret, "usd": "5"})
        wait_until(lambda: alert() is None, what="the alert resolves", timeout=60, alive=n1)


if __name__ == "__main__":
    unittest.main()
