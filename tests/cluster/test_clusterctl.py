"""clusterctl as operators run it: usage errors, unreachable servers, the
status/health/metrics commands against a real keyplaned, the contexts file,
and the registry commands (get, put, delete, apply, keys, tokens, members,
cluster, leader, audit, whoami).

Answers a real node cannot give on demand (a 503 from /readyz, a 401 from the
status endpoint) come from a stub HTTP server on loopback that also records
what clusterctl sent, which is how the tests check the token handling. The
registry commands run against FakeControlPlane, an in-memory stand-in for
/admin/v1 (docs/control-api.md) that keeps versions and checks If-Match, so
the tests can check what clusterctl sends (paths, headers, bodies) and what
it makes of the answers; tests against a real keyplaned come with the
server. Every clusterctl run gets HOME and KEYPLANE_CONFIG_DIR inside the
harness's temporary directory, so no test reads or writes the real
~/.config/keyplane.
"""

import json
import os
import re
import socket
import stat
import threading
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Harness

TOKEN = "kp_test_0123456789abcdefSECRET"


class StubServer:
    """A loopback HTTP server answering GETs from a table
    {path: (status, body, content_type)} and recording the requests."""

    def __init__(self, testcase, routes):
        self.routes = routes
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, body, ctype = stub.routes.get(
                    self.path, (404, '{"error":{"message":"no route","type":"x","code":"y"}}',
                                "application/json"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        testcase.addCleanup(thread.join, 10)
        testcase.addCleanup(self.server.server_close)
        testcase.addCleanup(self.server.shutdown)

    def auth_headers(self):
        return [h.get("authorization") for _, h in self.requests]


def refusing_port(testcase):
    """A loopback port that refuses connections for the whole test: bound but
    not listening, so nothing else can take it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    testcase.addCleanup(sock.close)
    return sock.getsockname()[1]


class ApiError(Exception):
    def __init__(self, status, message, field=None, code="invalid"):
        super().__init__(message)
        self.status, self.message, self.field, self.code = status, message, field, code


class FakeControlPlane:
    """An in-memory stand-in for keyplaned's /admin/v1, faithful to
    docs/control-api.md where clusterctl depends on it: versions, ETag,
    If-Match and If-None-Match, JSON error bodies, keys and their secrets,
    tokens, members, cluster, audit. Pools must name existing keys, so an
    apply can fail half way. Records (method, raw path, headers, body) of
    every request in .requests."""

    KINDS = ("providers", "keys", "pools", "tenants", "projects", "policies", "prices",
             "alert-rules", "webhooks")
    OWN_KIND = ("providers", "alert-rules", "webhooks")

    def __init__(self, testcase, token=None):
        self.token = token
        self.requests = []
        self.store = {k: {} for k in self.KINDS + ("tokens", "members")}
        self.clock = 1_700_000_000_000
        self.audit = []
        self.audit_broken = None
        self.unavailable = None  # or the 503's code: "no_leader", "leadership_changed"
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append((method, self.path, headers, raw))
                extra = {}
                try:
                    with fake.lock:
                        status, body, extra = fake.dispatch(method, self.path, headers, raw)
                except ApiError as e:
                    status = e.status
                    body = {"error": {"message": e.message, "type": "x", "code": e.code}}
                    if e.field:
                        body["error"]["field"] = e.field
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer("GET")

            def do_PUT(self):
                self.answer("PUT")

            def do_POST(self):
                self.answer("POST")

            def do_DELETE(self):
                self.answer("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        testcase.addCleanup(thread.join, 10)
        testcase.addCleanup(self.server.server_close)
        testcase.addCleanup(self.server.shutdown)

    def writes(self):
        return [(m, p) for m, p, _, _ in self.requests if m != "GET"]

    def tick(self):
        self.clock += 1000
        return self.clock

    def check_version(self, kind, eid, cur, headers):
        if "if-match" in headers:
            want = int(headers["if-match"].strip('"'))
            if cur is None:
                raise ApiError(404, f"no {kind[:-1]} '{eid}'")
            if cur["version"] != want:
                raise ApiError(409, f"expect_version: {kind[:-1]} '{eid}' is at version "
                                    f"{cur['version']}, not {want}")
        if headers.get("if-none-match") == "*" and cur is not None:
            raise ApiError(409, f"{kind[:-1]} '{eid}' already exists")

    def get(self, kind, eid):
        if eid not in self.store[kind]:
            raise ApiError(404, f"no {kind[:-1]} '{eid}'")
        return self.store[kind][eid]

    def put(self, kind, eid, fields, headers):
        cur = self.store[kind].get(eid)
        self.check_version(kind, eid, cur, headers)
        for f in ("id", "version", "created_ms", "updated_ms") + (
                () if kind in self.OWN_KIND else ("kind",)) + (
                ("status", "secrets") if kind == "keys" else ()):
            if f in fields:
                raise ApiError(400, f"{f}: is set by the registry", f)
        secret = fields.pop("secret", None) if kind == "keys" else None
        if kind == "pools":
            for i, m in enumerate(fields.get("members", [])):
                if m.get("key") not in self.store["keys"]:
                    raise ApiError(400, f"members[{i}].key: no key '{m.get('key')}'",
                                   f"members[{i}].key")
            fields.setdefault("strategy", "priority")
            fields["members"] = [dict({"weight": 1, "priority": 0}, **m)
                                 for m in fields.get("members", [])]
        now = self.tick()
        ent = {"id": eid} if kind in self.OWN_KIND else {"id": eid, "kind": kind[:-1]}
        ent.update(fields)
        ent.update(version=cur["version"] + 1 if cur else 1,
                   created_ms=cur["created_ms"] if cur else now, updated_ms=now)
        if kind == "keys":
            ent["status"] = cur["status"] if cur else "active"
            ent["secrets"] = cur["secrets"] if cur else []
            if secret is not None:
                self.add_secret(ent, secret, 3600)
        self.store[kind][eid] = ent
        self.audit.append({"seq": len(self.audit) + 1, "ts": now, "actor": "tk_test",
                           "role": "admin", "action": "put_" + kind[:-1], "target": eid,
                           "result": "ok"})
        return (200 if cur else 201), ent

    def add_secret(self, key, secret, grace):
        for s in key["secrets"]:
            if s["state"] == "previous":
                s["state"] = "retired"
            if s["state"] == "primary":
                s["state"], s["retire_after_ms"] = "previous", self.clock + grace * 1000
        v = max([s["version"] for s in key["secrets"]] + [0]) + 1
        key["secrets"].append({"version": v, "fingerprint": f"sha256:{v:064x}",
                               "last4": secret[-4:], "state": "primary", "retire_after_ms": 0})

    def dispatch(self, method, raw_path, headers, raw):
        if self.unavailable:
            raise ApiError(503, "no leader", code=self.unavailable)
        if self.token is not None and headers.get("authorization") != "Bearer " + self.token:
            raise ApiError(401, "unknown token")
        parts = urllib.parse.urlsplit(raw_path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        segs = [urllib.parse.unquote(s) for s in parts.path.split("/")[3:]]
        body = json.loads(raw) if raw else None
        if (method, segs) == ("GET", ["whoami"]):
            return 200, {"token_id": "tk_test", "role": "admin",
                         "permissions": ["change", "read_registry"]}, {}
        if segs and segs[0] in self.KINDS + ("tokens", "members"):
            return self.registry(method, segs, headers, body)
        if (method, segs) == ("GET", ["cluster"]):
            return 200, self.cluster(), {}
        if (method, segs) == ("POST", ["cluster", "transfer"]):
            nid = (body or {}).get("node_id") or 2
            return 200, {"result": f"leadership moved to node {nid}"}, {}
        if (method, segs) == ("GET", ["audit"]):
            entries = [e for e in self.audit
                       if all(e[f] == query[f] for f in ("actor", "target", "action")
                              if f in query)]
            return 200, {"entries": entries[:int(query.get("limit", 100))],
                         "head": {"seq": len(self.audit), "hash": "ab" * 32},
                         "first_seq": 1}, {}
        if (method, segs) == ("GET", ["audit", "verify"]):
            if self.audit_broken:
                return 200, {"ok": False, "broken_seq": self.audit_broken,
                             "message": f"audit entry seq {self.audit_broken}: hash does not "
                                        "match the entry's contents"}, {}
            return 200, {"ok": True, "checked": len(self.audit),
                         "head": {"seq": len(self.audit), "hash": "ab" * 32}}, {}
        raise ApiError(404, "no route")

    def cluster(self):
        members = [{"node_id": m["node_id"], "name": m["id"], "address": m["address"],
                    "role": m["role"], "leader": m["node_id"] == 1, "term": 3,
                    "commit_index": 120, "applied_index": 119 + (m["node_id"] == 1),
                    "last_contact_ms": 12, "reachable": m["node_id"] != 3}
                   for m in sorted(self.store["members"].values(), key=lambda m: m["node_id"])]
        return {"cluster_id": "c-test", "leader": {"node_id": 1}, "this_node": 1,
                "term": 3, "commit_index": 120, "applied_index": 120, "members": members}

    def registry(self, method, segs, headers, body):
        kind = segs[0]
        if len(segs) == 1 and method == "GET":
            return 200, {"items": [self.store[kind][k] for k in sorted(self.store[kind])],
                         "applied_index": len(self.audit)}, {}
        if (kind, len(segs), method) == ("tokens", 1, "POST"):
            now = self.tick()
            tid = "tk_abcdefghijk" + "lmnopqrstu"[len(self.store["tokens"]) % 10]
            item = {"id": tid, "kind": "token", "role": body["role"],
                    "tenant": body.get("tenant", "*"), "projects": body.get("projects", []),
                    "features": body.get("features", []),
                    "pools": body.get("pools", []), "models": body.get("models", []),
                    "expires_at_ms": body.get("expires_at_ms", 0), "disabled": False,
                    "version": 1, "created_ms": now, "updated_ms": now}
            self.store["tokens"][tid] = item
            return 201, {"token": "kp_" + tid[3:] + "_" + "S" * 32 + "CHECK1", "item": item}, {}
        if (kind, len(segs), method) == ("members", 1, "POST"):
            now = self.tick()
            name = body.get("name") or f"n{body['node_id']}"
            m = {"id": name, "kind": "member", "node_id": body["node_id"],
                 "address": body["address"], "role": body.get("role", "voter"),
                 "meter": False, "version": 1, "created_ms": now, "updated_ms": now}
            self.store["members"][name] = m
            return 201, m, {}
        eid = segs[1]
        if len(segs) == 2 and method == "GET":
            ent = self.get(kind, eid)
            return 200, ent, {"ETag": f'"{ent["version"]}"'}
        if len(segs) == 2 and method == "PUT" and kind in self.KINDS:
            status, ent = self.put(kind, eid, dict(body), headers)
            return status, ent, {"ETag": f'"{ent["version"]}"'}
        if len(segs) == 2 and method == "DELETE":
            self.check_version(kind, eid, self.get(kind, eid), headers)
            del self.store[kind][eid]
            return 200, {"deleted": eid}, {}
        if kind == "keys" and method == "POST":
            key = self.get("keys", eid)
            if key["status"] == "revoked":
                raise ApiError(409, f"key '{eid}' is revoked")
            if segs[2:] == ["secret"]:
                self.add_secret(key, body["secret"], body.get("grace_seconds", 3600))
            elif segs[2:] in (["disable"], ["enable"], ["revoke"]):
                key["status"] = {"disable": "disabled", "enable": "active",
                                 "revoke": "revoked"}[segs[2]]
            elif len(segs) == 5 and segs[2] == "secrets" and segs[4] == "retire":
                [s] = [s for s in key["secrets"] if str(s["version"]) == segs[3]] or [None]
                if s is None:
                    raise ApiError(404, f"no secret version {segs[3]}")
                if s["state"] == "primary":
                    raise ApiError(409, "the primary cannot be retired: add a new one first")
                s["state"] = "retired"
            else:
                raise ApiError(404, "no route")
            key["version"] += 1
            return 200, key, {}
        if (kind, segs[2:], method) == ("tokens", ["disable"], "POST"):
            tok = self.get("tokens", eid)
            tok.update(disabled=True, version=tok["version"] + 1)
            return 200, tok, {}
        if (kind, segs[2:], method) == ("members", ["role"], "PUT"):
            m = self.get("members", eid)
            m.update(role=body["role"], version=m["version"] + 1)
            return 200, m, {}
        raise ApiError(404, "no route")


class ClusterctlTestCase(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.config_dir = self.h.path("ctl-config")

    def ctl(self, *args, env=None, config_dir=True, input=None):
        full_env = {"KEYPLANE_CONFIG_DIR": self.config_dir} if config_dir else {}
        full_env.update(env or {})
        return self.h.run(["clusterctl", *args], env=full_env, input=input)

    def assertExit(self, cp, code):
        self.assertEqual(cp.returncode, code,
                         f"exit {cp.returncode}, wanted {code}\nstdout: {cp.stdout}\n"
                         f"stderr: {cp.stderr}")


class UsageTest(ClusterctlTestCase):
    def test_usage_errors_exit_2(self):
        cases = [
            [],
            ["no-such-command"],
            ["--no-such-option", "status"],
            ["status", "--no-such-option"],
            ["status", "extra-argument"],
            ["--output", "xml", "status"],
            ["--server"],
            ["--server", "ftp://127.0.0.1:1", "status"],
            ["config"],
            ["config", "no-such-subcommand"],
            ["config", "use-context"],
            ["config", "use-context", "a", "b"],
            ["config", "set-context", "a"],
            ["config", "set-context", "a", "--server", "not-a-url"],
            ["config", "set-context", "a", "--server", "http://x", "--token", "t",
             "--token-file", "/nonexistent"],
        ]
        for args in cases:
            with self.subTest(args=args):
                cp = self.ctl(*args)
                self.assertExit(cp, 2)
                self.assertTrue(cp.stderr.strip(), "a message on stderr")

    def test_help_lists_commands(self):
        cp = self.ctl("--help")
        self.assertExit(cp, 0)
        for word in ("status", "health", "metrics", "config", "version", "--server", "--token",
                     "--output"):
            self.assertIn(word, cp.stdout)
        cp = self.ctl("config", "--help")
        self.assertExit(cp, 0)
        for word in ("use-context", "set-context", "get-contexts"):
            self.assertIn(word, cp.stdout)
        self.assertExit(self.ctl("status", "--help"), 0)

    def test_version(self):
        cp = self.ctl("version")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"clusterctl \d+\.\d+\.\d+")
        cp = self.ctl("-o", "json", "version")
        self.assertExit(cp, 0)
        self.assertRegex(json.loads(cp.stdout)["clusterctl"]["version"], r"^\d+\.\d+\.\d+")


class UnreachableTest(ClusterctlTestCase):
    def test_unreachable_server_exits_3_with_a_helpful_message(self):
        url = f"http://127.0.0.1:{refusing_port(self)}"
        for command in ("status", "health", "metrics"):
            with self.subTest(command=command):
                cp = self.ctl("--server", url, command)
                self.assertExit(cp, 3)
                self.assertIn(url, cp.stderr)
                self.assertIn("--server", cp.stderr)
                self.assertIn("start keyplaned", cp.stderr)

    def test_message_names_where_the_server_came_from(self):
        url = f"http://127.0.0.1:{refusing_port(self)}"
        cp = self.ctl("status", env={"KEYPLANE_SERVER": url})
        self.assertExit(cp, 3)
        self.assertIn(url, cp.stderr)
        self.assertIn("KEYPLANE_SERVER", cp.stderr)


class StubServerTest(ClusterctlTestCase):
    """What clusterctl does with answers a healthy node does not give."""

    def test_health_not_ready_exits_1_and_says_why(self):
        stub = StubServer(self, {"/readyz": (503, '{"status":"draining"}', "application/json")})
        cp = self.ctl("--server", stub.url, "health")
        self.assertExit(cp, 1)
        self.assertRegex(cp.stdout, r"not ready.*503.*draining")

    def test_refused_status_exits_1_and_never_prints_the_token(self):
        stub = StubServer(self, {
            "/admin/v1/status": (401, '{"error":{"message":"invalid token","type":"auth",'
                                      '"code":"unauthorized"}}', "application/json"),
            "/healthz": (200, '{"status":"ok"}', "application/json"),
            "/readyz": (200, '{"status":"ready"}', "application/json"),
        })
        cp = self.ctl("--server", stub.url + "/", "--token", TOKEN, "status")
        self.assertExit(cp, 1)
        self.assertIn("401", cp.stderr)
        self.assertIn("invalid token", cp.stderr)
        self.assertIn("Bearer " + TOKEN, stub.auth_headers())
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)

    def test_token_from_the_environment_is_sent(self):
        stub = StubServer(self, {"/readyz": (200, '{"status":"ready"}', "application/json")})
        cp = self.ctl("--server", stub.url, "health", env={"KEYPLANE_TOKEN": TOKEN})
        self.assertExit(cp, 0)
        self.assertEqual(stub.auth_headers(), ["Bearer " + TOKEN])

    def test_context_token_is_not_sent_to_another_server(self):
        ours = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        other = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        self.assertExit(self.ctl("config", "set-context", "a", "--server", ours.url,
                                 "--token", TOKEN), 0)
        self.assertExit(self.ctl("health"), 0)
        self.assertEqual(ours.auth_headers(), ["Bearer " + TOKEN])
        self.assertExit(self.ctl("--server", other.url, "health"), 0)
        self.assertEqual(other.auth_headers(), [None])


class ContextsTest(ClusterctlTestCase):
    def test_contexts_round_trip(self):
        stub = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        dead = f"http://127.0.0.1:{refusing_port(self)}"
        cp = self.ctl("config", "set-context", "local", "--server", stub.url, "--token", TOKEN)
        self.assertExit(cp, 0)
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)
        self.assertExit(self.ctl("config", "set-context", "dead", "--server", dead), 0)

        path = os.path.join(self.config_dir, "config.yaml")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.ctl("config", "current-context").stdout.strip(), "local",
                         "the first context becomes current")

        cp = self.ctl("-o", "json", "config", "get-contexts")
        self.assertExit(cp, 0)
        listing = json.loads(cp.stdout)
        self.assertEqual(listing["current-context"], "local")
        self.assertEqual([(c["name"], c["server"], c["token_set"]) for c in listing["contexts"]],
                         [("local", stub.url, True), ("dead", dead, False)])
        cp = self.ctl("config", "get-contexts")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"\*\s+local\s+set\s+" + re.escape(stub.url))
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)

        self.assertExit(self.ctl("config", "use-context", "dead"), 0)
        cp = self.ctl("health")
        self.assertExit(cp, 3)
        self.assertIn("context dead", cp.stderr)
        self.assertExit(self.ctl("health", env={"KEYPLANE_SERVER": stub.url}), 0)

        cp = self.ctl("config", "use-context", "missing")
        self.assertExit(cp, 1)
        self.assertIn("missing", cp.stderr)
        self.assertEqual(self.ctl("config", "current-context").stdout.strip(), "dead")

        self.assertExit(self.ctl("config", "use-context", "local"), 0)
        self.assertExit(self.ctl("health"), 0)
        self.assertEqual(stub.auth_headers()[-1], "Bearer " + TOKEN)

    def test_update_keeps_other_fields_and_unknown_keys(self):
        path = self.h.write_file("ctl-config/config.yaml",
                                 "# written by hand\ncurrent-context: a\nextra: kept\n"
                                 "contexts:\n- name: a\n  server: http://127.0.0.1:1\n"
                                 "  token: old\n  note: mine\n")
        self.assertExit(self.ctl("config", "set-context", "a", "--token-file",
                                 self.h.write_file("tok", TOKEN + "\n")), 0)
        with open(path) as f:
            text = f.read()
        self.assertIn("extra: kept", text)
        self.assertIn("note: mine", text)
        self.assertIn("server: http://127.0.0.1:1", text)
        self.assertIn(TOKEN, text)
        self.assertNotIn("old", text)

    def test_default_location_is_under_home(self):
        cp = self.ctl("config", "set-context", "h", "--server", "http://127.0.0.1:1",
                      config_dir=False)
        self.assertExit(cp, 0)
        self.assertTrue(os.path.exists(os.path.join(self.h.home, ".config", "keyplane",
                                                    "config.yaml")))

    def test_broken_file_is_a_configuration_error(self):
        self.h.write_file("ctl-config/config.yaml", "contexts: [\n  {name: a,\n")
        cp = self.ctl("status")
        self.assertExit(cp, 2)
        self.assertIn("config.yaml", cp.stderr)
        cp = self.ctl("config", "set-context", "b", "--server", "http://127.0.0.1:1")
        self.assertExit(cp, 2)


SECRET = "sk-live-NEVER-ON-ARGV-4242"

APPLY_YAML = """\
# what an operator keeps in git
pools:
- id: main
  strategy: priority
  members: [{key: k1}]
  fallback: backup
- id: backup
  strategy: weighted
  members:
  - key: k1
    weight: 2
tenants:
- id: acme
  display_name: Acme Inc
providers:
- id: openai
  kind: openai
  base_url: https://api.openai.com/v1
projects:
- id: web
  tenant: acme
prices:
- id: "org/model:v1"
  input_per_mtok: 150000000
"""


class RegistryUsageTest(ClusterctlTestCase):
    """Mistakes on the command line are exit 2, before anything is sent:
    the server here refuses connections, so a command that wrongly went
    ahead would exit 3 instead."""

    def test_usage_errors_exit_2(self):
        env = {"KEYPLANE_SERVER": f"http://127.0.0.1:{refusing_port(self)}"}
        cases = [
            ["get"], ["get", "bogus"], ["get", "pools", "a", "b"], ["get", "pools", "--bogus"],
            ["put", "pools", "x"], ["put", "tokens", "x", "--set", "a=1"],
            ["put", "members", "x", "--set", "a=1"], ["put", "pools", "x", "--set", "noequals"],
            ["put", "pools", "x", "--set", "version=2"], ["put", "pools", "x", "--set", "=2"],
            ["put", "pools", "x", "--set", "a=1", "--if-version", "abc"],
            ["put", "pools", "x", "-f", "/nonexistent.yaml"],
            ["delete", "pools"], ["delete", "tenants", "t", "--if-version", "-1"],
            ["delete", "bogus", "x"],
            ["keys"], ["keys", "bogus"], ["keys", "add", "k1"], ["keys", "add"],
            ["keys", "revoke", "k1"], ["keys", "retire", "k1", "x"], ["keys", "retire", "k1"],
            ["keys", "rotate", "k1", "--grace", "soon"], ["keys", "disable"],
            ["tokens"], ["tokens", "create"],
            ["tokens", "create", "--role", "app", "--expires-in", "3x"],
            ["tokens", "create", "--role", "app", "--expires-in", "0"],
            ["tokens", "disable"],
            ["members"], ["members", "add", "--node-id", "1"],
            ["members", "add", "--node-id", "x", "--address", "h:1"],
            ["members", "add", "--node-id", "0", "--address", "h:1"],
            ["members", "add", "--node-id", "2", "--address", "nohostport"],
            ["members", "add", "--node-id", "2", "--address", "h:1", "--role", "boss"],
            ["members", "role", "n1", "king"], ["members", "remove"],
            ["leader"], ["leader", "transfer", "x"], ["leader", "transfer", "1", "2"],
            ["audit"], ["audit", "list", "--since", "yesterday"],
            ["audit", "list", "--limit", "5000"], ["audit", "list", "--after-seq", "x"],
            ["audit", "verify", "extra"],
            ["apply"], ["apply", "-f", "x.yaml", "extra"],
            ["cluster", "extra"], ["whoami", "extra"], ["-o", "xml", "version"],
        ]
        for args in cases:
            with self.subTest(args=args):
                cp = self.ctl(*args, env=env, input="")
                self.assertExit(cp, 2)
                self.assertTrue(cp.stderr.strip(), "a message on stderr")

    def test_help_lists_the_registry_commands(self):
        cp = self.ctl("--help")
        self.assertExit(cp, 0)
        for word in ("get", "put", "delete", "apply", "keys", "tokens", "members", "cluster",
                     "leader", "audit", "whoami", "yaml"):
            self.assertRegex(cp.stdout, r"(?m)^\s*-?.*\b" + word + r"\b")
        for group, words in (("keys", ("add", "rotate", "disable", "enable", "revoke", "retire")),
                             ("tokens", ("create", "disable", "list")),
                             ("members", ("add", "remove", "role", "list")),
                             ("audit", ("list", "verify")), ("leader", ("transfer",))):
            cp = self.ctl(group, "--help")
            self.assertExit(cp, 0)
            for word in words:
                self.assertIn(word, cp.stdout)
        cp = self.ctl("keys", "add", "--help")
        self.assertExit(cp, 0)
        self.assertIn("stdin", cp.stdout)


class SecretHandlingTest(ClusterctlTestCase):
    """A key's secret comes from stdin or --secret-file, never from argv, and
    is never printed."""

    def setUp(self):
        super().setUp()
        self.fake = FakeControlPlane(self)
        self.fake.store["providers"]["openai"] = {"id": "openai", "kind": "openai",
                                                  "base_url": "https://x", "version": 1}
        self.env = {"KEYPLANE_SERVER": self.fake.url}

    def assertNoSecret(self, cp):
        self.assertNotIn(SECRET, cp.stdout + cp.stderr)

    def test_secret_on_argv_is_refused_and_not_repeated(self):
        cases = [
            ["keys", "add", "k1", "--provider", "openai", "--secret", SECRET],
            ["keys", "add", "k1", "--provider", "openai", "--secret=" + SECRET],
            ["keys", "add", "k1", SECRET, "--provider", "openai"],
            ["keys", "rotate", "k1", "--secret", SECRET],
            ["keys", "rotate", "k1", SECRET],
            ["put", "keys", "k1", "--set", "secret=" + SECRET],
            ["put", "keys", "k1", "--set", "provider=openai", "--set", "secret=" + SECRET],
        ]
        for args in cases:
            with self.subTest(args=args[:3]):
                cp = self.ctl(*args, env=self.env, input="sk-from-stdin-1111\n")
                self.assertExit(cp, 2)
                self.assertNoSecret(cp)
                self.assertRegex(cp.stderr, r"stdin|--secret-file")
        self.assertEqual(self.fake.requests, [], "nothing was sent")

    def test_missing_secret_file_exits_2_naming_it(self):
        missing = self.h.path("no-such-secret.txt")
        for args in (["keys", "add", "k1", "--provider", "openai"], ["keys", "rotate", "k1"]):
            with self.subTest(command=args[1]):
                cp = self.ctl(*args, "--secret-file", missing, env=self.env, input="")
                self.assertExit(cp, 2)
                self.assertIn(missing, cp.stderr)
        self.assertEqual(self.fake.requests, [])

    def test_empty_or_multiline_secret_is_refused(self):
        for text in ("", "\n", "  \n\t\n", "two\nlines\n", "x" * 5000):
            with self.subTest(text=text[:12]):
                cp = self.ctl("keys", "add", "k1", "--provider", "openai", env=self.env,
                              input=text)
                self.assertExit(cp, 2)
                self.assertIn("secret", cp.stderr)
        self.assertEqual(self.fake.requests, [])

    def test_secret_from_stdin_goes_in_the_body_only(self):
        cp = self.ctl("keys", "add", "k1", "--provider", "openai", "--tag", "prod", "--tag",
                      "eu", "--model", "gpt-4o", "--rpm", "600", env=self.env,
                      input=f"  {SECRET}\n")
        self.assertExit(cp, 0)
        self.assertNoSecret(cp)
        self.assertRegex(cp.stdout, r"key k1: added; primary secret v1 \(\.\.\.4242\)")
        [(method, path, headers, raw)] = self.fake.requests
        self.assertEqual((method, path), ("PUT", "/admin/v1/keys/k1"))
        self.assertEqual(headers.get("if-none-match"), "*", "add never replaces a key")
        self.assertEqual(json.loads(raw), {"secret": SECRET, "provider": "openai",
                                           "tags": ["prod", "eu"], "models": ["gpt-4o"],
                                           "rpm": 600})
        self.assertNotIn(SECRET, path + json.dumps(headers))

    def test_rotate_from_secret_file(self):
        self.assertExit(self.ctl("keys", "add", "k1", "--provider", "openai", env=self.env,
                                 input="sk-first-1111\n"), 0)
        path = self.h.write_file("secret.txt", SECRET + "\n")
        cp = self.ctl("keys", "rotate", "k1", "--grace", "2h", "--secret-file", path,
                      env=self.env, input="")
        self.assertExit(cp, 0)
        self.assertNoSecret(cp)
        self.assertRegex(cp.stdout, r"primary secret v2 \(\.\.\.4242\); previous v1 "
                                    r"\(\.\.\.1111\) stays usable until 20\d\d-")
        method, path, _, raw = self.fake.requests[-1]
        self.assertEqual((method, path), ("POST", "/admin/v1/keys/k1/secret"))
        self.assertEqual(json.loads(raw), {"secret": SECRET, "grace_seconds": 7200})


class ApplyFileTest(ClusterctlTestCase):
    """apply -f reads and checks the whole file before sending anything; a
    bad file is exit 2 with the file and line."""

    def setUp(self):
        super().setUp()
        self.fake = FakeControlPlane(self)
        self.env = {"KEYPLANE_SERVER": self.fake.url}

    def apply_text(self, text, *args):
        path = self.h.write_file("bad.yaml", text)
        return path, self.ctl("apply", "-f", path, *args, env=self.env)

    def test_bad_files_name_file_and_line(self):
        cases = [
            ("pools:\n- id: main\n  strategy: [\n", r"bad\.yaml:4: YAML syntax error"),
            ("pools:\n- id: a\n  x: 1\n   y: 2\n", r"bad\.yaml:\d+: YAML syntax error"),
            ("tenants:\n- id: a\n  display_name: x\n  display_name: y\n",
             r"bad\.yaml:4: YAML syntax error: duplicate key"),
            ("pools:\n- id: main\n- strategy: weighted\n", r"bad\.yaml:3: pools\[1\]: no id"),
            ("pools:\n- id: a\n- id: a\n", r"bad\.yaml:3: pools\[1\]: pool 'a' is already "
                                           r"given at line 2"),
            ("tenants: []\nkeys:\n- id: k1\n", r"bad\.yaml:2: unknown key 'keys'.*keys add"),
            ("pool:\n- id: a\n", r"bad\.yaml:1: unknown key 'pool'"),
            ("pools: 3\n", r"bad\.yaml:1: pools: expected a list"),
            ("- a\n- b\n", r"bad\.yaml:1: expected a mapping"),
            ("tenants:\n- just-a-string\n", r"bad\.yaml:2: tenants\[0\]: expected a mapping"),
            ("tenants:\n- id: a\n---\npools: []\n", r"bad\.yaml:4: a second YAML document"),
            ("prices:\n- id: m\n  input_per_mtok: 99999999999999999999\n",
             r"bad\.yaml:3: .*out of range"),
            ("", r"bad\.yaml is empty"),
        ]
        for text, pattern in cases:
            with self.subTest(text=text):
                _, cp = self.apply_text(text)
                self.assertExit(cp, 2)
                self.assertRegex(cp.stderr, pattern)
        self.assertEqual(self.fake.requests, [], "nothing was sent for a bad file")

    def test_missing_file(self):
        missing = self.h.path("nope.yaml")
        cp = self.ctl("apply", "-f", missing, env=self.env)
        self.assertExit(cp, 2)
        self.assertIn(missing, cp.stderr)


class RegistryUnreachableTest(ClusterctlTestCase):
    def test_registry_commands_exit_3_when_unreachable(self):
        url = f"http://127.0.0.1:{refusing_port(self)}"
        apply_file = self.h.write_file("apply.yaml", APPLY_YAML)
        commands = [
            ["get", "pools"], ["get", "prices", "gpt-4o-mini"], ["--output", "yaml", "get", "keys"],
            ["put", "tenants", "t", "--set", "display_name=x"],
            ["put", "tenants", "t", "--set", "display_name=x", "--if-version", "3"],
            ["delete", "tenants", "t"], ["keys", "list"], ["keys", "disable", "k1"],
            ["keys", "enable", "k1"], ["keys", "revoke", "k1", "--yes"],
            ["keys", "retire", "k1", "2"], ["keys", "add", "k1", "--provider", "p"],
            ["keys", "rotate", "k1"], ["tokens", "list"], ["tokens", "create", "--role", "app"],
            ["tokens", "disable", "tk_x"], ["tokens", "delete", "tk_x"], ["members", "list"],
            ["members", "add", "--node-id", "2", "--address", "h:1"],
            ["members", "remove", "n2"], ["members", "role", "n2", "standby"], ["cluster"],
            ["leader", "transfer"], ["audit", "list"], ["audit", "verify"], ["whoami"],
            ["apply", "-f", apply_file], ["apply", "-f", apply_file, "--dry-run"],
            ["freeze", "tenant", "t", "--reason", "x"], ["unfreeze", "tenant", "t"], ["freezes"],
        ]
        for args in commands:
            with self.subTest(args=args):
                cp = self.ctl("--server", url, *args, input="sk-from-stdin-1111\n")
                self.assertExit(cp, 3)
                self.assertIn(url, cp.stderr)
                self.assertIn("start keyplaned", cp.stderr)
        cp = self.ctl("--server", url, "apply", "-f", apply_file)
        self.assertIn("Nothing was changed", cp.stderr)


class AgainstFakeControlPlaneTest(ClusterctlTestCase):
    """What clusterctl sends for each registry command and what it prints."""

    def setUp(self):
        super().setUp()
        self.fake = FakeControlPlane(self)
        self.env = {"KEYPLANE_SERVER": self.fake.url}

    def run_ok(self, *args, input=None):
        cp = self.ctl(*args, env=self.env, input=input)
        self.assertExit(cp, 0)
        return cp

    def add_key(self, kid="k1"):
        self.fake.store["providers"].setdefault("mock", {
            "id": "mock", "kind": "openai-compatible", "base_url": "http://127.0.0.1:9",
            "version": 1})
        self.run_ok("keys", "add", kid, "--provider", "mock", input="sk-test-1234\n")

    def test_apply_creates_then_is_unchanged_then_changes(self):
        self.add_key()
        path = self.h.write_file("apply.yaml", APPLY_YAML)
        self.fake.requests.clear()

        cp = self.run_ok("apply", "-f", path, "--dry-run")
        plan = ["tenant acme: created", "provider openai: created", "project web: created",
                "pool backup: created", "pool main: created", "price org/model:v1: created"]
        self.assertEqual(cp.stdout.splitlines()[:-1], plan,
                         "tenants, providers, projects, pools (fallback first), prices")
        self.assertIn("dry run", cp.stdout.splitlines()[-1])
        self.assertEqual(self.fake.writes(), [], "a dry run only reads")

        cp = self.run_ok("apply", "-f", path)
        self.assertEqual(cp.stdout.splitlines()[:-1], plan)
        self.assertEqual(cp.stdout.splitlines()[-1], "applied: 6 created, 0 changed, 0 unchanged")
        puts = [(p, h.get("if-none-match")) for m, p, h, _ in self.fake.requests if m == "PUT"]
        self.assertIn(("/admin/v1/prices/org%2Fmodel%3Av1", "*"), puts)
        self.assertEqual(len(puts), 6)

        cp = self.run_ok("apply", "-f", path)
        self.assertTrue(all(line.endswith(": unchanged") for line in cp.stdout.splitlines()[:-1]),
                        "defaults the server filled in (member weight) are not changes")

        self.fake.requests.clear()
        changed = APPLY_YAML.replace("Acme Inc", "Acme Corp").replace("strategy: priority",
                                                                      "strategy: weighted")
        cp = self.run_ok("apply", "-f", self.h.write_file("apply2.yaml", changed))
        self.assertIn("tenant acme: changed (display_name)", cp.stdout)
        self.assertIn("pool main: changed (strategy)", cp.stdout)
        self.assertIn("applied: 0 created, 2 changed, 4 unchanged", cp.stdout)
        [(_, headers, body)] = [(p, h, b) for m, p, h, b in self.fake.requests
                                if m == "PUT" and p.endswith("/pools/main")]
        self.assertEqual(headers.get("if-match"), '"1"', "written over the version read")
        self.assertEqual(json.loads(body)["fallback"], "backup",
                         "fields the file gives are laid over the server's entity")
        self.assertEqual(self.fake.store["tenants"]["acme"]["display_name"], "Acme Corp")

    def test_apply_json_output(self):
        self.add_key()
        path = self.h.write_file("apply.yaml", APPLY_YAML)
        cp = self.run_ok("-o", "json", "apply", "-f", path, "--dry-run")
        out = json.loads(cp.stdout)
        self.assertEqual((out["dry_run"], out["ok"]), (True, True))
        self.assertEqual([(i["kind"], i["id"], i["result"]) for i in out["items"]][:2],
                         [("tenant", "acme", "created"), ("provider", "openai", "created")])

    def test_apply_stops_at_the_first_failure_and_says_what_was_applied(self):
        path = self.h.write_file("apply.yaml", APPLY_YAML)  # key k1 does not exist
        cp = self.ctl("apply", "-f", path, env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("pool backup: failed", cp.stdout)
        self.assertIn("members[0].key: no key 'k1'", cp.stderr)
        self.assertRegex(cp.stderr, r"Applied before it: tenant acme \(created\), provider "
                                    r"openai \(created\), project web \(created\)\.")
        self.assertRegex(cp.stderr, r"Not tried: pool main, price org/model:v1\.")
        self.assertNotIn("main", self.fake.store["pools"])

    def test_get_table_json_yaml(self):
        self.add_key()
        self.run_ok("put", "pools", "main", "--set", 'members=[{"key":"k1"}]', "--set",
                    "strategy=weighted")
        self.run_ok("put", "prices", "gpt-4o-mini", "--set", "input_per_mtok=150000000",
                    "--set", "output_per_mtok=600000000")
        cp = self.run_ok("get", "pools")
        lines = cp.stdout.splitlines()
        self.assertRegex(lines[0], r"^ID\s+STRATEGY\s+MEMBERS\s+FALLBACK\s+VERSION$")
        self.assertRegex(lines[1], r"^main\s+weighted\s+k1\s+-\s+1$")
        self.assertEqual(lines[0].index("STRATEGY"), lines[1].index("weighted"), "aligned")
        cp = self.run_ok("get", "prices")
        self.assertRegex(cp.stdout, r"gpt-4o-mini\s+\$0\.15\s+-\s+\$0\.60")
        cp = self.run_ok("get", "keys", "k1", "-o", "json")
        self.assertEqual(json.loads(cp.stdout)["secrets"][0]["last4"], "1234")
        cp = self.run_ok("get", "keys", "k1", "-o", "yaml")
        self.assertRegex(cp.stdout, r'(?m)^id: k1$')
        self.assertRegex(cp.stdout, r'(?m)^  last4: "1234"$', "a string that looks like a "
                                                               "number stays a string")
        self.assertRegex(cp.stdout, r"(?m)^status: active$")
        cp = self.run_ok("get", "tenants")
        self.assertIn("no tenants", cp.stderr)

    def test_ids_are_url_encoded(self):
        for mid in ("org/model:v1", "..", "a b?c#d"):
            with self.subTest(id=mid):
                self.fake.requests.clear()
                cp = self.ctl("get", "prices", mid, env=self.env)
                self.assertExit(cp, 1)
                [(_, path, _, _)] = self.fake.requests
                self.assertEqual(urllib.parse.unquote(path), "/admin/v1/prices/" + mid)
                self.assertNotIn(mid, path)

    def test_put_set_reads_then_writes_with_if_match(self):
        self.run_ok("put", "tenants", "acme", "--set", "display_name=Acme")
        self.assertEqual(self.fake.requests[-1][2].get("if-none-match"), "*")
        cp = self.run_ok("put", "tenants", "acme", "--set", 'display_name="123"')
        self.assertIn("tenant acme: replaced (version 2)", cp.stdout)
        self.assertEqual(self.fake.requests[-1][2].get("if-match"), '"1"')
        self.assertEqual(self.fake.store["tenants"]["acme"]["display_name"], "123")
        cp = self.ctl("put", "tenants", "acme", "--set", "display_name=x", "--if-version", "1",
                      env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("409", cp.stderr)
        self.assertIn("re-read it (clusterctl get tenants acme)", cp.stderr)

    def test_put_file_round_trip(self):
        self.run_ok("put", "tenants", "acme", "--set", "display_name=Acme")
        cp = self.run_ok("get", "tenants", "acme", "-o", "yaml")
        path = self.h.write_file("acme.yaml", cp.stdout.replace("Acme", "Acme Two"))
        cp = self.run_ok("put", "tenants", "acme", "-f", path)
        self.assertIn("replaced (version 2)", cp.stdout)
        self.assertEqual(json.loads(self.fake.requests[-1][3]), {"display_name": "Acme Two"},
                         "the fields the registry sets are not sent back")
        path = self.h.write_file("acme.json", json.dumps({"display_name": "J"}))
        self.run_ok("put", "tenants", "acme", "-f", path)
        cp = self.ctl("put", "tenants", "other", "-f", self.h.write_file(
            "x.yaml", "id: acme\ndisplay_name: x\n"), env=self.env)
        self.assertExit(cp, 2)

    def test_delete(self):
        self.run_ok("put", "tenants", "acme", "--set", "display_name=Acme")
        cp = self.ctl("delete", "tenants", "acme", "--if-version", "7", env=self.env)
        self.assertExit(cp, 1)
        cp = self.run_ok("delete", "tenant", "acme")
        self.assertEqual(cp.stdout, "tenant acme: deleted\n")
        cp = self.ctl("delete", "tenants", "acme", env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("404", cp.stderr)

    def test_key_lifecycle(self):
        self.add_key()
        self.assertEqual(self.run_ok("keys", "disable", "k1").stdout, "key k1: disabled\n")
        self.assertEqual(self.run_ok("keys", "enable", "k1").stdout, "key k1: enabled\n")
        self.run_ok("keys", "rotate", "k1", input="sk-second-5678\n")
        self.assertIn("secret v1 retired", self.run_ok("keys", "retire", "k1", "1").stdout)
        cp = self.ctl("keys", "revoke", "k1", env=self.env)
        self.assertExit(cp, 2)
        self.assertIn("--yes", cp.stderr)
        self.assertIn("keys disable k1", cp.stderr)
        self.assertEqual(self.fake.store["keys"]["k1"]["status"], "active")
        self.run_ok("keys", "revoke", "k1", "--yes")
        cp = self.ctl("keys", "enable", "k1", env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("revoked", cp.stderr)

    def test_tokens_create_prints_the_token_once_on_stdout(self):
        cp = self.run_ok("tokens", "create", "--role", "app", "--tenant", "acme", "--project",
                         "web", "--feature", "search", "--feature", "chat", "--model", "gpt-4o*",
                         "--expires-in", "30d")
        self.assertRegex(cp.stdout, r"^kp_[a-z2-7]{12}_\w{38}\n$")
        self.assertIn("only time", cp.stderr)
        self.assertNotIn(cp.stdout.strip(), cp.stderr)
        body = json.loads(self.fake.requests[-1][3])
        self.assertEqual((body["role"], body["tenant"], body["projects"], body["features"],
                          body["models"]), ("app", "acme", ["web"], ["search", "chat"],
                                            ["gpt-4o*"]))
        self.assertGreater(body["expires_at_ms"], 1_700_000_000_000)
        cp = self.run_ok("tokens", "list")
        self.assertNotIn("kp_", cp.stdout)
        self.assertRegex(cp.stdout, r"tk_\w+\s+-\s+app\s+acme\s+web\s+search,chat\s")
        self.run_ok("tokens", "disable", "tk_abcdefghijkl")
        self.assertTrue(self.fake.store["tokens"]["tk_abcdefghijkl"]["disabled"])

    def test_members_cluster_leader(self):
        self.run_ok("members", "add", "--node-id", "1", "--address", "127.0.0.1:7602")
        self.run_ok("members", "add", "--node-id", "2", "--address", "127.0.0.1:7702", "--role",
                    "standby")
        self.run_ok("members", "add", "--node-id", "3", "--address", "127.0.0.1:7802",
                    "--name", "third")
        self.assertEqual(json.loads(self.fake.requests[-1][3]),
                         {"node_id": 3, "address": "127.0.0.1:7802", "name": "third",
                          "role": "voter"})
        cp = self.run_ok("members", "add", "--node-id", "502525353881581829", "--address",
                         "10.0.0.4:7602", "--control-address", "10.0.0.4:7601")
        self.assertEqual(cp.stdout, "member n502525353881581829: added (node 502525353881581829, "
                                    "10.0.0.4:7602, voter)\n", "named by the server")
        self.assertEqual(json.loads(self.fake.requests[-1][3]),
                         {"node_id": 502525353881581829, "address": "10.0.0.4:7602",
                          "control_address": "10.0.0.4:7601", "role": "voter"})
        self.run_ok("members", "remove", "n502525353881581829")
        self.assertEqual(self.run_ok("members", "role", "n2", "voter").stdout,
                         "member n2: now voter\n")
        cp = self.run_ok("cluster")
        self.assertRegex(cp.stdout, r"(?m)^LEADER\s+n1 \(node 1\)$")
        self.assertRegex(cp.stdout, r"(?m)^NODE\s+NAME\s+ADDRESS\s+ROLE\s+LEADER\s+TERM\s+COMMIT"
                                    r"\s+APPLIED\s+LAST_CONTACT$")
        self.assertRegex(cp.stdout, r"(?m)^1\s+n1\s+127\.0\.0\.1:7602\s+voter\s+\*\s+3\s+120"
                                    r"\s+120\s+12ms$")
        self.assertRegex(cp.stdout, r"(?m)^3\s+third\s.*unreachable$")
        cp = self.run_ok("leader", "transfer", "2")
        self.assertEqual(cp.stdout, "leadership transferred: leadership moved to node 2\n")
        self.assertEqual(json.loads(self.fake.requests[-1][3]), {"node_id": 2})
        self.run_ok("members", "remove", "third")
        self.assertEqual(self.fake.requests[-1][:2], ("DELETE", "/admin/v1/members/third"))

    def test_audit_and_whoami(self):
        self.run_ok("put", "tenants", "acme", "--set", "display_name=Acme")
        self.run_ok("put", "tenants", "beta", "--set", "display_name=Beta")
        cp = self.run_ok("audit", "list", "--action", "put_tenant", "--since", "2h", "--limit",
                         "1")
        self.assertRegex(cp.stdout, r"(?m)^1\s+20\d\d-\S+\s+tk_test\s+admin\s+put_tenant\s+acme"
                                    r"\s+ok$")
        self.assertIn("--after-seq 1", cp.stderr)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.fake.requests[-1][1]).query)
        self.assertEqual((query["action"], query["limit"]), (["put_tenant"], ["1"]))
        self.assertTrue(query["since_ms"][0].isdigit())
        cp = self.run_ok("audit", "verify")
        self.assertIn("verified: 2 entries", cp.stdout)
        self.fake.audit_broken = 2
        cp = self.ctl("audit", "verify", env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("seq 2", cp.stdout)
        cp = self.run_ok("whoami")
        self.assertRegex(cp.stdout, r"(?m)^TOKEN\s+tk_test$")
        self.assertRegex(cp.stdout, r"(?m)^ROLE\s+admin$")

    def test_refusals_say_what_to_do_next(self):
        self.fake.token = TOKEN
        cp = self.ctl("get", "pools", env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("401", cp.stderr)
        self.assertIn("KEYPLANE_TOKEN", cp.stderr)
        cp = self.ctl("get", "pools", env=dict(self.env, KEYPLANE_TOKEN="kp_wrong"))
        self.assertExit(cp, 1)
        self.assertIn("token was refused", cp.stderr)
        self.assertExit(self.ctl("get", "pools", env=dict(self.env, KEYPLANE_TOKEN=TOKEN)), 0)
        self.fake.unavailable = "no_leader"
        cp = self.ctl("get", "pools", env=dict(self.env, KEYPLANE_TOKEN=TOKEN))
        self.assertExit(cp, 1)
        self.assertIn("503", cp.stderr)
        self.assertIn("retry in a few seconds", cp.stderr)
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)
        self.fake.unavailable = "leadership_changed"
        cp = self.ctl("delete", "pools", "main", env=dict(self.env, KEYPLANE_TOKEN=TOKEN))
        self.assertExit(cp, 1)
        self.assertIn("may still have been applied: check (clusterctl get pools main)",
                      cp.stderr)

    def test_status_yaml(self):
        stub = StubServer(self, {
            "/admin/v1/status": (200, '{"node":"n1","ready":true,"version":"1.0"}',
                                 "application/json"),
            "/healthz": (200, '{"status":"ok"}', "application/json"),
            "/readyz": (200, '{"status":"ready"}', "application/json"),
        })
        cp = self.ctl("--server", stub.url, "-o", "yaml", "status")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r'(?m)^  version: "1\.0"$')
        self.assertRegex(cp.stdout, r"(?m)^  ready: true$")


class AgainstNodeTest(ClusterctlTestCase):
    def setUp(self):
        super().setUp()
        self.node = self.h.start_node(config={"workers": 2})
        self.env = {"KEYPLANE_SERVER": self.node.control_url}
        if self.node.admin_token:
            self.env["KEYPLANE_TOKEN"] = self.node.admin_token

    def test_status_table(self):
        cp = self.ctl("status", env=self.env)
        self.assertExit(cp, 0)
        self.assertIn(self.node.control_url, cp.stdout)
        self.assertRegex(cp.stdout, r"(?m)^NODE\s+n1$")
        self.assertRegex(cp.stdout, r"(?m)^READY\s+yes$")
        self.assertRegex(cp.stdout, r"(?m)^WORKERS\s+2$")
        self.assertRegex(cp.stdout, r"(?m)^HEALTHZ\s+200 OK$")
        self.assertRegex(cp.stdout, r"(?m)^READYZ\s+200 OK$")

    def test_status_json(self):
        cp = self.ctl("status", "-o", "json", env=self.env)
        self.assertExit(cp, 0)
        out = json.loads(cp.stdout)
        self.assertEqual(out["server"], self.node.control_url)
        self.assertIs(out["status"]["ready"], True)
        self.assertEqual(out["status"]["node"], "n1")
        self.assertEqual(out["healthz"]["code"], 200)
        self.assertEqual(out["readyz"]["code"], 200)

    def test_health_ready(self):
        cp = self.ctl("health", env=self.env)
        self.assertExit(cp, 0)
        self.assertTrue(cp.stdout.startswith("ready"), cp.stdout)

    def test_metrics_raw(self):
        cp = self.ctl("metrics", env=self.env)
        self.assertExit(cp, 0)
        self.assertIn("keyplane_build_info{", cp.stdout)

    def test_get_prices_effective(self):
        """get prices --effective: the registry's prices and the built-in
        defaults they do not override, with their source."""
        cp = self.ctl("put", "prices", "gpt-4o", "--set", "input_per_mtok=2000000000",
                      "--set", "output_per_mtok=8000000000", env=self.env)
        self.assertExit(cp, 0)
        cp = self.ctl("get", "prices", "--effective", env=self.env)
        self.assertExit(cp, 0)
        lines = cp.stdout.splitlines()
        self.assertRegex(lines[0],
                         r"^MODEL\s+INPUT/MTOK\s+CACHED/MTOK\s+OUTPUT/MTOK\s+REQUEST_FEE\s+SOURCE$")
        self.assertRegex(cp.stdout, r"(?m)^gpt-4o\s+\$2\.00\s+\$0\.00\s+\$8\.00\s+\$0\.00\s+registry$")
        self.assertRegex(cp.stdout,
                         r"(?m)^gpt-4o-mini\s+\$0\.15\s+\$0\.075\s+\$0\.60\s+\$0\.00\s+default$")
        self.assertRegex(cp.stdout, r"(?m)^claude-sonnet-4-5\s.*\sdefault$")
        # Without --effective, only the registry's own.
        cp = self.ctl("get", "prices", env=self.env)
        self.assertExit(cp, 0)
        self.assertEqual(len(cp.stdout.splitlines()), 2, cp.stdout)
        # One model: the entry that applies, and the name it resolved from.
        cp = self.ctl("get", "prices", "gpt-4o-mini-2024-07-18", "--effective", env=self.env)
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"(?m)^gpt-4o-mini\s.*\sdefault$")
        self.assertIn("gpt-4o-mini-2024-07-18 is priced as gpt-4o-mini (built-in default)",
                      cp.stderr)
        cp = self.ctl("get", "prices", "llama-3-70b", "--effective", env=self.env)
        self.assertExit(cp, 1)
        self.assertIn("no price for model 'llama-3-70b'", cp.stderr)
        cp = self.ctl("get", "pools", "--effective", env=self.env)
        self.assertExit(cp, 2)
        self.assertIn("--effective is for prices only", cp.stderr)

    def test_status_through_a_context(self):
        args = ["config", "set-context", "n1", "--server", self.node.control_url]
        if self.node.admin_token:
            args += ["--token-file", os.path.join(self.node.data_dir, "admin.token")]
        self.assertExit(self.ctl(*args), 0)
        cp = self.ctl("status")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"(?m)^NODE\s+n1$")


if __name__ == "__main__":
    unittest.main()
