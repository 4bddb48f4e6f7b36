"""Alerts (docs/alerts.md): rules evaluated on the Raft leader, recorded in
the registry, delivered to webhooks, acknowledged by operators.

Each test starts its own nodes and a tiny webhook receiver on 127.0.0.1:0
that records every delivery (and can be told to fail). The leader
evaluates every 200 ms here (alert_interval_ms), so conditions are met
within a second or two; every wait is on a condition, never a sleep.

  (a) a soft budget crossing 50/80/100% with real traffic: three alerts,
      delivered to a generic and a Slack webhook, no call refused;
  (b) a key answering 401: invalid, a critical "rotate key" alert in the API
      and the webhook, acknowledged with clusterctl;
  (c) a receiver answering 500: retried, then dead-lettered;
  (d) the leader killed with an open, delivered alert: the new leader sends
      no second open and delivers the resolve;
  (e) a node stopped: node down, resolved when it is back.
"""

import hashlib
import hmac
import json
import secrets
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Harness, http, metric_value, wait_until

ADMIN = "/admin/v1"
MASTER = secrets.token_hex(32)
FAST = {"alert_interval_ms": "200ms", "spool_seal_age_ms": "200ms", "workers": 1}
RAFT = {"election_timeout_ms": "400ms", "heartbeat_timeout_ms": "50ms"}
PRICE = {"input_per_mtok": 10_000_000_000, "output_per_mtok": 30_000_000_000}
MODEL = "gpt-4o"
KEY_A = "sk-mock-alerts-a-0001"
KEY_B = "sk-mock-alerts-b-0002"
SIGNING = "whsec-" + secrets.token_hex(16)


class Receiver:
    """A webhook receiver: records (path, headers, body) of every POST and
    answers self.status (200 unless told otherwise)."""

    def __init__(self, test):
        self.deliveries = []
        self.status = 200
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                with rec.lock:
                    rec.deliveries.append((self.path, {k.lower(): v for k, v in
                                                       self.headers.items()}, raw))
                    status = rec.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        test.addCleanup(self.close)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def got(self, path=None):
        with self.lock:
            return [(p, h, json.loads(b)) for p, h, b in self.deliveries
                    if path is None or p == path]

    def raw(self, path):
        with self.lock:
            return [(h, b) for p, h, b in self.deliveries if p == path]

    def events(self, path, alert, event):
        return [b for _, h, b in self.got(path)
                if h.get("x-keyplane-alert") == alert and h.get("x-keyplane-event") == event]


class Alerting:
    """Nodes (n1 bootstraps, the others join), a mock provider, keys, a
    pool, and helpers for the control API and clusterctl."""

    def __init__(self, test, nodes=1, config=None):
        self.test = test
        self.h = Harness(test)
        self.mock = self.h.start_mock()
        self.cfg = dict(FAST)
        self.cfg.update(config or {})
        n1 = self.h.start_node("n1", config=self.cfg, env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        self.token = n1.admin_token
        self.nodes = [n1]
        for i in range(2, nodes + 1):
            self.nodes.append(self.h.start_node(
                f"n{i}", config=self.cfg, args=["--join", n1.listen["control"]],
                env={"KEYPLANE_MASTER_KEY": MASTER}))
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})

    def live(self):
        return [n for n in self.nodes if n.running()]

    def req(self, method, path, body=None, node=None):
        node = node or self.live()[0]
        return node.control(method, ADMIN + path, body=body,
                            headers={"Authorization": "Bearer " + self.token})

    def admin(self, method, path, body=None, node=None):
        status, _, raw = self.req(method, path, body, node)
        assert status in (200, 201), (method, path, status, raw)
        return json.loads(raw) if raw else None

    def alerts(self, state="all", node=None):
        return {a["id"]: a for a in self.admin("GET", "/alerts?state=" + state, node=node)["items"]}

    def alert(self, alert_id, node=None):
        return self.alerts(node=node).get(alert_id)

    def wait_alert(self, alert_id, state="open", what=None, timeout=30, node=None):
        return wait_until(
            lambda: (lambda a: a if a and a["state"] == state else None)(
                self.alert(alert_id, node=node)),
            timeout=timeout, what=what or f"alert {alert_id} {state}", alive=self.live()[0])

    def wait_delivered(self, alert_id, webhook, event="open", state="sent", node=None):
        def check():
            a = self.alert(alert_id, node=node)
            return a and any(d["webhook"] == webhook and d["event"] == event and
                             d["state"] == state for d in a["deliveries"])
        return wait_until(check, what=f"{event} of {alert_id} to {webhook}: {state}",
                          alive=self.live()[0])

    def webhook(self, name, receiver, path, kind="generic", **params):
        p = {"url": receiver.url + path, "allow_insecure": "true"}
        p.update({k: str(v) for k, v in params.items()})
        self.admin("PUT", "/webhooks/" + name, {"kind": kind, "params": p})

    def key(self, name, secret):
        self.admin("PUT", "/keys/" + name, {"provider": "mock", "secret": secret})

    def clusterctl(self, *args, node=None):
        node = node or self.live()[0]
        return self.h.run(["clusterctl", "--server", node.control_url, "--token", self.token,
                           *args])

    def app_token(self, tenant):
        return self.admin("POST", "/tokens", {"role": "app", "tenant": tenant,
                                               "name": tenant})["token"]

    def chat(self, token, node=None):
        node = node or self.live()[0]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 200}]}
        return http("POST", node.gateway_url + "/v1/chat/completions", body=body,
                    headers={"Authorization": "Bearer " + token}, timeout=60)


class BudgetAlertsTest(unittest.TestCase):
    def test_a_soft_budget_alerts_at_50_80_100_percent_and_refuses_nothing(self):
        # (a) Real traffic through the gateway against a soft budget.
        a = Alerting(self)
        rx = Receiver(self)
        a.webhook("ops", rx, "/generic", secret=SIGNING)
        a.webhook("chat", rx, "/slack", kind="slack")
        a.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        a.key("key-a", KEY_A)
        a.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        a.admin("PUT", "/prices/" + MODEL, PRICE)
        limit = 200_000  # $0.0002: a few calls
        a.admin("PUT", "/policies/acme-spend", {
            "scope_kind": "tenant", "scope_target": "acme",
            "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": limit,
                         "kind": "soft"}]})
        token = a.app_token("acme")
        wait_until(lambda: http("GET", a.nodes[0].gateway_url + "/v1/models", headers={
            "Authorization": "Bearer " + token})[0] == 200, what="the app token works")
        calls = 0
        while a.admin("GET", "/budgets/acme-spend/daily")["spent_nanousd"] < limit:
            status, _, body = a.chat(token)
            self.assertEqual(status, 200, body)  # a soft budget refuses nothing
            calls += 1
            self.assertLess(calls, 200, "the budget never reached its limit")
            if calls % 5 == 0:  # spend is reported within ~100 ms of the calls
                wait_until(lambda c=calls: a.admin("GET", "/budgets/acme-spend/daily")
                           ["spent_nanousd"] > 0, what="spend reported")

        def thresholds():
            got = {i.rsplit(":", 1)[1]: x for i, x in
                   a.alerts("open").items() if x["rule"] == "budget_threshold"}
            return got if set(got) == {"50", "80", "100"} else None
        got = wait_until(thresholds, what="three budget alerts open")
        self.assertEqual({k: v["severity"] for k, v in got.items()},
                         {"50": "info", "80": "warning", "100": "critical"})
        self.assertEqual(got["100"]["subject"], "budget acme-spend/daily")
        self.assertIn("soft budget refuses nothing", got["100"]["action"])
        for x in got.values():
            a.wait_delivered(x["id"], "ops")
            a.wait_delivered(x["id"], "chat")

        # Each alert reached each webhook once, the generic one signed.
        for x in got.values():
            bodies = rx.events("/generic", x["id"], "open")
            self.assertEqual(len(bodies), 1, x["id"])
            self.assertEqual(bodies[0]["severity"], x["severity"])
            self.assertEqual(bodies[0]["delivery_id"], f"{x['id']}/{x['started_ms']}/open")
            self.assertEqual(len(rx.events("/slack", x["id"], "open")), 1)
        for headers, raw in rx.raw("/generic"):
            want = "sha256=" + hmac.new(SIGNING.encode(), raw, hashlib.sha256).hexdigest()
            self.assertEqual(headers["x-keyplane-signature"], want)
        texts = [b["text"] for _, _, b in rx.got("/slack")]
        self.assertTrue(any(t.startswith("[CRITICAL] budget acme-spend/daily") for t in texts),
                        texts)
        for _, headers, _ in rx.got("/slack"):
            self.assertNotIn("x-keyplane-signature", headers)  # no secret set

        # The evaluator's writes are audited as the leader's.
        entries = a.admin("GET", "/audit?action=put_alert")["entries"]
        self.assertTrue(entries)
        self.assertEqual({(e["actor"], e["role"]) for e in entries}, {("system", "leader")})
        m = a.nodes[0].metrics()
        self.assertEqual(metric_value(m, "keyplane_alerts_open", severity="critical"), 1)
        self.assertGreaterEqual(
            metric_value(m, "keyplane_alert_deliveries_total", result="sent"), 6)
        # The webhook's secret and url path are never shown.
        wh = a.admin("GET", "/webhooks/ops")
        self.assertEqual(wh["params"]["secret"], "********")
        self.assertNotIn("/generic", wh["params"]["url"])
        a.nodes[0].stop()
        with open(a.nodes[0].log_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertNotIn(SIGNING, log)
        self.assertNotIn("/generic", log)


class KeyAlertsTest(unittest.TestCase):
    def test_an_invalid_key_raises_a_rotate_alert_that_an_operator_acks(self):
        # (b) A mock 401 on key-a: the key becomes invalid, the alert says
        # to rotate it, in the API and in the webhook; clusterctl acks it.
        a = Alerting(self)
        rx = Receiver(self)
        a.webhook("ops", rx, "/hook")
        a.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        a.key("key-a", KEY_A)
        a.key("key-b", KEY_B)
        a.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}, {"key": "key-b",
                                                                        "priority": 1}]})
        token = a.app_token("acme")
        http("POST", a.mock.url + "/mock/faults", body={"key": KEY_A, "faults": "401"})
        wait_until(lambda: a.chat(token)[0] == 200 and
                   a.admin("GET", "/keys/key-a/health")["status"] == "invalid",
                   what="key-a invalid after a 401")
        x = a.wait_alert("key:key-a:invalid")
        self.assertEqual(x["severity"], "critical")
        self.assertEqual(x["rule"], "key_invalid")
        self.assertIn("rotate key key-a: provider answered 401 since ", x["action"])
        a.wait_delivered(x["id"], "ops")
        body = rx.events("/hook", x["id"], "open")[0]
        self.assertIn("rotate key key-a", body["action"])
        self.assertEqual(body["event"], "open")
        self.assertEqual(body["state"], "open")
        # No pool alert: key-b still works.
        self.assertIsNone(a.alert("pool:default:no_key"))

        listed = a.clusterctl("alerts", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("key:key-a:invalid", listed.stdout)
        self.assertIn("critical", listed.stdout)
        acked = a.clusterctl("alerts", "ack", "key:key-a:invalid")
        self.assertEqual(acked.returncode, 0, acked.stderr)
        who = a.admin("GET", "/whoami")["token_id"]
        self.assertEqual(acked.stdout.strip(), f"alert key:key-a:invalid: acknowledged by {who}")
        shown = json.loads(a.clusterctl("alerts", "show", "key:key-a:invalid", "-o",
                                        "json").stdout)
        self.assertEqual((shown["acked_by"], shown["state"]), (who, "open"))
        self.assertTrue(shown["acked_at"])
        # Acked is not resolved: it resolves when the key is healthy again.
        a.admin("PUT", "/keys/key-a/health", {"status": "healthy"})
        a.wait_alert("key:key-a:invalid", "resolved")
        wait_until(lambda: rx.events("/hook", x["id"], "resolved"), what="the resolve delivered")
        # Reading alerts needs read_alerts, which finance has; acking
        # needs operate, which it does not.
        fin = a.admin("POST", "/tokens", {"role": "finance", "name": "fin"})["token"]
        status, _, _ = a.nodes[0].control("GET", ADMIN + "/alerts",
                                          headers={"Authorization": "Bearer " + fin})
        self.assertEqual(status, 200)
        status, _, raw = a.nodes[0].control("POST", ADMIN + "/alerts/key:key-a:invalid/ack",
                                            headers={"Authorization": "Bearer " + fin})
        self.assertEqual(status, 403, raw)


class DeliveryTest(unittest.TestCase):
    def test_a_failing_receiver_is_retried_then_dead_lettered(self):
        # (c) The receiver answers 500: three attempts with backoff, the
        # same delivery id each time, then a dead letter.
        a = Alerting(self)
        rx = Receiver(self)
        rx.status = 500
        a.webhook("flaky", rx, "/fail", max_attempts=3, backoff_ms=200)
        a.admin("PUT", "/pools/empty", {"members": []})
        x = a.wait_alert("pool:empty:no_key")
        self.assertEqual(x["severity"], "critical")
        a.wait_delivered(x["id"], "flaky", state="dead")
        tries = rx.events("/fail", x["id"], "open")
        self.assertEqual(len(tries), 3)
        self.assertEqual({b["delivery_id"] for b in tries}, {f"{x['id']}/{x['started_ms']}/open"})
        dead = a.admin("GET", "/alerts/dead-letters")["items"]
        self.assertEqual(len(dead), 1)
        self.assertEqual((dead[0]["alert"], dead[0]["webhook"], dead[0]["event"],
                          dead[0]["attempts"], dead[0]["error"]),
                         (x["id"], "flaky", "open", 3, "HTTP 500"))
        out = a.clusterctl("alerts", "dead-letters")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("pool:empty:no_key", out.stdout)
        self.assertIn("HTTP 500", out.stdout)
        m = a.nodes[0].metrics()
        self.assertEqual(metric_value(m, "keyplane_alert_deliveries_total", result="dead"), 1)
        self.assertEqual(metric_value(m, "keyplane_alert_deliveries_total", result="failed"), 3)
        # A dead letter is not retried: nothing more arrives.
        rx.status = 200
        a.key("key-a", KEY_A)
        a.admin("PUT", "/pools/empty", {"members": [{"key": "key-a"}]})
        a.wait_alert(x["id"], "resolved")
        wait_until(lambda: rx.events("/fail", x["id"], "resolved"), what="the resolve delivered")
        self.assertEqual(len(rx.events("/fail", x["id"], "open")), 3)

    def test_webhook_and_rule_checks(self):
        a = Alerting(self)
        for body, field in (
                ({"kind": "teams", "params": {"url": "https://x.example/"}}, None),
                ({"kind": "generic", "params": {"url": "http://hooks.example/x"}}, "params.url"),
                ({"kind": "generic", "params": {"url": "https://127.0.0.1/x"}}, "params.url"),
                ({"kind": "generic", "params": {"url": "https://x.example/", "secret": "s"}},
                 "params.secret")):
            status, _, raw = a.req("PUT", "/webhooks/w", body)
            self.assertEqual(status, 400, raw)
            err = json.loads(raw)["error"]
            if field:
                self.assertEqual(err.get("field"), field, err)
        status, _, raw = a.req("PUT", "/alert-rules/r", {"kind": "budget_threshold",
                                                       "params": {"percents": "80,80"}})
        self.assertEqual(status, 400, raw)
        a.admin("PUT", "/alert-rules/r", {"kind": "budget_threshold",
                                         "params": {"percents": "75, 90"}})
        # What GET shows (masked) can be PUT back: the stored url and
        # secret stay.
        a.admin("PUT", "/webhooks/w", {"kind": "generic", "params": {
            "url": "https://hooks.example/T000/B000/XXXX", "secret": SIGNING}})
        shown = a.admin("GET", "/webhooks/w")
        self.assertEqual(shown["params"], {"url": "https://hooks.example/\u2026",
                                           "secret": "********"})
        a.admin("PUT", "/webhooks/w", {"kind": "generic", "params": shown["params"]})
        fsm_view = a.admin("GET", "/webhooks/w")
        self.assertEqual(fsm_view["version"], 2)


class LeaderChangeTest(unittest.TestCase):
    def test_a_new_leader_does_not_resend_and_delivers_the_resolve(self):
        # (d) Three nodes; an open alert delivered and recorded; kill -9
        # the leader. The new leader holds the alert (no second open) and
        # delivers the resolve when the cause goes away.
        a = Alerting(self, nodes=3, config=RAFT)
        rx = Receiver(self)
        a.admin("PUT", "/alert-rules/down", {"kind": "node_down",
                                            "params": {"after_seconds": "2"}})
        a.webhook("ops", rx, "/hook")
        a.admin("PUT", "/pools/empty", {"members": []})
        x = a.wait_alert("pool:empty:no_key")
        a.wait_delivered(x["id"], "ops")
        for n in a.nodes:  # every node has the delivery record
            a.wait_delivered(x["id"], "ops", node=n)
        leader = self.leader(a)
        leader.kill()
        rest = a.live()
        new = wait_until(lambda: self.leader(a, rest), timeout=30, what="a new leader")
        # The new leader has evaluated (it raised the old one's node_down)
        # and delivered what it raised.
        down = f"node:{leader.name}:down"
        a.wait_alert(down, node=new)
        a.wait_delivered(down, "ops", node=new)
        self.assertEqual(len(rx.events("/hook", x["id"], "open")), 1)
        # The cause goes: the new leader resolves and delivers it, once.
        a.key("key-a", KEY_A)
        a.admin("PUT", "/pools/empty", {"members": [{"key": "key-a"}]})
        a.wait_alert(x["id"], "resolved", node=new)
        a.wait_delivered(x["id"], "ops", event="resolved", node=new)
        self.assertEqual(len(rx.events("/hook", x["id"], "resolved")), 1)
        self.assertEqual(len(rx.events("/hook", x["id"], "open")), 1)

    def leader(self, a, among=None):
        for n in among or a.live():
            status, _, raw = n.control("GET", ADMIN + "/cluster",
                                       headers={"Authorization": "Bearer " + a.token})
            if status == 200 and json.loads(raw).get("state") == "leader":
                return n
        return None


class NodeDownTest(unittest.TestCase):
    def test_a_stopped_node_is_down_until_it_returns(self):
        # (e) A follower stops: node down (critical) after after_seconds;
        # back: resolved.
        a = Alerting(self, nodes=3, config=RAFT)
        a.admin("PUT", "/alert-rules/down", {"kind": "node_down",
                                            "params": {"after_seconds": "2"}})
        follower = next(n for n in a.nodes[1:] if n.running())
        status, _, raw = follower.control("GET", ADMIN + "/cluster",
                                          headers={"Authorization": "Bearer " + a.token})
        if json.loads(raw).get("state") == "leader":
            follower = a.nodes[1] if follower is a.nodes[2] else a.nodes[2]
        follower.stop()
        x = a.wait_alert(f"node:{follower.name}:down")
        self.assertEqual(x["severity"], "critical")
        self.assertIn("has not answered the Raft leader", x["message"])
        self.assertIn(f"clusterctl members remove {follower.name}", x["action"])
        follower.start()
        a.wait_alert(x["id"], "resolved")


if __name__ == "__main__":
    unittest.main()
