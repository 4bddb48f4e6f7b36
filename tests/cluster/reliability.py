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
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

import faults
import history
from harness import Harness, assert_no_secrets, bin_dir, http, wait_until

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


def faketime_lib():
    for path in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1"):
        if os.path.exists(path):
            return path
    return None


def long_mode():
    return os.environ.get("KEYPLANE_RELIABILITY_LONG") == "1"


def canary(kind):
    """A unique secret for this run, shaped as a real one of @kind."""
    return {"openai": "sk-canary-", "anthropic": "sk-ant-canary-",
            "master": ""}[kind] + secrets.token_hex(20 if kind != "master" else 32)


class ReliabCluster:
    """Build with ReliabCluster(test, seed).start(); see the module comment."""

    def __init__(self, test, seed, netns="auto", hosts=("n1", "n2", "n3", "r1", "up"),
                 config=None, budget_nanousd=3_000_000, tmpfs=None, faketime=False,
                 window=None, fsync_fault=None):
        self.test = test
        self.seed = seed
        self.rng = random.Random(seed)
        self.h = Harness(test)
        # netns: "auto" (namespaces when permitted, else loopback, said on
        # stderr), "required" (partitions: skip without them) or False.
        self.net = None
        why = faults.netns_unavailable() if netns else None
        if netns == "required" and why:
            raise unittest.SkipTest(f"network namespaces not permitted ({why}): partitions "
                                    f"not tested")
        if netns and not why:
            self.net = faults.Network(self.h, hosts)
        elif netns:
            sys.stderr.write(f"\nnetwork namespaces not permitted ({why}): this scenario "
                             f"runs on loopback\n")
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
        # Workload threads stop before the harness stops the nodes, however
        # the test ends (a skip or a failure midway included): cleanups run
        # last-added first.
        test.addCleanup(self.halt)
        self.token = None
        self.figures = {}
        self.call_pause = 0.02
        # name -> size: that node's data directory is a small tmpfs
        self.window = window or {"window": "daily"}
        # Voters run under libfaketime (wall clock only) when @faketime:
        # set_clock() moves one node's CLOCK_REALTIME.
        self.faketime = faketime and faketime_lib()
        if faketime and not self.faketime:
            raise unittest.SkipTest("libfaketime not installed (Debian package faketime): "
                                    "clock jumps not tested")
        self.tmpfs_sizes = dict(tmpfs or {})
        # name -> path substring: fsync/fdatasync of matching files fail
        # with EIO on that node once fsync_fault(name, True) (fault_fsync.c)
        self.fsync_faults = dict(fsync_fault or {})
        self.disks = {}
        self.write_pause = 0.01

    def host(self, name):
        return self.net.host(name) if self.net else None

    # -- starting --

    def start(self, voters=3, router=True):
        self.mock = self.h.start_mock(host=self.host("up"))
        env = dict(self.node_env("n1"), KEYPLANE_MASTER_KEY=self.master)
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
        data_dir = None
        if name in self.tmpfs_sizes:
            data_dir = self.h.path(name, "data")
            self.disks[name] = faults.Tmpfs(self.h, data_dir, self.tmpfs_sizes[name])
        node = self.h.start_node(name, config=cfg, args=["--join", joins],
                                 env=dict(self.node_env(name), KEYPLANE_MASTER_KEY=self.master),
                                 host=self.host(name), data_dir=data_dir)
        self.nodes[name] = node
        return node

    def node_env(self, name):
        preload, env = [], {}
        supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan-libraft.supp")
        lsan = os.environ.get("LSAN_OPTIONS", "")
        env["LSAN_OPTIONS"] = (lsan + ":" if lsan else "") + f"suppressions={supp}"
        if self.faketime and name.startswith("n"):
            clock = self.h.write_file(f"{name}/faketime", "+0\n", mode=0o644)
            preload.append(self.faketime)
            env.update({"FAKETIME_TIMESTAMP_FILE": clock, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                        "FAKETIME_CACHE_DURATION": "1"})
        if name in self.fsync_faults:
            lib = os.path.join(bin_dir(), "kpfault_fsync.so")
            if not os.path.exists(lib):
                raise unittest.SkipTest(f"{lib} not built: fsync faults not tested")
            preload.append(lib)
            env.update({"KP_FAULT_FSYNC_MATCH": self.fsync_faults[name],
                        "KP_FAULT_FSYNC_TRIGGER": self.h.path(name, "fsync-fault")})
        if preload:
            asan = os.environ.get("ASAN_OPTIONS", "")
            env["LD_PRELOAD"] = ":".join(preload)
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "verify_asan_link_order=0"
        return env

    def fsync_fault(self, name, on):
        trigger = self.h.path(name, "fsync-fault")
        if on:
            self.h.write_file(f"{name}/fsync-fault", "")
        elif os.path.exists(trigger):
            os.unlink(trigger)

    def set_clock(self, name, offset_s):
        """Step @name's wall clock to real time + @offset_s (seen within 1 s)."""
        self.h.write_file(f"{name}/faketime", f"{offset_s:+d}\n", mode=0o644)

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
            "budgets": [dict(self.window, name="daily", limit_nanousd=self.budget_nanousd,
                             kind="hard")]})
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

    def view_index(self, node):
        """The applied index of the registry view @node's routers use."""
        status, _, raw = self.request(node, "GET", "/freezes", timeout=5)
        return json.loads(raw)["applied_index"] if status == 200 else -1

    def commit_index(self):
        return self.cluster_state(self.wait_leader())["commit_index"]

    def views_at(self, index, what, routers=None):
        """{(node, what): monotonic time} when each router's view first held
        @index (polled; the time is an upper bound of when it did)."""
        out = {}
        for n in routers or self.live():
            wait_until(lambda n=n: self.view_index(n) >= index, timeout=60,
                       what=f"{n.name}'s view at index {index}", interval=0.01)
            out[(n.name, what)] = time.monotonic()
        return out

    def node_id(self, name):
        st = self.cluster_state(self.wait_leader())
        return next(m["node_id"] for m in st["members"] if m.get("name") == name)

    def make_leader(self, name):
        """Move leadership to @name (a voter) and wait until it leads."""
        want = self.nodes[name]
        if self.wait_leader() is want:
            return want
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
                self.stop.wait(0.01)  # not a busy loop while it is down
                continue
            op = self.hist.invoke("create", client, key=key, value=value, node=node.name)
            self._admin_op(op, node, "PUT", f"/tenants/{key}", {"display_name": value})

    def register(self, client, keys=None):
        # More registers in long runs keep each one's history short enough
        # for the linearizability search to decide.
        keys = keys or (32 if long_mode() else 6)
        rng = random.Random(self.seed * 2000 + client)
        i = 0
        while not self.stop.is_set():
            key = f"reg-{rng.randrange(keys)}"
            node = rng.choice(self.voters())
            if not node.running():
                self.stop.wait(0.01)  # not a busy loop while it is down
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

    def caller(self, client, node_name="r1", max_tokens=None, token=None, stream_every=0):
        i = 0
        while not self.stop.is_set():
            rid = f"r-{client}-{i}"
            i += 1
            node = self.nodes[node_name]
            op = self.call(node, rid, client=client, max_tokens=max_tokens, token=token,
                           stream=bool(stream_every) and i % stream_every == 0)
            # A bounded rate (refusals are fast), so that histories stay a
            # size the checkers and the meter's search handle in seconds.
            self.stop.wait(self.call_pause)
            if op.type == "info" and not node.running():
                wait_until(lambda: node.running() or self.stop.is_set(), timeout=120,
                           what=f"{node.name} back")

    def call(self, node, rid, client=0, max_tokens=None, headers=None, stream=False,
             token=None, model=MODEL):
        body = {"model": model, "messages": [{"role": "user", "content": f"call {rid}"}]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        if stream:
            body["stream"] = True
        token = token or self.token
        hdrs = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                "X-Request-Id": rid}
        hdrs.update(headers or {})
        op = self.hist.invoke("call", client, rid=rid, node=node.name, token=token)
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
        """Every request id in the meter's raw events, duplicates kept: the search answers at most 10,000 events, so a
        window that is truncated is split in two (bounds in Unix ms)."""
        now = int(time.time() * 1000)
        # A day either way: nodes under a clock jump stamp their events
        # with their own clock.
        windows = [(now - 86_400_000, now + 86_400_000)]
        out = []
        while windows:
            lo, hi = windows.pop()
            q = urllib.parse.urlencode({"from": lo, "to": hi, "limit": 10000})
            body = self.admin("GET", "/usage/events?" + q, node=self.nodes[node_name])
            if body.get("truncated"):
                assert hi - lo > 1, f"over 10,000 events in one millisecond at {lo}"
                mid = (lo + hi) // 2
                windows += [(lo, mid), (mid, hi)]
                continue
            # The nodes' own canary probes are metered too (kind "canary",
            # no tenant): not the workload's calls.
            out += [e["request_id"] for e in body["events"] if e.get("kind") != "canary"]
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

    def collect_artifacts(self, calls=()):
        """Write what the cluster shows to the outside into TMP/artifacts so
        that the canary scan reads it too: every node's /metrics, the audit
        log, the usage CSV export and raw events, each router's recent
        events, a registry snapshot, and the body of every call answer."""
        out = self.h.path("artifacts")
        os.makedirs(out, exist_ok=True)

        def save(name, data):
            with open(os.path.join(out, name), "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode())

        for n in self.live():
            save(f"{n.name}.metrics.txt", n.metrics())
            status, _, raw = self.request(n, "GET", "/usage/recent?limit=10000")
            save(f"{n.name}.recent.json", raw)
            status, _, raw = self.request(n, "GET", "/status")
            save(f"{n.name}.status.json", raw)
        after, pages = 0, 0
        while True:
            body = self.admin("GET", f"/audit?limit=1000&after_seq={after}")
            save(f"audit-{pages}.json", json.dumps(body))
            pages += 1
            if len(body["entries"]) < 1000:
                break
            after = body["entries"][-1]["seq"]
        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
        status, _, raw = self.request(self.nodes["n1"], "GET",
                                      f"/usage?format=csv&granularity=minute&from={since}"
                                      f"&group_by=tenant,key,model")
        save("usage.csv", raw)
        status, _, raw = self.request(self.nodes["n1"], "GET",
                                      f"/usage/events?from={since}&limit=10000")
        save("events.json", raw)
        status, _, raw = self.request(self.nodes["n1"], "GET", "/snapshot")
        save("snapshot.bin", raw)
        with open(os.path.join(out, "call-bodies.txt"), "wb") as f:
            for o in self.hist.of("call", "ok"):
                f.write(o.result.get("body") or b"")
                f.write(b"\n")
        return out

    def check_secrets(self):
        """Canary scan over every file the test left: logs, data dirs
        (raft log, snapshots, spools, segments, rollups), the artifacts,
        and the zstd frames inside any of them decompressed (segments and
        snapshots are compressed: a secret there would not show raw)."""
        # DATA_DIR/admin.token is where the bootstrap hands the admin token
        # to its operator: the one file meant to hold a secret.
        paths = []
        for root, _, files in os.walk(self.h.tmp):
            paths += [os.path.join(root, f) for f in files if f != "admin.token"]
        frames = bytearray()
        for p in paths:
            try:
                with open(p, "rb") as f:
                    frames += b"".join(zstd_frames(f.read()))
            except FileNotFoundError:
                pass  # a running node removed it meanwhile (an old raft snapshot)
        decoded = subprocess.run(["zstd", "-dc"], input=bytes(frames),
                                 capture_output=True).stdout if frames else b""
        out = self.h.path("artifacts", "zstd-decoded.bin")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "wb") as f:
            f.write(decoded)
        assert_no_secrets(paths + [out], self.canaries)
        self.figures["secret_scan"] = {"files": len(paths), "decompressed_bytes": len(decoded)}
        return len(paths)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_frames(data):
    """Every whole zstd frame in @data (found by its magic, walked block by
    block per RFC 8878 to its end), as byte strings."""
    out = []
    at = data.find(ZSTD_MAGIC)
    while at >= 0:
        end = _zstd_frame_end(data, at)
        if end:
            out.append(data[at:end])
        at = data.find(ZSTD_MAGIC, end or at + 4)
    return out


def _zstd_frame_end(data, at):
    pos = at + 4
    if pos >= len(data):
        return None
    fhd = data[pos]
    fcs_flag, single, checksum, did_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:  # reserved bit
        return None
    pos += 1 + (0 if single else 1) + (0, 1, 2, 4)[did_flag]
    pos += (1 if single else 0, 2, 4, 8)[fcs_flag]
    while True:
        if pos + 3 > len(data):
            return None
        hdr = int.from_bytes(data[pos:pos + 3], "little")
        last, btype, size = hdr & 1, (hdr >> 1) & 3, hdr >> 3
        if btype == 3:
            return None
        pos += 3 + (1 if btype == 1 else size)
        if last:
            break
    pos += 4 if checksum else 0
    return pos if pos <= len(data) else None
