"""The cluster and the workload the reliability scenarios share
(test_reliability.py; docs/reliability.md says what each one proves).

Topology, each host in its own network namespace (faults.Network) when
namespaces are permitted, else all on loopback:

    n1, n2, n3   voters (n1 bootstraps; n1 and n2 are meters)
    r1           a router-only node (standby) that apps call
    up           keyplane-mock, the provider

The workload runs on threads and records a history (history.py):
  writers     create tenants w-C-I on a voter picked by the seed
  registers   write and consistently read tenants reg-K (display names)
  callers     chat completions through r1 with request ids r-C-I, against
              a hard budget on tenant acme

Every secret given to the cluster is a canary (CANARIES): the secret
scan at the end of each scenario searches every file the test left for
them. Durations: KEYPLANE_RELIABILITY_LONG=1 runs each scenario for
minutes instead of seconds (short mode: CI).
"""

import json
import os
import random
import secrets
import threading
import time
import urllib.parse

import faults
import history
from harness import Harness, http, wait_until

ADMIN = "/admin/v1"
MODEL = "gpt-4o-mini"
PRICE = {"input_per_mtok": 150_000_000, "output_per_mtok": 600_000_000}
CONFIG = {
    "election_timeout_ms": "500ms",
    "heartbeat_timeout_ms": "50ms",
    "snapshot_threshold": 64,
    "snapshot_trailing": 16,
    "spool_seal_age_ms": "200ms",
    "workers": 1,
}


# 503 codes that say the write was never proposed (docs/control-api.md);
# leadership_changed, not_committed and leader_unreachable may have been
# (a forward that failed may have reached the leader).
DEFINITE_503 = ("no_leader", "leader_unknown", "cluster_not_initialised")


def _error_code(raw):
    try:
        return json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def long_mode():
    return os.environ.get("KEYPLANE_RELIABILITY_LONG") == "1"


def canary(kind):
    """A unique secret for this run, shaped as a real one of @kind."""
    return {"openai": "sk-canary-", "anthropic": "sk-ant-canary-",
            "master": ""}[kind] + secrets.token_hex(20 if kind != "master" else 32)


class ReliabCluster:
    """Build with ReliabCluster(test, seed).start(); see the module comment."""

    def __init__(self, test, seed, netns=True, hosts=("n1", "n2", "n3", "r1", "up"),
                 config=None, budget_nanousd=3_000_000):
        self.test = test
        self.seed = seed
        self.rng = random.Random(seed)
        self.h = Harness(test)
        self.net = faults.Network(self.h, hosts) if netns else None
        self.master = canary("master")
        self.upstream_secret = canary("openai")
        self.canaries = [self.master, self.upstream_secret]
        self.cfg = dict(CONFIG)
        self.cfg.update(config or {})
        self.budget_nanousd = budget_nanousd
        self.nodes = {}
        self.hist = history.History()
        self.stop = threading.Event()
        self.threads = []
        self.token = None
        self.figures = {}
        self.call_pause = 0.02
        self.write_pause = 0.01

    def host(self, name):
        return self.net.host(name) if self.net else None

    # -- starting --

    def start(self, voters=3, router=True):
        self.mock = self.h.start_mock(host=self.host("up"))
        env = {"KEYPLANE_MASTER_KEY": self.master}
        cfg = dict(self.cfg, meter="yes")
        n1 = self.h.start_node("n1", config=cfg, env=env, host=self.host("n1"))
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        self.admin_token = n1.admin_token
        self.nodes["n1"] = n1
        for i in range(2, voters + 1):
            self.join(f"n{i}", meter=(i == 2))
        if router:
            self.join("r1", meter=False, role="standby")
        self.wait_members()
        self.setup_registry()
        return self

    def join(self, name, meter=False, role="voter"):
        cfg = dict(self.cfg, meter="yes" if meter else "no", raft_role=role)
        joins = ",".join(n.listen["control"] for n in self.nodes.values() if n.running())
        node = self.h.start_node(name, config=cfg, args=["--join", joins],
                                 env={"KEYPLANE_MASTER_KEY": self.master},
                                 host=self.host(name))
        self.nodes[name] = node
        return node

    def voters(self):
        return [n for name, n in sorted(self.nodes.items()) if name.startswith("n")]

    def wait_members(self):
        want = len(self.nodes)

        def ok():
            ld = self.leader()
            if not ld:
                return False
            st = self.cluster_state(ld)
            return len(st["members"]) == want and all(m.get("reachable") for m in st["members"])
        wait_until(ok, timeout=60, what=f"{want} reachable members")

    def setup_registry(self):
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": self.upstream_secret})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        self.admin("PUT", "/prices/" + MODEL, PRICE)
        self.admin("PUT", "/policies/acme-spend", {
            "scope_kind": "tenant", "scope_target": "acme",
            "budgets": [{"name": "daily", "window": "daily",
                         "limit_nanousd": self.budget_nanousd, "kind": "hard"}]})
        self.token = self.admin("POST", "/tokens", {"role": "app", "tenant": "acme",
                                                     "name": "app"})["token"]
        self.canaries.append(self.token)
        # The bootstrap token is handed to its operator on stdout and in
        # DATA_DIR/admin.token by design; one made through the API is a
        # canary, and the workload uses it.
        self.admin_token = self.admin("POST", "/tokens", {"role": "admin",
                                                           "name": "ops"})["token"]
        self.canaries.append(self.admin_token)
        for n in self.nodes.values():
            wait_until(lambda n=n: http("GET", n.gateway_url + "/v1/models", headers={
                "Authorization": "Bearer " + self.token})[0] == 200,
                what=f"{n.name} knows the app token", alive=n)
            wait_until(lambda n=n: self.admin("GET", "/budgets", node=n)["items"],
                       what=f"{n.name} sees the budget", alive=n)

    # -- control API --

    def request(self, node, method, path, body=None, timeout=10):
        hdrs = {"Authorization": "Bearer " + self.admin_token}
        return node.control(method, ADMIN + path, body=body, headers=hdrs, timeout=timeout)

    def admin(self, method, path, body=None, node=None, timeout=30):
        """A control call that must succeed: retried on every live node
        until one answers 2xx (leaders change under the scenarios)."""
        result = {}

        def attempt():
            for n in [node] if node else self.live():
                try:
                    status, _, raw = self.request(n, method, path, body)
                except OSError as e:
                    result["last"] = (n.name, repr(e))
                    continue
                result["last"] = (n.name, status, raw[:300])
                if status in (200, 201):
                    result["body"] = json.loads(raw) if raw else {}
                    return True
            return False
        try:
            wait_until(attempt, timeout=timeout, what=f"{method} {path} accepted",
                       interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer: {result.get('last')}") from None
        return result["body"]

    def live(self):
        return [n for n in self.nodes.values() if n.running()]

    def cluster_state(self, node):
        try:
            status, _, raw = self.request(node, "GET", "/cluster", timeout=5)
        except OSError:
            return None
        return json.loads(raw) if status == 200 else None

    def leader(self, among=None):
        for n in among or self.voters():
            if not n.running():
                continue
            st = self.cluster_state(n)
            if st and st.get("state") == "leader":
                return n
        return None

    def node_id(self, name):
        st = self.cluster_state(self.wait_leader())
        return next(m["node_id"] for m in st["members"] if m.get("name") == name)

    def make_leader(self, name):
        """Move leadership to @name (a voter) and wait until it leads."""
        want = self.nodes[name]
        self.admin("POST", "/cluster/transfer", {"node_id": self.node_id(name)})
        wait_until(lambda: self.leader() is want, timeout=60, what=f"{name} leads")
        return want

    def wait_leader(self, among=None, timeout=60):
        return wait_until(lambda: self.leader(among), timeout=timeout, what="a leader",
                          interval=0.02)

    # -- workload --

    def spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def writer(self, client):
        rng = random.Random(self.seed * 1000 + client)
        i = 0
        while not self.stop.is_set():
            key, value = f"w-{client}-{i}", f"v-{client}-{i}"
            i += 1
            node = rng.choice(self.voters())
            if not node.running():
                continue
            op = self.hist.invoke("create", client, key=key, value=value, node=node.name)
            self._admin_op(op, node, "PUT", f"/tenants/{key}", {"display_name": value})

    def register(self, client, keys=6):
        rng = random.Random(self.seed * 2000 + client)
        i = 0
        while not self.stop.is_set():
            key = f"reg-{rng.randrange(keys)}"
            node = rng.choice(self.voters())
            if not node.running():
                continue
            i += 1
            if rng.random() < 0.5:
                value = f"c{client}-{i}"
                op = self.hist.invoke("write", client, key=key, value=value, node=node.name)
                self._admin_op(op, node, "PUT", f"/tenants/{key}", {"display_name": value})
            else:
                op = self.hist.invoke("read", client, key=key, node=node.name)
                self.stop.wait(self.write_pause)
                try:
                    status, _, raw = self.request(node, "GET",
                                                  f"/tenants/{key}?consistent=true", timeout=5)
                except OSError as e:
                    self.hist.fail(op, error=repr(e))  # a read changes nothing
                    continue
                if status == 200:
                    self.hist.ok(op, value=json.loads(raw).get("display_name"))
                elif status == 404:
                    self.hist.ok(op, value=None)
                else:
                    self.hist.fail(op, status=status)

    def _admin_op(self, op, node, method, path, body):
        self.stop.wait(self.write_pause)
        try:
            status, _, raw = self.request(node, method, path, body, timeout=5)
        except ConnectionRefusedError as e:
            self.hist.fail(op, error=repr(e))  # nothing was sent
            return
        except OSError as e:
            self.hist.info(op, error=repr(e))
            return
        code = _error_code(raw)
        if status in (200, 201):
            self.hist.ok(op, status=status)
        elif (400 <= status < 500 and status != 408) or code in DEFINITE_503:
            self.hist.fail(op, status=status, code=code)
        else:
            # 5xx (not the leader, lost leadership, timeout): the entry may
            # still commit.
            self.hist.info(op, status=status, code=code)

    def caller(self, client, node_name="r1", max_tokens=None):
        i = 0
        while not self.stop.is_set():
            rid = f"r-{client}-{i}"
            i += 1
            node = self.nodes[node_name]
            op = self.call(node, rid, client=client, max_tokens=max_tokens)
            # A bounded rate (refusals are fast), so that histories stay a
            # size the checkers and the meter's search handle in seconds.
            self.stop.wait(self.call_pause)
            if op.type == "info" and not node.running():
                wait_until(lambda: node.running() or self.stop.is_set(), timeout=120,
                           what=f"{node.name} back")

    def call(self, node, rid, client=0, max_tokens=None, headers=None, stream=False):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"call {rid}"}]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        if stream:
            body["stream"] = True
        hdrs = {"Authorization": "Bearer " + self.token, "Content-Type": "application/json",
                "X-Request-Id": rid}
        hdrs.update(headers or {})
        op = self.hist.invoke("call", client, rid=rid, node=node.name, token=self.token)
        try:
            status, rh, raw = http("POST", node.gateway_url + "/v1/chat/completions",
                                   body=body, headers=hdrs, timeout=30)
        except OSError as e:
            return self.hist.info(op, error=repr(e))
        return self.hist.ok(op, status=status, key=rh.get("x-keyplane-key"),
                            error=rh.get("x-keyplane-error"), retry_after=rh.get("retry-after"),
                            body=raw)

    def run_for(self, seconds, during=None):
        """Let the workload run @seconds (a bounded scenario length, not a
        wait for an outcome), calling during() in between until it returns
        False or the time is up."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if during is None:
                self.stop.wait(min(0.2, max(0, end - time.monotonic())))
            elif during() is False:
                break

    def halt(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        self.threads = []

    # -- reading back --

    def final_tenants(self):
        out = {}
        after = ""
        while True:
            q = "consistent=true&limit=5000" + (f"&after={after}" if after else "")
            items = self.admin("GET", "/tenants?" + q)["items"]
            out.update((t["id"], t.get("display_name")) for t in items)
            if len(items) < 5000:
                return out
            after = items[-1]["id"]

    def meter_events(self, node_name="n1"):
        """Every request id in the meter's raw events for tenant acme,
        duplicates kept: the search answers at most 10,000 events, so a
        window that is truncated is split in two (bounds in Unix ms)."""
        now = int(time.time() * 1000)
        windows = [(now - 3_600_000, now + 3_600_000)]
        out = []
        while windows:
            lo, hi = windows.pop()
            q = urllib.parse.urlencode({"from": lo, "to": hi, "limit": 10000, "tenant": "acme"})
            body = self.admin("GET", "/usage/events?" + q, node=self.nodes[node_name])
            if body.get("truncated"):
                assert hi - lo > 1, f"over 10,000 events in one millisecond at {lo}"
                mid = (lo + hi) // 2
                windows += [(lo, mid), (mid, hi)]
                continue
            out += [e["request_id"] for e in body["events"]]
        return out

    def wait_metered(self, node_name="n1", timeout=120, may_lose=()):
        """Until every answered call is in @node_name's meter (or the
        deadline; the checker then names what is missing)."""
        want = {o.rid for o in self.hist.of("call", "ok")} - set(may_lose)
        try:
            wait_until(lambda: want <= set(self.meter_events(node_name)), timeout=timeout,
                       what=f"{len(want)} answered calls metered on {node_name}",
                       interval=0.5)
        except AssertionError:
            pass
        return self.meter_events(node_name)

    def budget_spent(self):
        b = self.admin("GET", "/budgets/acme-spend/daily?consistent=true")
        return b["spent_nanousd"]

    def meter_cost(self, node_name="n1"):
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
        q = urllib.parse.urlencode({"granularity": "total", "from": since,
                                    "filter": "tenant:acme"})
        return self.admin("GET", "/usage?" + q, node=self.nodes[node_name])["totals"][
            "cost_nanousd"]

    def check_secrets(self):
        """Canary scan over every file the test left: logs, data dirs
        (raft log, snapshots, spools, segments, rollups), CSV exports."""
        from harness import assert_no_secrets
        # DATA_DIR/admin.token is where the bootstrap hands the admin token
        # to its operator: the one file meant to hold a secret.
        paths = []
        for root, _, files in os.walk(self.h.tmp):
            paths += [os.path.join(root, f) for f in files if f != "admin.token"]
        assert_no_secrets(paths, self.canaries)
        return len(paths)
