"""The rotation drill (`clusterctl drill rotate`, docs/clusterctl.md "drill").

Real keyplaned nodes (one, then three) and keyplane-mock as the provider,
a pool whose key-a (priority 1) serves first and key-b (priority 2) takes
over. The drill runs on key-a under its own traffic; the test checks its
report against what the cluster recorded:

  (a) one node: no client-visible error, failover to key-b, key-a back,
      the old secret retired; every drill request is in the gateway's
      usage events with the key the drill says served it, and no key-a
      event falls between the report's "old key unused after" and the
      enable; the audit chain has disable, rotate, retire, enable; the
      provider then refusing the old secret changes nothing;
  (b) three nodes, traffic spread over the three gateways: the same;
  (c) Ctrl-C during the observation: the drill still rotates and enables;
  (d) key-b failing while key-a is out: the errors are counted by class,
      as the gateways recorded them, and --fail-on-errors exits 1;
  (e) refusals: no --yes, a key outside the pool, a pool with one key, an
      unreadable app token file, a secret on the command line (exit 2);
      and a pool that never routes to the key (exit 1): nothing changed.

Every wait is on a condition; only the drill itself paces its traffic.
"""

import hashlib
import json
import os
import secrets
import signal
import subprocess
import unittest

from harness import Harness, assert_no_secrets, bin_path, http, timeout_scale, wait_until

ADMIN = "/admin/v1"
MASTER = secrets.token_hex(32)
CONFIG = {"workers": 1, "spool_seal_age_ms": "200ms"}
RAFT = {"election_timeout_ms": "400ms", "heartbeat_timeout_ms": "50ms"}
MODEL = "gpt-4o"
OLD_A = "sk-mock-drill-a-old-0001"
NEW_A = "sk-mock-drill-a-new-0002"
KEY_B = "sk-mock-drill-b-0003"


def fp(secret):
    return "fp_" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class Drill:
    """Nodes (n1 bootstraps, the others join), the mock provider, key-a and
    key-b in pool main, an app token in a file and the new secret in another."""

    def __init__(self, test, nodes=1, priorities=(1, 2)):
        self.test = test
        self.h = Harness(test)
        self.mock = self.h.start_mock()
        cfg = dict(CONFIG, **(RAFT if nodes > 1 else {}))
        n1 = self.h.start_node("n1", config=cfg, env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        self.token = n1.admin_token
        self.nodes = [n1]
        for i in range(2, nodes + 1):
            self.nodes.append(self.h.start_node(
                f"n{i}", config=cfg, args=["--join", n1.listen["control"]],
                env={"KEYPLANE_MASTER_KEY": MASTER}))
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": OLD_A})
        self.admin("PUT", "/keys/key-b", {"provider": "mock", "secret": KEY_B})
        self.admin("PUT", "/pools/main", {"members": [
            {"key": "key-a", "priority": priorities[0]},
            {"key": "key-b", "priority": priorities[1]}]})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.app = self.admin("POST", "/tokens", {"role": "app", "tenant": "acme",
                                                  "name": "drill", "pools": ["main"]})["token"]
        self.token_file = self.h.write_file("app.token", self.app + "\n")
        self.secret_file = self.h.write_file("new.key", NEW_A + "\n")
        for node in self.nodes:  # every gateway knows the token and the pool
            wait_until(lambda node=node: self.chat(node)[0] == 200,
                       what=f"a call through {node.name}'s gateway", alive=node)

    def admin(self, method, path, body=None, node=None):
        node = node or self.nodes[0]
        status, _, raw = node.control(method, ADMIN + path, body=body,
                                      headers={"Authorization": "Bearer " + self.token})
        assert status in (200, 201), (method, path, status, raw)
        return json.loads(raw) if raw else None

    def chat(self, node=None):
        node = node or self.nodes[0]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        status, headers, raw = http("POST", node.gateway_url + "/v1/chat/completions", body=body,
                                    headers={"Authorization": "Bearer " + self.app,
                                             "X-Keyplane-Pool": "main"}, timeout=60)
        return status, headers.get("x-keyplane-key"), raw

    def clusterctl(self, *args):
        return self.h.run(["clusterctl", "--server", self.nodes[0].control_url,
                           "--token", self.token, *args], timeout=120)

    def drill_args(self, key="key-a", pool="main", yes=True, gateways=None, observe="2s"):
        args = ["drill", "rotate", key, "--pool", pool, "--app-token-file", self.token_file,
                "--model", MODEL, "--rps", "20", "--observe", observe,
                "--secret-file", self.secret_file]
        for node in gateways or self.nodes[:1]:
            args += ["--gateway", node.gateway_url]
        return args + (["--yes"] if yes else [])

    def drill(self, *extra, **kw):
        return self.clusterctl(*self.drill_args(**kw), *extra)

    def mock_keys(self):
        return json.loads(http("GET", self.mock.url + "/mock/stats")[2])["keys"]

    def events(self, prefix):
        """The drill's usage events from every node's router."""
        out = []
        for node in self.nodes:
            got = self.admin("GET", "/usage/recent?limit=10000", node=node)["events"]
            out += [e for e in got if e.get("request_id", "").startswith(prefix + "-")]
        return out


class RotationDrillTest(unittest.TestCase):
    def check_drill(self, d, gateways):
        cp = d.drill("-o", "json", gateways=gateways)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        r = json.loads(cp.stdout)

        # What the clients saw.
        self.assertEqual(r["gateways"], len(gateways))
        self.assertEqual(r["errors"], 0, r)
        self.assertEqual(r["errors_by_class"], {})
        self.assertGreater(r["failover_requests"], 0, r)
        self.assertGreater(r["served_by"].get("key-b", 0), 0, r)
        self.assertTrue(r["key_back"], r)
        self.assertIsInstance(r["key_back_after_ms"], int)
        self.assertFalse(r["interrupted"])
        self.assertEqual(sum(r["served_by"].values()), r["requests"])
        self.assertGreaterEqual(r["old_key_unused_after_ms"], r["old_key_last_start_ms"])
        self.assertEqual(r["old_secret"], {"version": 1, "state": "retired"})
        self.assertEqual(r["new_secret"], {"version": 2, "state": "primary"})

        # The registry: key-a active again, v1 retired (blob erased), v2 primary.
        key = d.admin("GET", "/keys/key-a")
        self.assertEqual(key["status"], "active")
        self.assertEqual({s["version"]: s["state"] for s in key["secrets"]},
                         {1: "retired", 2: "primary"})

        # The gateways' usage events: every drill request, with the key the
        # drill says answered it; no key-a call between the moment the drill
        # says the old key was last used and the enable.
        events = wait_until(lambda: (lambda e: e if len(e) == r["requests"] else None)(
            d.events(r["request_id_prefix"])), what="a usage event per drill request")
        self.assertEqual({e["status"] for e in events}, {200})
        by_key = {}
        for e in events:
            by_key[e["key_id"]] = by_key.get(e["key_id"], 0) + 1
        self.assertEqual(by_key, r["served_by"])
        quiet_from = r["disable_sent_unix_ms"] + r["old_key_unused_after_ms"] + 2
        quiet_to = r["enable_sent_unix_ms"] - 1
        late = [e for e in events if e["key_id"] == "key-a" and quiet_from < e["time_ms"] < quiet_to]
        self.assertEqual(late, [], "key-a served while the drill says it was out")
        self.assertTrue(any(e["key_id"] == "key-a" and e["time_ms"] >= r["enable_sent_unix_ms"]
                            for e in events), "key-a served after the enable")

        # The audit chain: disable, the new secret, the old one retired, enable.
        entries = d.admin("GET", "/audit?target=key-a&limit=1000")["entries"]
        actions = [e["action"] for e in entries if e["ts"] >= r["disable_sent_unix_ms"]]
        self.assertEqual(actions, ["set_key_status", "add_key_secret", "retire_key_secret",
                                   "set_key_status"], entries)

        # The provider now refuses the old secret, as after a real leak: key-a
        # keeps serving, with the new one only, on every node (the drill saw it
        # back through every gateway).
        self.assertGreater(d.mock_keys().get(fp(NEW_A), 0), 0, "key-a used its new secret")
        status, _, raw = http("POST", d.mock.url + "/mock/faults",
                              body={"key": OLD_A, "faults": "401"})
        self.assertEqual(status, 200, raw)
        old_uses = d.mock_keys().get(fp(OLD_A), 0)
        for node in d.nodes:
            status, served_by, raw = d.chat(node)
            self.assertEqual((status, served_by), (200, "key-a"), raw)
        self.assertEqual(d.mock_keys().get(fp(OLD_A), 0), old_uses)

        # The table says the same, and nothing printed a secret or a token.
        assert_no_secrets([d.h.log_dir], [NEW_A, OLD_A, d.app])
        return r

    def test_a_drill_on_one_node(self):
        d = Drill(self)
        self.check_drill(d, d.nodes)

    def test_b_drill_on_three_nodes(self):
        d = Drill(self, nodes=3)
        self.check_drill(d, d.nodes)

    def test_c_table_output(self):
        d = Drill(self)
        cp = d.drill()
        self.assertEqual(cp.returncode, 0, cp.stderr)
        labels = [line.split("  ")[0] for line in cp.stdout.splitlines()]
        self.assertEqual(labels, ["KEY", "TRAFFIC", "CLIENT ERRORS", "DISABLE", "OLD KEY",
                                  "FAILOVER", "ROTATE", "BACK", "SERVED BY"], cp.stdout)
        self.assertIn("CLIENT ERRORS     0\n", cp.stdout)
        self.assertIn("secret v1 retired, v2 primary", cp.stdout)

    def test_d_ctrl_c_still_rotates_and_enables(self):
        d = Drill(self)
        argv = [bin_path("clusterctl"), "--server", d.nodes[0].control_url, "--token", d.token,
                *d.drill_args(observe="1h"), "-o", "json"]
        with open(os.path.join(d.h.log_dir, "drill.stdout.log"), "w+") as out, \
                open(os.path.join(d.h.log_dir, "drill.stderr.log"), "w+") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=d.h.env(), cwd=d.h.tmp)
            self.addCleanup(lambda: proc.poll() is not None or proc.kill())
            wait_until(lambda: d.admin("GET", "/keys/key-a")["status"] == "disabled",
                       what="the drill disabled key-a", alive=proc)
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(timeout=60 * timeout_scale()), 1)
            out.seek(0)
            err.seek(0)
            r = json.loads(out.read())
            self.assertIn("interrupted", err.read())
        self.assertTrue(r["interrupted"])
        self.assertTrue(r["key_back"], r)
        self.assertEqual(r["new_secret"], {"version": 2, "state": "primary"})
        key = d.admin("GET", "/keys/key-a")
        self.assertEqual(key["status"], "active")
        self.assertEqual({s["version"]: s["state"] for s in key["secrets"]},
                         {1: "retired", 2: "primary"})

    def test_e_errors_while_the_key_is_out(self):
        d = Drill(self)
        status, _, raw = http("POST", d.mock.url + "/mock/faults",
                              body={"key": KEY_B, "faults": "500",
                                    "route": "/v1/chat/completions"})
        self.assertEqual(status, 200, raw)
        cp = d.drill("--fail-on-errors", "-o", "json")
        self.assertEqual(cp.returncode, 1, cp.stderr)
        self.assertIn("--fail-on-errors", cp.stderr)
        r = json.loads(cp.stdout)
        self.assertGreater(r["errors"], 0, r)
        self.assertEqual(sum(r["errors_by_class"].values()), r["errors"])
        self.assertTrue(all(c[:1] == "5" for c in r["errors_by_class"]), r["errors_by_class"])
        self.assertEqual(r["failover_requests"], 0, r)
        self.assertTrue(r["key_back"], r)
        events = wait_until(lambda: (lambda e: e if len(e) == r["requests"] else None)(
            d.events(r["request_id_prefix"])), what="a usage event per drill request")
        self.assertEqual(len([e for e in events if e["status"] != 200]), r["errors"])


class RefusalTest(unittest.TestCase):
    def assert_unchanged(self, d):
        key = d.admin("GET", "/keys/key-a")
        self.assertEqual(key["status"], "active")
        self.assertEqual({s["version"]: s["state"] for s in key["secrets"]}, {1: "primary"})

    def test_refusals_change_nothing(self):
        d = Drill(self)
        d.admin("PUT", "/keys/key-c", {"provider": "mock", "secret": "sk-mock-drill-c-0004"})
        d.admin("PUT", "/pools/solo", {"members": [{"key": "key-a"}]})
        cases = [
            ("without --yes", dict(yes=False), "--yes"),
            ("a key outside the pool", dict(key="key-c"), "not a member of pool main"),
            ("a pool with one key", dict(pool="solo"), "no other active key"),
        ]
        for what, kw, message in cases:
            with self.subTest(what):
                cp = d.drill(**kw)
                self.assertEqual(cp.returncode, 2, cp.stderr)
                self.assertIn(message, cp.stderr)
        for extra, message in [(("--rps", "0"), "--rps"), (("--observe", "2h"), "--observe"),
                               (("--gateway", "ftp://x"), "--gateway")]:
            with self.subTest(extra=extra):
                cp = d.drill(*extra)
                self.assertEqual(cp.returncode, 2, cp.stderr)
                self.assertIn(message, cp.stderr)
        cp = d.clusterctl("drill", "rotate", "key-a", "--pool", "main", "--gateway",
                          d.nodes[0].gateway_url, "--app-token-file", d.h.path("missing"),
                          "--model", MODEL, "--yes")
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("cannot read --app-token-file", cp.stderr)
        cp = d.clusterctl("drill", "rotate", "key-a", "--secret", NEW_A, "--yes")
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertNotIn(NEW_A, cp.stderr + cp.stdout)
        self.assert_unchanged(d)
        # key-b is the only one to be there
        self.assertEqual(d.mock_keys().get(fp(NEW_A), 0), 0)

    def test_a_key_the_pool_never_routes_to(self):
        # key-b first: key-a would never serve, so there is nothing to measure.
        d = Drill(self, priorities=(2, 1))
        cp = d.drill()
        self.assertEqual(cp.returncode, 1, cp.stderr)
        self.assertIn("served none of the drill's calls", cp.stderr)
        self.assertIn("lowest priority value", cp.stderr)
        self.assert_unchanged(d)
        self.assertNotIn("set_key_status", [e["action"] for e in d.admin(
            "GET", "/audit?target=key-a&limit=1000")["entries"]])


if __name__ == "__main__":
    unittest.main()
