"""Canaries and key status (docs/health.md): the Raft leader claims each
active key's probe every canary_interval_ms (here 1.5 s, ±20%), a live
member in turn sends it to the provider and meters it as canary traffic,
and the result moves the key's status with hysteresis.

  (a) probes spread over the members, every provider kind is probed with
      its own request, each probe is metered exactly once as canary
      traffic (no tenant, no cost) and counted at the mock;
  (b) a key whose provider answers 401 turns invalid from a canary, leaves
      rotation, and comes back after a successful canary once the fault is
      gone; its history records both changes;
  (c) 429s: one failed probe does not move the key, two do
      (rate_limited); two successes bring it back;
  (d) the leader killed while probing: no key goes more than two
      intervals without a probe, and none is probed twice in one;
  (e) an operator sets a status, never the canary fields; clusterctl keys
      health shows every key, and one key's history;
  (f) a degraded key goes after the pool's healthy ones whatever its
      priority, on every router;
  (g) traffic failing on one key through three routers, summed by the
      leader, turns it degraded; canaries that succeed do not bring it
      back while its traffic is still troubled.

Every wait is on a condition, never a sleep.
"""

import hashlib
import json
import threading
import unittest

from harness import http, metric_value, wait_until
from test_alerts import Alerting

INTERVAL_MS = 1500
CANARY = {"canary_interval_ms": f"{INTERVAL_MS}ms", "election_timeout_ms": "400ms",
          "heartbeat_timeout_ms": "50ms"}
KEY_A = "sk-mock-canary-a-0001"
KEY_B = "sk-mock-canary-b-0002"
KEY_C = "sk-ant-mock-canary-c-0003"
KEY_D = "mock-gemini-canary-d-0004"


def fp(secret):
    return "fp_" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class Canaries(Alerting):
    def __init__(self, test, nodes=1, config=None):
        cfg = dict(CANARY)
        cfg.update(config or {})
        super().__init__(test, nodes=nodes, config=cfg)

    def health(self, key, node=None):
        return self.admin("GET", f"/keys/{key}/health", node=node)

    def wait_health(self, key, what, pred, timeout=30):
        return wait_until(lambda: (lambda h: h if pred(h) else None)(self.health(key)),
                          timeout=timeout, what=f"{key}: {what}", alive=self.live()[0])

    def mock_stats(self):
        return json.loads(http("GET", self.mock.url + "/mock/stats")[2])

    def canary_events(self):
        out = []
        for n in self.live():
            out += [e for e in self.admin("GET", "/usage/recent?limit=10000", node=n)["events"]
                    if e.get("kind") == "canary"]
        return out

    def chat(self, token, node=None):
        node = node or self.live()[0]
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
        return http("POST", node.gateway_url + "/v1/chat/completions", body=body,
                    headers={"Authorization": "Bearer " + token}, timeout=60)


def fault(c, key, spec):
    status, _, body = http("POST", c.mock.url + "/mock/faults",
                           body={"key": key, "faults": spec})
    assert status == 200, body


def clear_faults(c):
    status, _, body = http("DELETE", c.mock.url + "/mock/faults")
    assert status == 200, body


class CanaryTest(unittest.TestCase):
    def test_a_probes_spread_over_members_and_are_metered_once(self):
        c = Canaries(self, nodes=3)
        c.admin("PUT", "/providers/claude", {"kind": "anthropic", "base_url": c.mock.url + "/v1",
                                              "allow_insecure": True})
        c.admin("PUT", "/providers/gem", {"kind": "gemini", "base_url": c.mock.url + "/v1beta",
                                           "allow_insecure": True})
        c.key("key-a", KEY_A)
        c.key("key-b", KEY_B)
        c.admin("PUT", "/keys/key-c", {"provider": "claude", "secret": KEY_C,
                                       "models": ["claude-3-5-haiku-latest"]})
        c.admin("PUT", "/keys/key-d", {"provider": "gem", "secret": KEY_D})
        keys = ["key-a", "key-b", "key-c", "key-d"]
        # Every key probed at least twice, all fine.
        for k in keys:
            c.wait_health(k, "two good probes", lambda h: h.get("canary_streak", 0) >= 2 and
                          h.get("last_canary_result") == "ok")
            self.assertEqual(c.health(k)["status"], "healthy")
        # Each provider was asked with its own cheap request.
        routes = c.mock_stats()["routes"]
        self.assertGreaterEqual(routes.get("/v1/models", 0), 4)       # key-a, key-b
        self.assertGreaterEqual(routes.get("/v1/messages", 0), 2)     # key-c, 1 token
        self.assertGreaterEqual(routes.get("/v1beta/models", 0), 2)   # key-d
        # Spread: more than one member sent probes (round robin over the
        # live members: every member gets a share of 8+ probes).
        wait_until(lambda: len({e["node"] for e in c.canary_events()}) == 3,
                   what="probes sent from all three nodes", alive=c.nodes[0])
        for e in c.canary_events():
            self.assertEqual(e["kind"], "canary")
            self.assertEqual(e.get("tenant", ""), "")
            self.assertEqual(e.get("cost_nanousd", 0), 0)
            self.assertEqual(e["status"], 200)

        # Metered exactly once: a moment with no probe in flight shows as
        # many canary events as provider requests, key by key.
        secrets = {"key-a": KEY_A, "key-b": KEY_B, "key-c": KEY_C, "key-d": KEY_D}

        def same():
            before = c.canary_events()
            stats = c.mock_stats()["keys"]
            after = c.canary_events()
            if len(before) != len(after):
                return False
            per_key = {k: sum(1 for e in after if e["key_id"] == k) for k in keys}
            return all(stats.get(fp(secrets[k]), 0) == per_key[k] for k in keys)
        wait_until(same, what="mock requests == canary events for every key", alive=c.nodes[0])
        # Each node counts the probes it sent.
        sent = sum(metric_value(n.metrics(), "keyplane_canary_probes_total", provider=p,
                                result="ok") or 0
                   for n in c.nodes for p in ("mock", "claude", "gem"))
        self.assertGreaterEqual(sent, 8)

    def test_b_a_401_key_is_invalid_until_a_canary_succeeds(self):
        c = Canaries(self)
        c.key("key-a", KEY_A)
        c.key("key-b", KEY_B)
        c.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        c.admin("PUT", "/pools/default", {"strategy": "priority", "members": [
            {"key": "key-a", "priority": 1}, {"key": "key-b", "priority": 2}]})
        token = c.app_token("acme")
        wait_until(lambda: c.chat(token)[0] == 200, what="traffic flows")
        c.wait_health("key-a", "probed", lambda h: h.get("last_canary_result") == "ok")

        fault(c, KEY_A, "401")
        h = c.wait_health("key-a", "invalid", lambda h: h["status"] == "invalid")
        self.assertEqual(h["last_canary_result"], "auth")
        self.assertEqual(h["last_error_class"], "auth")
        self.assertEqual(h["history"][-1]["status"], "invalid")
        self.assertEqual(h["history"][-1]["source"], "canary")
        # Out of rotation: calls go to key-b, key-a gets only its probes.
        for _ in range(5):
            status, _, body = c.chat(token)
            self.assertEqual(status, 200, body)
        app = [e for e in c.admin("GET", "/usage/recent?limit=100")["events"]
               if e["kind"] == "app"][-5:]
        self.assertEqual({e["key_id"] for e in app}, {"key-b"})

        # The provider takes the key again: the next canary brings it back.
        clear_faults(c)
        h = c.wait_health("key-a", "healthy again", lambda h: h["status"] == "healthy")
        self.assertEqual(h["last_canary_result"], "ok")
        self.assertEqual([x["status"] for x in h["history"]][-2:], ["invalid", "healthy"])
        self.assertEqual(h["history"][-1]["source"], "canary")
        def served_by_a():
            if c.chat(token)[0] != 200:
                return False
            app = [e for e in c.admin("GET", "/usage/recent?limit=100")["events"]
                   if e["kind"] == "app"]
            return app[-1]["key_id"] == "key-a"
        wait_until(served_by_a, what="key-a serves calls again")

    def test_c_rate_limits_move_a_key_after_two_probes_and_back_after_two(self):
        c = Canaries(self)
        c.key("key-a", KEY_A)
        c.wait_health("key-a", "probed", lambda h: h.get("last_canary_result") == "ok")
        fault(c, KEY_A, "429")
        h = c.wait_health("key-a", "one 429", lambda h: h.get("last_canary_result") == "rate_limit")
        self.assertEqual(h["canary_streak"], -1)
        self.assertEqual(h["status"], "healthy")  # one failure moves nothing
        h = c.wait_health("key-a", "rate_limited", lambda h: h["status"] == "rate_limited")
        self.assertEqual(h["canary_streak"], -2)
        clear_faults(c)
        h = c.wait_health("key-a", "one success", lambda h: h.get("last_canary_result") == "ok")
        self.assertEqual(h["canary_streak"], 1)
        self.assertEqual(h["status"], "rate_limited")
        h = c.wait_health("key-a", "healthy", lambda h: h["status"] == "healthy")
        self.assertEqual(h["canary_streak"], 2)
        self.assertEqual([x["status"] for x in h["history"]], ["healthy", "rate_limited", "healthy"])

    def test_d_leader_kill_leaves_no_gap_and_no_double_probe(self):
        c = Canaries(self, nodes=3)
        keys = {"key-a": KEY_A, "key-b": KEY_B}
        for k, s in keys.items():
            c.key(k, s)
        claims = {k: set() for k in keys}
        stop = threading.Event()
        lock = threading.Lock()

        def watch():
            # Every claim (last_canary_ms) as it commits, from any live node.
            while not stop.is_set():
                for n in c.live():
                    try:
                        for k in keys:
                            status, _, raw = c.req("GET", f"/keys/{k}/health", node=n)
                            if status == 200:
                                ms = json.loads(raw).get("last_canary_ms", 0)
                                if ms:
                                    with lock:
                                        claims[k].add(ms)
                        break
                    except OSError:
                        continue
                stop.wait(0.05)
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        self.addCleanup(lambda: (stop.set(), t.join()))

        def count(k):
            with lock:
                return len(claims[k])
        wait_until(lambda: all(count(k) >= 2 for k in keys), what="two probes per key",
                   alive=c.nodes[0])
        leader = wait_until(lambda: self.leader(c), what="the leader")
        # Kill it right after a claim, while that probe is in flight.
        seen = count("key-a")
        wait_until(lambda: count("key-a") > seen, what="a new claim", alive=leader)
        leader.kill()
        rest = [n for n in c.nodes if n is not leader]
        wait_until(lambda: self.leader(c, rest), timeout=30, what="a new leader")
        # Three more rounds under the new leader.
        after = {k: count(k) for k in keys}
        wait_until(lambda: all(count(k) >= after[k] + 3 for k in keys),
                   what="three more probes per key", alive=rest[0])
        stop.set()
        t.join()
        stats = c.mock_stats()["keys"]
        for k, s in keys.items():
            times = sorted(claims[k])
            gaps = [b - a for a, b in zip(times, times[1:])]
            # Never twice within an interval (due times move by ±20%) ...
            self.assertGreaterEqual(min(gaps), INTERVAL_MS * 0.8 - 1, (k, gaps))
            # ... and never more than two intervals between probes.
            self.assertLessEqual(max(gaps), 2 * INTERVAL_MS, (k, gaps))
            # No probe without a claim: the mock saw at most one request
            # per claim (a claim whose leader died first sends none).
            self.assertLessEqual(stats.get(fp(s), 0), len(times), (k, stats, len(times)))

    def leader(self, c, among=None):
        for n in among or c.live():
            if not n.running():
                continue
            status, _, raw = c.req("GET", "/cluster", node=n)
            if status != 200:
                continue
            for m in json.loads(raw).get("members", []):
                if m.get("leader"):
                    return next((x for x in (among or c.live()) if x.name == m.get("name")), None)
        return None

    def test_e_operators_set_status_only_and_clusterctl_shows_health(self):
        c = Canaries(self)
        c.key("key-a", KEY_A)
        c.key("key-b", KEY_B)
        c.wait_health("key-a", "probed", lambda h: h.get("last_canary_result") == "ok")
        for field, value in (("last_canary_ms", 5), ("canary_streak", 3), ("history", []),
                             ("last_canary_result", "ok")):
            status, _, raw = c.req("PUT", "/keys/key-a/health",
                                   {"status": "healthy", field: value})
            self.assertEqual(status, 400, raw)
            self.assertEqual(json.loads(raw)["error"]["field"], field)
        c.admin("PUT", "/keys/key-b/health", {"status": "disabled",
                                              "last_error_class": "client"})
        out = c.clusterctl("keys", "health")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines()[1:] if ln.strip()}
        self.assertEqual(lines["key-a"][1], "healthy")
        self.assertEqual(lines["key-b"][1], "disabled")
        self.assertIn("ok", lines["key-a"])
        out = c.clusterctl("keys", "health", "key-b")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("HISTORY", out.stdout)
        self.assertRegex(out.stdout, r"disabled\s+client")
        out = c.clusterctl("-o", "json", "keys", "health")
        rows = {r["id"]: r for r in json.loads(out.stdout)}
        self.assertEqual(rows["key-b"]["status"], "disabled")
        # A disabled key is not probed: its last canary stays where it was.
        before = c.health("key-b").get("last_canary_ms", 0)
        c.wait_health("key-a", "probed twice more",
                      lambda h, s=c.health("key-a")["last_canary_ms"]:
                      h["last_canary_ms"] > s + INTERVAL_MS)
        self.assertEqual(c.health("key-b").get("last_canary_ms", 0), before)

    def test_f_a_degraded_key_goes_after_the_healthy_ones(self):
        c = Canaries(self, nodes=3)
        c.key("key-a", KEY_A)
        c.key("key-b", KEY_B)
        c.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        c.admin("PUT", "/pools/default", {"strategy": "priority", "members": [
            {"key": "key-a", "priority": 1}, {"key": "key-b", "priority": 2}]})
        token = c.app_token("acme")

        def served_by(node):
            status, _, body = c.chat(token, node=node)
            self.assertEqual(status, 200, body)
            app = [e for e in c.admin("GET", "/usage/recent?limit=100", node=node)["events"]
                   if e["kind"] == "app"]
            return app[-1]["key_id"]
        for n in c.nodes:  # every router has the token before anything is judged
            wait_until(lambda n=n: c.chat(token, node=n)[0] == 200,
                       what=f"{n.name} knows the app token", alive=n)
        wait_until(lambda: served_by(c.nodes[0]) == "key-a", what="key-a serves first")

        # An operator's degraded: still usable, but after key-b (priority 2).
        c.admin("PUT", "/keys/key-a/health", {"status": "degraded"})
        for n in c.nodes:
            wait_until(lambda n=n: served_by(n) == "key-b", what=f"{n.name} demotes key-a",
                       alive=n)
        c.admin("PUT", "/keys/key-a/health", {"status": "healthy"})
        for n in c.nodes:
            wait_until(lambda n=n: served_by(n) == "key-a", what=f"{n.name} uses key-a again",
                       alive=n)

    def test_g_failing_traffic_summed_over_routers_degrades_a_key(self):
        c = Canaries(self, nodes=3)
        c.key("key-a", KEY_A)
        c.key("key-b", KEY_B)
        c.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        c.admin("PUT", "/pools/default", {"strategy": "priority", "members": [
            {"key": "key-a", "priority": 1}, {"key": "key-b", "priority": 2}]})
        token = c.app_token("acme")
        for n in c.nodes:
            wait_until(lambda n=n: c.chat(token, node=n)[0] == 200,
                       what=f"{n.name} knows the app token", alive=n)
        c.wait_health("key-a", "probed", lambda h: h.get("last_canary_result") == "ok")

        # Calls fail on key-a (its canary, GET /v1/models, still works):
        # each router's breaker gives it a few attempts, failing over to
        # key-b; the leader adds the routers' counts up and degrades it.
        status, _, body = http("POST", c.mock.url + "/mock/faults", body={
            "key": KEY_A, "faults": "500", "route": "/v1/chat/completions"})
        self.assertEqual(status, 200, body)
        i = [0]

        def degraded():
            node = c.nodes[i[0] % 3]
            i[0] += 1
            status, _, body = c.chat(token, node=node)
            self.assertEqual(status, 200, body)  # failover hides the failures
            h = c.health("key-a")
            return h if h["status"] == "degraded" else None
        h = wait_until(degraded, timeout=60, what="key-a degraded by traffic", alive=c.nodes[0])
        self.assertEqual(h["last_error_class"], "error_rate")
        self.assertEqual(h["history"][-1]["source"], "traffic")
        self.assertEqual(h["canary_streak"], 0)  # successes count from the change
        # Canaries succeed, but the last minute's traffic is still bad.
        h = c.wait_health("key-a", "two good probes since",
                          lambda h: h.get("canary_streak", 0) >= 2)
        self.assertEqual(h["status"], "degraded")
        self.assertEqual(h["last_canary_result"], "ok")



if __name__ == "__main__":
    unittest.main()
