"""The control API under /admin/v1/ (docs/control-api.md) on a one-node
cluster: authentication and permissions, denials in the audit chain, CRUD
with versions and preconditions, keys and their secrets, tokens, the audit
chain and its verification.

Each test starts its own keyplaned, which bootstraps a one-voter cluster and
writes its first admin token to DATA_DIR/admin.token. Every wait is a
condition with a deadline; nothing sleeps.
"""

import hashlib
import json
import os
import secrets
import socket
import stat
import unittest
import urllib.parse
import zlib

from harness import (Harness, RawConn, assert_no_secrets, http, log_lines, metric_value,
                     wait_until)

ADMIN = "/admin/v1"
B32 = "abcdefghijklmnopqrstuvwxyz234567"
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_1 = "sk-test-adminFIRSTsecretAAAAAAAAAA1111"
SECRET_2 = "sk-test-adminSECONDsecretBBBBBBBBBB2222"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token_text(token_id=None, secret=None):
    """A well-formed token (right shape and checksum, docs/tokens.md) that
    the registry does not know, or with @token_id and a wrong secret."""
    tid = token_id or "".join(secrets.choice(B32) for _ in range(12))
    body = "kp_" + tid + "_" + (secret or "".join(secrets.choice(B62) for _ in range(32)))
    v, check = zlib.crc32(body.encode()), ""
    for _ in range(6):
        check, v = B62[v % 62] + check, v // 62
    return body + check


def fingerprint(secret):
    return "fp_" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class Api:
    """Requests to one node's control port, keeping every answer body so a
    test can check that no secret ever came back."""

    def __init__(self, node):
        self.node = node
        self.bodies = []

    def call(self, method, path, body=None, token=None, headers=None, admin=True):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        elif admin:
            hdrs["Authorization"] = "Bearer " + self.node.admin_token
        status, h, data = http(method, self.node.control_url + path, body=body, headers=hdrs)
        self.bodies.append(data)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return status, h, parsed

    def ok(self, method, path, body=None, want=200, **kw):
        status, h, v = self.call(method, path, body, **kw)
        if status != want:
            raise AssertionError(f"{method} {path} -> {status}, wanted {want}: {v}")
        return v, h

    def error(self, method, path, body=None, want=400, **kw):
        status, h, v = self.call(method, path, body, **kw)
        if status != want:
            raise AssertionError(f"{method} {path} -> {status}, wanted {want}: {v}")
        if not (isinstance(v, dict) and isinstance(v.get("error"), dict)):
            raise AssertionError(f"{method} {path}: not an error body: {v}")
        if "x-request-id" not in h:
            raise AssertionError(f"{method} {path}: no X-Request-Id")
        return v["error"], h

    def audit(self, **query):
        v, _ = self.ok("GET", f"{ADMIN}/audit?" + urllib.parse.urlencode(query))
        return v


class AdminTestBase(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        env = {"KEYPLANE_MASTER_KEY": secrets.token_hex(32)}
        self.node = self.h.start_node(args=["--raft-listen", f"127.0.0.1:{free_port()}"],
                                      env=env)
        wait_until(lambda: self.node.admin_token, what="DATA_DIR/admin.token", alive=self.node)
        self.api = Api(self.node)
        wait_until(lambda: self.api.call("GET", f"{ADMIN}/whoami")[0] == 200,
                   what="the bootstrap admin token to work", alive=self.node)

    def new_token(self, role, **fields):
        v, _ = self.api.ok("POST", f"{ADMIN}/tokens", {"role": role, **fields}, want=201)
        return v["token"], v["item"]

    def provider(self, pid="openai"):
        self.api.ok("PUT", f"{ADMIN}/providers/{pid}",
                    {"kind": "openai", "base_url": "https://api.openai.com/v1"}, want=201)


class AuthTest(AdminTestBase):
    def test_admin_token_file_is_private(self):
        path = os.path.join(self.node.data_dir, "admin.token")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertTrue(text.endswith("\n"))
        self.assertRegex(text.strip(), r"^kp_[a-z2-7]{12}_[0-9A-Za-z]{38}$")

    def test_missing_malformed_and_unknown_tokens_are_401(self):
        """Every bad credential is a 401 that never quotes it. Only a token of
        this registry (here the admin's id with a wrong secret) is written to
        the audit chain; anonymous ones are counted in a metric, so they can
        neither fill the replicated log nor push real entries out of it."""
        api = self.api
        cases = [
            ("rid-none", None, "missing_token"),
            ("rid-basic", "Basic dXNlcjpwdw==", "malformed_token"),
            ("rid-garbage", "Bearer kp_not_a_token", "malformed_token"),
            ("rid-unknown", "Bearer " + token_text(), "invalid_token"),
        ]
        admin_id = "tk_" + self.node.admin_token[3:15]
        wrong = token_text(token_id=self.node.admin_token[3:15])
        cases.append(("rid-wrong-secret", "Bearer " + wrong, "invalid_token"))
        before = metric_value(self.node.metrics(), "keyplane_admin_denied_unaudited_total") or 0
        for rid, auth, code in cases:
            hdrs = {"X-Request-Id": rid}
            if auth is not None:
                hdrs["Authorization"] = auth
            err, h = api.error("GET", f"{ADMIN}/providers", headers=hdrs, want=401, admin=False)
            self.assertEqual(err["type"], "unauthorized")
            self.assertEqual(err["code"], code, err)
            self.assertEqual(h["x-request-id"], rid)
            if auth is not None:
                self.assertNotIn(auth.split(" ", 1)[1], err["message"])

        def denied():
            return {e.get("request_id"): e for e in api.audit(action="denied")["entries"]}

        seen = wait_until(lambda: (lambda d: d if "rid-wrong-secret" in d else None)(denied()),
                          what="the wrong-secret 401 in the audit chain")
        e = seen["rid-wrong-secret"]
        self.assertEqual(e["actor"], admin_id)
        self.assertEqual(e["target"], f"GET {ADMIN}/providers")
        self.assertTrue(e["result"].startswith("refused: 401 "), e)
        self.assertEqual(e["source"], "api")
        for rid in ("rid-none", "rid-basic", "rid-garbage", "rid-unknown"):
            self.assertNotIn(rid, seen)
        after = metric_value(self.node.metrics(), "keyplane_admin_denied_unaudited_total")
        self.assertEqual(after - before, 4)
        self.assertNotIn(wrong, json.dumps(list(seen.values())))

    def test_auditor_lacks_change_and_is_audited(self):
        api = self.api
        token, item = self.new_token("auditor", name="audit team")
        self.assertEqual(item["role"], "auditor")
        err, _ = api.error("PUT", f"{ADMIN}/providers/p1",
                           {"kind": "openai", "base_url": "https://api.openai.com/v1"},
                           token=token, headers={"X-Request-Id": "rid-auditor-put"}, want=403)
        self.assertEqual(err["type"], "forbidden")
        self.assertIn("lacks permission change", err["message"])
        self.assertIn(item["id"], err["message"])
        self.assertNotIn(token, err["message"])
        api.error("GET", f"{ADMIN}/providers/p1", token=token, want=404)
        v, _ = api.ok("GET", f"{ADMIN}/whoami", token=token)
        self.assertEqual(v, {"token_id": item["id"], "role": "auditor",
                             "permissions": ["read_audit", "read_registry", "read_alerts"]})
        api.ok("GET", f"{ADMIN}/audit", token=token)

        def entry():
            for e in api.audit(action="denied", actor=item["id"])["entries"]:
                if e.get("request_id") == "rid-auditor-put":
                    return e
            return None

        e = wait_until(entry, what="the 403 in the audit chain")
        self.assertEqual(e["result"], "refused: 403 lacks permission change")
        self.assertEqual(e["role"], "auditor")
        self.assertEqual(e["target"], f"PUT {ADMIN}/providers/p1")

    def test_operator_operates_pools_but_cannot_change(self):
        api = self.api
        self.provider()
        api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai"}, want=201)
        token, _ = self.new_token("operator")
        api.ok("PUT", f"{ADMIN}/pools/main", {"members": [{"key": "k1"}]}, token=token, want=201)
        api.ok("POST", f"{ADMIN}/keys/k1/disable", token=token)
        err, _ = api.error("POST", f"{ADMIN}/keys/k1/revoke", token=token, want=403)
        self.assertIn("lacks permission change", err["message"])
        err, _ = api.error("GET", f"{ADMIN}/audit", token=token, want=403)
        self.assertIn("lacks permission read_audit", err["message"])

    def test_denial_audits_are_limited_and_counted(self):
        """A flood of denials for a real token: at most 20 a second are
        audited, the rest counted and logged, none lost from the books."""
        token, item = self.new_token("auditor")
        n = 150
        req = (f"PUT {ADMIN}/tenants/t HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Length: 2\r\nX-Request-Id: flood\r\n\r\n{{}}").encode()
        before = metric_value(self.node.metrics(), "keyplane_admin_denied_unaudited_total") or 0
        with RawConn(self.node.control_addr, timeout=60) as conn:
            conn.send(req * n)
            for _ in range(n):
                self.assertEqual(conn.read_response().status, 403)

        def accounted():
            audited = sum(e.get("request_id") == "flood" for e in
                          self.api.audit(action="denied", limit=1000)["entries"])
            unaudited = (metric_value(self.node.metrics(),
                                      "keyplane_admin_denied_unaudited_total") or 0) - before
            return (audited, unaudited) if audited + unaudited == n else None

        audited, unaudited = wait_until(accounted, what="every denial audited or counted")
        self.assertGreaterEqual(audited, 20)
        self.assertGreater(unaudited, 0)
        warns = [line for line in log_lines(self.node.log_path)
                 if line.get("level") == "warn" and "not audited" in line.get("msg", "")]
        self.assertTrue(warns)


class RegistryTest(AdminTestBase):
    def test_lists_come_in_pages(self):
        api = self.api
        for i in range(505):
            api.ok("PUT", f"{ADMIN}/tenants/t{i:04d}", {}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/tenants")
        self.assertEqual((len(v["items"]), v["next"]), (500, "t0499"))
        seen, after = [], None
        while True:
            q = "?limit=200" + (f"&after={after}" if after else "")
            v, _ = api.ok("GET", f"{ADMIN}/tenants{q}")
            seen += [t["id"] for t in v["items"]]
            after = v.get("next")
            if after is None:
                break
        self.assertEqual(seen, [f"t{i:04d}" for i in range(505)])
        api.error("GET", f"{ADMIN}/tenants?limit=0", want=400)
        # clusterctl follows the pages.
        out = self.h.run(["clusterctl", "--server", self.node.control_url, "get", "tenants",
                          "-o", "json"], env={"KEYPLANE_TOKEN": self.node.admin_token})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(json.loads(out.stdout)["items"]), 505)

    def test_crud_versions_and_preconditions(self):
        api = self.api
        v, h = api.ok("PUT", f"{ADMIN}/tenants/acme", {"display_name": "Acme"}, want=201)
        self.assertEqual((v["id"], v["kind"], v["version"]), ("acme", "tenant", 1))
        self.assertEqual(h["etag"], '"1"')
        v, h = api.ok("GET", f"{ADMIN}/tenants/acme")
        self.assertEqual((v["display_name"], h["etag"]), ("Acme", '"1"'))
        v, h = api.ok("PUT", f"{ADMIN}/tenants/acme", {"display_name": "Acme Inc"})
        self.assertEqual((v["version"], h["etag"]), (2, '"2"'))
        err, _ = api.error("PUT", f"{ADMIN}/tenants/acme", {}, headers={"If-Match": '"1"'},
                           want=409)
        self.assertEqual((err["type"], err["code"]), ("conflict", "version_conflict"))
        v, _ = api.ok("PUT", f"{ADMIN}/tenants/acme", {"display_name": "A"},
                      headers={"If-Match": "2"})
        self.assertEqual(v["version"], 3)
        api.error("PUT", f"{ADMIN}/tenants/acme", {}, headers={"If-None-Match": "*"}, want=409)
        api.error("PUT", f"{ADMIN}/tenants/acme", {}, headers={"If-Match": "three"}, want=400)
        api.ok("PUT", f"{ADMIN}/tenants/beta", {}, headers={"If-None-Match": "*"}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/tenants?consistent=true")
        self.assertEqual([t["id"] for t in v["items"]], ["acme", "beta"])
        self.assertGreater(v["applied_index"], 0)

        self.provider()
        v, _ = api.ok("GET", f"{ADMIN}/providers/openai")
        self.assertEqual(v["base_url"], "https://api.openai.com/v1")
        api.ok("PUT", f"{ADMIN}/keys/k2", {"provider": "openai", "name": "second"}, want=201)
        api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "models": ["gpt-4o"]},
               want=201)
        v, _ = api.ok("GET", f"{ADMIN}/keys")
        self.assertEqual([k["id"] for k in v["items"]], ["k1", "k2"])
        err, _ = api.error("PUT", f"{ADMIN}/pools/main",
                           {"members": [{"key": "k1", "weight": 0}]})
        self.assertEqual(err["field"], "members[0].weight")
        self.assertEqual(err["type"], "invalid_request")
        err, _ = api.error("PUT", f"{ADMIN}/keys/k3", {"provider": "openai", "color": "red"})
        self.assertIn("color", err["message"])
        api.ok("PUT", f"{ADMIN}/pools/main",
               {"strategy": "weighted", "members": [{"key": "k1", "weight": 10}]}, want=201)
        api.ok("PUT", f"{ADMIN}/projects/search", {"tenant": "acme"}, want=201)
        api.ok("PUT", f"{ADMIN}/policies/acme-daily",
               {"scope_kind": "tenant", "scope_target": "acme",
                "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": 10**9}]},
               want=201)
        v, h = api.ok("PUT", f"{ADMIN}/prices/vendor%2Fmodel-x",
                      {"input_per_mtok": 150000000, "output_per_mtok": 600000000}, want=201)
        self.assertEqual(v["id"], "vendor/model-x")
        v, _ = api.ok("GET", f"{ADMIN}/prices/vendor%2Fmodel-x")
        self.assertEqual(v["output_per_mtok"], 600000000)

        err, _ = api.error("GET", f"{ADMIN}/pools/nope", want=404)
        self.assertEqual(err["type"], "not_found")
        api.error("DELETE", f"{ADMIN}/pools/nope", want=404)
        api.error("GET", f"{ADMIN}/gizmos", want=404)
        err, h = api.error("POST", f"{ADMIN}/tenants/acme", want=405)
        self.assertEqual(err["type"], "method_not_allowed")
        self.assertIn("PUT", h["allow"])
        self.assertIn("DELETE", h["allow"])

        err, _ = api.error("DELETE", f"{ADMIN}/keys/k1", want=409)
        self.assertIn("pool 'main'", err["message"])
        v, _ = api.ok("DELETE", f"{ADMIN}/pools/main")
        self.assertEqual(v, {"deleted": "main"})
        api.ok("DELETE", f"{ADMIN}/keys/k1")
        api.error("GET", f"{ADMIN}/keys/k1", want=404)
        api.error("DELETE", f"{ADMIN}/tenants/acme", want=409)  # project search refers to it
        api.ok("DELETE", f"{ADMIN}/policies/acme-daily")
        api.ok("DELETE", f"{ADMIN}/projects/search")
        api.ok("DELETE", f"{ADMIN}/tenants/acme", headers={"If-Match": '"3"'})
        api.ok("DELETE", f"{ADMIN}/prices/vendor%2Fmodel-x")

        v, _ = api.ok("GET", f"{ADMIN}/members")
        self.assertEqual(len(v["items"]), 1)
        self.assertIn("node_id", v["items"][0])


class PriceTableTest(AdminTestBase):
    """GET /admin/v1/price-table: the prices that apply (docs/registry.md,
    "Prices"), next to /admin/v1/prices, which stays the registry's own."""

    def test_defaults_and_overrides_merged_and_sorted(self):
        api = self.api
        v, _ = api.ok("GET", f"{ADMIN}/price-table")
        models = [i["model"] for i in v["items"]]
        self.assertEqual(models, sorted(models))
        self.assertTrue({"gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "mistral-large-latest",
                         "deepseek-chat"} <= set(models))
        self.assertEqual({i["source"] for i in v["items"]}, {"default"})
        gpt4o = next(i for i in v["items"] if i["model"] == "gpt-4o")
        self.assertEqual(gpt4o, {"model": "gpt-4o", "input_per_mtok": 2_500_000_000,
                                 "cached_input_per_mtok": 1_250_000_000,
                                 "output_per_mtok": 10_000_000_000, "request_fee": 0,
                                 "source": "default"})
        # The registry lists only its own entities.
        v, _ = api.ok("GET", f"{ADMIN}/prices")
        self.assertEqual(v["items"], [])

        # An override replaces the default of that name; an addition joins.
        api.ok("PUT", f"{ADMIN}/prices/gpt-4o", {"input_per_mtok": 1, "output_per_mtok": 2},
               want=201)
        api.ok("PUT", f"{ADMIN}/prices/vendor%2Fmodel-x", {"input_per_mtok": 3}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/price-table")
        rows = {i["model"]: i for i in v["items"]}
        self.assertEqual(len(rows), len(v["items"]), "one row per model")
        self.assertEqual((rows["gpt-4o"]["source"], rows["gpt-4o"]["input_per_mtok"]),
                         ("registry", 1))
        self.assertEqual(rows["vendor/model-x"]["source"], "registry")
        self.assertEqual(rows["gpt-4o-mini"]["source"], "default")
        v, _ = api.ok("GET", f"{ADMIN}/prices")
        self.assertEqual([i["id"] for i in v["items"]], ["gpt-4o", "vendor/model-x"])

        # Pages, as the registry's lists have them.
        page, _ = api.ok("GET", f"{ADMIN}/price-table?limit=5")
        self.assertEqual([i["model"] for i in page["items"]], sorted(rows)[:5])
        self.assertEqual(page["next"], sorted(rows)[4])
        page, _ = api.ok("GET", f"{ADMIN}/price-table?limit=5000&after=" +
                         urllib.parse.quote(sorted(rows)[4]))
        self.assertEqual([i["model"] for i in page["items"]], sorted(rows)[5:])
        self.assertNotIn("next", page)
        api.error("GET", f"{ADMIN}/price-table?limit=0")

    def test_one_model_resolves_dated_names(self):
        api = self.api
        v, _ = api.ok("GET", f"{ADMIN}/price-table/gpt-4o-mini-2024-07-18")
        self.assertEqual((v["model"], v["source"], v["requested"]),
                         ("gpt-4o-mini", "default", "gpt-4o-mini-2024-07-18"))
        v, _ = api.ok("GET", f"{ADMIN}/price-table/models%2Fgemini-2.5-flash")
        self.assertEqual(v["model"], "gemini-2.5-flash")
        api.ok("PUT", f"{ADMIN}/prices/claude-sonnet-4-5", {"input_per_mtok": 7}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/price-table/claude-sonnet-4-5-20250929")
        self.assertEqual((v["model"], v["source"], v["input_per_mtok"]),
                         ("claude-sonnet-4-5", "registry", 7))
        err, _ = api.error("GET", f"{ADMIN}/price-table/llama-3-70b", want=404)
        self.assertIn("no price for model 'llama-3-70b'", err["message"])
        api.error("GET", f"{ADMIN}/price-table/gpt-4", want=404)

    def test_a_price_may_be_named_like_a_route(self):
        """The table has its own route, so no model name collides with it."""
        api = self.api
        api.ok("PUT", f"{ADMIN}/prices/effective", {"input_per_mtok": 5}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/prices/effective")
        self.assertEqual((v["id"], v["input_per_mtok"]), ("effective", 5))
        api.ok("PUT", f"{ADMIN}/prices/price-table", {"input_per_mtok": 6}, want=201)
        v, _ = api.ok("GET", f"{ADMIN}/price-table")
        self.assertIn("items", v)
        self.assertEqual({i["model"]: i["source"] for i in v["items"]}["price-table"], "registry")

    def test_read_registry_permission(self):
        finance, _ = self.new_token("finance")
        err, _ = self.api.error("GET", f"{ADMIN}/price-table", token=finance, want=403)
        self.assertIn("read_registry", err["message"])
        auditor, _ = self.new_token("auditor")
        self.api.ok("GET", f"{ADMIN}/price-table/gpt-4o", token=auditor)


class KeyTest(AdminTestBase):
    def test_key_secrets_are_sealed_rotated_retired_and_never_shown(self):
        api = self.api
        self.provider()
        v, h = api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "secret": SECRET_1},
                      want=201)
        self.assertEqual(h["etag"], f'"{v["version"]}"')
        self.assertEqual(v["secrets"], [{"version": 1, "fingerprint": fingerprint(SECRET_1),
                                         "last4": SECRET_1[-4:], "state": "primary",
                                         "retire_after_ms": 0}])
        # The same PUT again keeps the secret it already has.
        v, _ = api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "secret": SECRET_1})
        self.assertEqual(len(v["secrets"]), 1)
        v, _ = api.ok("GET", f"{ADMIN}/keys")
        self.assertEqual(v["items"][0]["secrets"][0]["fingerprint"], fingerprint(SECRET_1))

        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/secret",
                      {"secret": SECRET_2, "grace_seconds": 60})
        states = {s["version"]: s["state"] for s in v["secrets"]}
        self.assertEqual(states, {1: "previous", 2: "primary"})
        self.assertGreater(v["secrets"][0]["retire_after_ms"], 0)
        self.assertEqual(v["secrets"][1]["last4"], SECRET_2[-4:])
        err, _ = api.error("POST", f"{ADMIN}/keys/k1/secrets/2/retire", want=409)
        self.assertIn("primary", err["message"])
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/secrets/1/retire")
        self.assertEqual({s["version"]: s["state"] for s in v["secrets"]},
                         {1: "retired", 2: "primary"})

    def test_previous_secret_retires_when_its_grace_period_ends(self):
        api = self.api
        self.provider()
        api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "secret": SECRET_1}, want=201)
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/secret", {"secret": SECRET_2,
                                                          "grace_seconds": 1})
        self.assertEqual({s["version"]: s["state"] for s in v["secrets"]},
                         {1: "previous", 2: "primary"})

        def retired():
            key, _ = api.ok("GET", f"{ADMIN}/keys/k1")
            return {s["version"]: s["state"] for s in key["secrets"]} == \
                {1: "retired", 2: "primary"}
        # The leader's sweep runs every 5 s.
        wait_until(retired, timeout=30, what="version 1 retired by the leader's sweep")
        entries = api.audit(target="k1", action="retire_key_secret")["entries"]
        self.assertEqual([e["actor"] for e in entries], ["system"])
        api.error("POST", f"{ADMIN}/keys/k1/secrets/9/retire", want=404)
        api.error("POST", f"{ADMIN}/keys/k1/secrets/x/retire", want=400)
        err, _ = api.error("POST", f"{ADMIN}/keys/k1/secret", {"secret": SECRET_1}, want=409)
        self.assertNotIn(SECRET_1, json.dumps(err))

        for bad in ("", "two\nlines-" + SECRET_1, 12345, "x" * 5000):
            err, _ = api.error("POST", f"{ADMIN}/keys/k1/secret", {"secret": bad})
            self.assertEqual(err["field"], "secret")
        err, _ = api.error("POST", f"{ADMIN}/keys/k1/secret",
                           {"secret": SECRET_2 + "x", "grace_seconds": -1})
        self.assertEqual(err["field"], "grace_seconds")
        api.error("POST", f"{ADMIN}/keys/nokey/secret", {"secret": SECRET_2}, want=404)

        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/disable")
        self.assertEqual(v["status"], "disabled")
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/enable")
        self.assertEqual(v["status"], "active")
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/revoke")
        self.assertEqual(v["status"], "revoked")
        self.assertTrue(all(s["state"] == "retired" for s in v["secrets"]))
        err, _ = api.error("PUT", f"{ADMIN}/keys/k1", {"provider": "openai"}, want=409)
        self.assertIn("revoked", err["message"])

        got = api.audit(action="add_key_secret", target="k1")["entries"]
        self.assertEqual([e["result"].split(",")[0] for e in got],
                         ["ok (version 1", "ok (version 2",
                          "refused: fingerprint: already key 'k1' version 1"])
        for body in api.bodies:
            self.assertNotIn(SECRET_1.encode(), body)
            self.assertNotIn(SECRET_2.encode(), body)
        self.node.stop()
        assert_no_secrets([self.h.log_dir, self.node.data_dir], [SECRET_1, SECRET_2])

    def test_rotation_without_grace_retires_the_old_secret_at_once(self):
        api = self.api
        self.provider()
        api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "secret": SECRET_1}, want=201)
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/secret", {"secret": SECRET_2,
                                                          "grace_seconds": 0})
        self.assertEqual({s["version"]: s["state"] for s in v["secrets"]},
                         {1: "retired", 2: "primary"})

    def test_previous_secret_retires_when_its_grace_period_ends(self):
        api = self.api
        self.provider()
        api.ok("PUT", f"{ADMIN}/keys/k1", {"provider": "openai", "secret": SECRET_1}, want=201)
        v, _ = api.ok("POST", f"{ADMIN}/keys/k1/secret", {"secret": SECRET_2,
                                                          "grace_seconds": 1})
        self.assertEqual({s["version"]: s["state"] for s in v["secrets"]},
                         {1: "previous", 2: "primary"})

        def retired():
            key, _ = api.ok("GET", f"{ADMIN}/keys/k1")
            return {s["version"]: s["state"] for s in key["secrets"]} == \
                {1: "retired", 2: "primary"}
        # The leader's sweep runs every 5 s.
        wait_until(retired, timeout=30, what="version 1 retired by the leader's sweep")
        entries = api.audit(target="k1", action="retire_key_secret")["entries"]
        self.assertEqual([e["actor"] for e in entries], ["system"])


class TokenTest(AdminTestBase):
    def test_tokens_create_disable_delete(self):
        api = self.api
        token, item = self.new_token("operator", name="ops", models=["gpt-4o*"])
        shown = len(api.bodies)  # the answers before this one showed the token once
        self.assertRegex(token, r"^kp_[a-z2-7]{12}_[0-9A-Za-z]{38}$")
        self.assertEqual(item["id"], "tk_" + token[3:15])
        self.assertEqual(item["tenant"], "*")
        self.assertNotIn("hash", item)
        v, _ = api.ok("GET", f"{ADMIN}/tokens")
        ids = [t["id"] for t in v["items"]]
        self.assertEqual(ids, sorted(ids))
        self.assertIn(item["id"], ids)
        self.assertTrue(all("hash" not in t for t in v["items"]))
        v, h = api.ok("GET", f"{ADMIN}/tokens/{item['id']}")
        self.assertEqual(v["name"], "ops")
        self.assertNotIn(token.encode(), b"".join(api.bodies[shown:]))

        v, _ = api.ok("GET", f"{ADMIN}/whoami", token=token)
        self.assertEqual(v["role"], "operator")
        v, _ = api.ok("POST", f"{ADMIN}/tokens/{item['id']}/disable")
        self.assertTrue(v["disabled"])
        err, _ = api.error("GET", f"{ADMIN}/whoami", token=token, want=401)
        self.assertEqual(err["code"], "disabled_token")
        v, _ = api.ok("DELETE", f"{ADMIN}/tokens/{item['id']}")
        self.assertEqual(v, {"deleted": item["id"]})
        api.error("GET", f"{ADMIN}/tokens/{item['id']}", want=404)
        api.error("GET", f"{ADMIN}/whoami", token=token, want=401)

        err, _ = api.error("POST", f"{ADMIN}/tokens", {"role": "superuser"})
        self.assertEqual(err["field"], "role")
        err, _ = api.error("POST", f"{ADMIN}/tokens", {"role": "app", "tenant": "nobody"})
        self.assertEqual(err["field"], "tenant")
        err, _ = api.error("POST", f"{ADMIN}/tokens", {"role": "app", "colour": 1})
        self.assertEqual(err["field"], "colour")
        api.error("PUT", f"{ADMIN}/tokens/{item['id']}", {"role": "app"}, want=405)

        expired, _ = self.new_token("auditor", expires_at_ms=1)
        err, _ = api.error("GET", f"{ADMIN}/whoami", token=expired, want=401)
        self.assertEqual(err["code"], "expired_token")


class AuditTest(AdminTestBase):
    def test_audit_lists_filters_and_verifies(self):
        api = self.api
        admin_id = "tk_" + self.node.admin_token[3:15]
        for i in range(3):
            api.ok("PUT", f"{ADMIN}/tenants/t{i}", {}, headers={"X-Request-Id": f"rid-t{i}"},
                   want=201)
        v = api.audit(action="put_tenant", actor=admin_id)
        self.assertEqual([e["request_id"] for e in v["entries"]], ["rid-t0", "rid-t1", "rid-t2"])
        self.assertEqual([e["target"] for e in v["entries"]], ["t0", "t1", "t2"])
        self.assertTrue(all(e["result"] == "ok" and e["role"] == "admin" for e in v["entries"]))
        self.assertEqual(v["first_seq"], 1)
        last = v["entries"][-1]
        self.assertEqual(v["head"]["seq"], last["seq"])
        self.assertEqual(v["head"]["hash"], last["hash"])
        v = api.audit(action="put_tenant", limit=1)
        self.assertEqual(len(v["entries"]), 1)
        page = api.audit(action="put_tenant", after_seq=v["entries"][0]["seq"])
        self.assertEqual([e["target"] for e in page["entries"]], ["t1", "t2"])
        self.assertEqual(api.audit(target="t1")["entries"][0]["action"], "put_tenant")
        self.assertEqual(api.audit(since_ms=last["ts"] + 1)["entries"], [])
        err, _ = api.error("GET", f"{ADMIN}/audit?limit=5000")
        self.assertEqual(err["field"], "limit")

        v, _ = api.ok("GET", f"{ADMIN}/audit/verify")
        self.assertTrue(v["ok"], v)
        self.assertEqual(v["checked"], v["head"]["seq"])
        self.assertEqual(v["head"]["hash"], api.audit(limit=1000)["entries"][-1]["hash"])


if __name__ == "__main__":
    unittest.main()
