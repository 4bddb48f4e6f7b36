#!/usr/bin/env python3
"""Raft registry figures: three keyplaned nodes on loopback, measured in one run.

    bench/raft-figures.py [--json] [--failovers N] [--duration S] [--keys N] ...

What it measures (docs: bench/README.md, "Raft registry figures"):

  1. Leader failover: kill -9 of the leader, then PUT /admin/v1/tenants/...
     retried every 5 ms, alternating between the two surviving nodes' control
     ports (followers forward writes to the leader), until one answers 200/201.
     The time counts from the moment SIGKILL is sent to that answer. The killed
     node is restarted with the same data directory (and the same ports) and
     must be back as a reachable, caught-up voter before the next kill.
     The shipped election timeout (1 s) and heartbeat (100 ms) are used.
  2. Admin writes committed per second: C client threads, each with one
     keep-alive connection to the leader's control port, PUT a new tenant each
     time, for a fixed duration; C = 1 and C = 16 by default.
  3. Snapshot size and restore time with 100,000 keys: a fresh cluster, one
     provider and N keys (no secrets; optionally a second run where every key
     carries a secret), more writes until the leader has taken a snapshot of
     the whole state, then the leader is restarted (SIGTERM, start) and the
     restore time is read from its log, beside the time from process start to
     GET /readyz == 200.

Processes are started through tests/cluster/harness.py (loaded by path), on
127.0.0.1 port 0, in temporary directories that are removed at the end, also
on Ctrl-C. Binaries come from KEYPLANE_BIN_DIR, else build-release/bin, which
is built (Release, no tests) when missing.

Python 3 standard library only.
"""

import argparse
import collections
import importlib.util
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from http import client as http_client

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN_DIR = os.path.join(REPO, "build-release", "bin")
MASTER_KEY = "b" * 64
OK = (200, 201)

QUIET = False


def log(msg):
    if not QUIET:
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()


class BenchError(Exception):
    """Something keyplaned did (or did not do) stops the measurement."""


# --- harness ----------------------------------------------------------------


def load_harness():
    path = os.path.join(REPO, "tests", "cluster", "harness.py")
    spec = importlib.util.spec_from_file_location("kp_cluster_harness", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = None  # the harness module, loaded in main()


class Owner:
    """Stands in for the unittest.TestCase a Harness expects: it collects the
    harness's cleanup and runs it when asked (at the end of a phase, or on
    exit)."""

    live = []

    def __init__(self, label):
        self.label = label
        self._cleanups = []
        self.harness = H.Harness(self, check_sanitizers=True)
        Owner.live.append(self)

    def addCleanup(self, fn, *args, **kwargs):
        self._cleanups.append((fn, args, kwargs))

    def id(self):
        return f"raft-figures.{self.label}"

    def close(self, show_logs=False):
        if self not in Owner.live:
            return
        Owner.live.remove(self)
        if show_logs:
            try:
                sys.stderr.write(f"\n===== logs of {self.label} ({self.harness.log_dir}) =====")
                self.harness.dump_logs()
            except Exception:  # noqa: BLE001 - best effort while failing
                pass
        while self._cleanups:
            fn, args, kwargs = self._cleanups.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                sys.stderr.write(f"cleanup of {self.label}: {e}\n")

    @classmethod
    def close_all(cls, show_logs=False):
        for o in list(reversed(cls.live)):
            o.close(show_logs=show_logs)


# --- HTTP -------------------------------------------------------------------


class Conn:
    """One keep-alive connection to a control port, with the admin token."""

    def __init__(self, addr, token, timeout=30):
        self.host, self.port = addr
        self.timeout = timeout
        self.headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        self.conn = None
        self.reconnects = 0

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def request(self, method, path, body=None):
        """(status, body bytes). A connection that turns out closed before an
        answer is reopened once (the request is idempotent: PUT)."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http_client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (OSError, http_client.HTTPException):
                self.close()
                self.reconnects += 1
                if attempt:
                    raise
        raise AssertionError("unreachable")


def one_request(addr, token, method, path, body=None, timeout=3):
    c = Conn(addr, token, timeout=timeout)
    try:
        c.conn = http_client.HTTPConnection(c.host, c.port, timeout=timeout)
        c.conn.request(method, path, body=body, headers=c.headers)
        resp = c.conn.getresponse()
        return resp.status, resp.read()
    finally:
        c.close()


def get_json(node, token, path, timeout=5):
    status, data = one_request(node.control_addr, token, "GET", path, timeout=timeout)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


def pct(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


# --- the cluster ------------------------------------------------------------


class Cluster:
    def __init__(self, label, config):
        self.owner = Owner(label)
        self.h = self.owner.harness
        self.config = config
        self.nodes = []
        self.token = None
        log(f"{label}: processes and logs in {self.h.tmp}")

    def start(self, n=3):
        first = self.h.start_node("n1", config=self.config,
                                  env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
        self.token = first.admin_token
        if not (self.token and self.token.startswith("kp_")):
            raise BenchError(f"n1 wrote no admin token in {first.data_dir}/admin.token")
        self.nodes.append(first)
        for i in range(2, n + 1):
            joins = ",".join(nd.listen["control"] for nd in self.nodes if nd.running())
            nd = self.h.start_node(f"n{i}", config=self.config, args=["--join", joins],
                                   env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
            self.nodes.append(nd)
        self.wait_voters(n)
        return self

    def effective_config(self):
        """keyplaned --check-config with n1's arguments: the settings in force."""
        nd = self.nodes[0]
        argv = [a for a in nd.argv]
        cp = self.h.run(argv + ["--check-config"], env={"KEYPLANE_MASTER_KEY": MASTER_KEY},
                        name="check-config")
        out = {}
        for line in cp.stdout.splitlines():
            m = re.match(r"^([a-z_]+): ([^#]*?)\s*(#.*)?$", line)
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def state(self, node, timeout=5):
        try:
            status, body = get_json(node, self.token, "/admin/v1/cluster", timeout=timeout)
        except (OSError, http_client.HTTPException):
            return None
        return body if status == 200 and isinstance(body, dict) else None

    def leader(self, among=None):
        for nd in [nd for nd in (among or self.nodes) if nd.running()]:
            st = self.state(nd)
            if st and st.get("state") == "leader":
                return nd
        return None

    def wait_leader(self, among=None, timeout=60):
        return H.wait_until(lambda: self.leader(among), timeout=timeout, interval=0.02,
                            what="a leader")

    def wait_voters(self, n, caught_up=None, timeout=120):
        """Until the leader lists @n voters, all reachable, and @caught_up (a
        node) has applied what the leader had committed when the wait began."""
        target = {}

        def ok():
            ld = self.leader()
            if ld is None:
                return False
            st = self.state(ld)
            if not st:
                return False
            voters = [m for m in st.get("members", []) if m.get("role") == "voter"]
            if len(voters) != n or not all(m.get("reachable") for m in st["members"]):
                return False
            if caught_up is not None:
                target.setdefault("commit", st.get("commit_index", 0))
                mine = self.state(caught_up)
                if not mine or mine.get("applied_index", 0) < target["commit"]:
                    return False
            return ld

        return H.wait_until(ok, timeout=timeout, interval=0.05,
                            what=f"{n} reachable voters" +
                                 (f" with {caught_up.name} caught up" if caught_up else ""))

    def restart_same_ports(self, node):
        """Start a stopped (or killed) node again with its data directory and
        the addresses it had. Returns (seconds to listen.json, seconds to
        /readyz 200), both from the spawn."""
        for flag, key in (("--gateway-listen", "gateway"), ("--control-listen", "control"),
                          ("--raft-listen", "raft")):
            if node.listen and node.listen.get(key):
                i = node.argv.index(flag)
                node.argv[i + 1] = node.listen[key]
        t0 = time.monotonic()
        node._spawn()
        node.listen = H.wait_until(node._read_listen, timeout=120, interval=0.005,
                                   what=f"{node.name} to write listen.json", alive=node)
        t_listen = time.monotonic()
        node.gateway_url = "http://" + node.listen["gateway"]
        node.control_url = "http://" + node.listen["control"]
        node.raft_addr = node.listen.get("raft")
        H.wait_until(lambda: H.http("GET", node.control_url + "/readyz", timeout=5)[0] == 200,
                     timeout=180, interval=0.005, what=f"{node.name} GET /readyz == 200",
                     alive=node)
        t_ready = time.monotonic()
        return t_listen - t0, t_ready - t0

    def close(self, show_logs=False):
        self.owner.close(show_logs=show_logs)


# --- 1. failover ------------------------------------------------------------


def measure_failover(cl, rounds, retry_ms):
    samples = []
    body = json.dumps({"display_name": "failover probe"}).encode()
    for i in range(rounds):
        leader = cl.wait_leader()
        survivors = [nd for nd in cl.nodes if nd is not leader]
        addrs = [nd.control_addr for nd in survivors]
        statuses = collections.Counter()
        attempts = 0
        # The kill: t0 is taken just before SIGKILL is sent.
        t0 = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL)
        t_ok = None
        while True:
            start = time.monotonic()
            addr = addrs[attempts % len(addrs)]
            attempts += 1
            try:
                status, data = one_request(addr, cl.token, "PUT",
                                           f"/admin/v1/tenants/fo-{i}-{attempts}", body=body,
                                           timeout=5)
            except (OSError, http_client.HTTPException) as e:
                status, data = type(e).__name__, b""
            if status in OK:
                t_ok = time.monotonic()
                break
            statuses[str(status)] += 1
            if start - t0 > 60:
                raise BenchError(f"failover {i + 1}: no write accepted within 60 s after the "
                                 f"kill; answers: {dict(statuses)}; last body {data[:300]!r}")
            delay = retry_ms / 1000.0 - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
        ms = (t_ok - t0) * 1000.0
        leader.proc.wait()
        new_leader = cl.wait_leader(survivors)
        log(f"failover {i + 1}/{rounds}: {ms:.0f} ms ({leader.name} killed, {new_leader.name} "
            f"leads; {attempts} attempts; refused: {dict(statuses) or 'none'})")
        sample = {"ms": round(ms, 1), "killed": leader.name, "new_leader": new_leader.name,
                  "attempts": attempts, "answers_before": dict(statuses)}
        # Back to three voters before the next kill.
        t_restart = time.monotonic()
        _, ready_s = cl.restart_same_ports(leader)
        cl.wait_voters(3, caught_up=leader)
        sample["rejoin_s"] = round(time.monotonic() - t_restart, 2)
        sample["restart_ready_s"] = round(ready_s, 2)
        samples.append(sample)
    ms = sorted(s["ms"] for s in samples)
    return {"samples": samples, "median_ms": round(_median(ms), 1), "max_ms": max(ms),
            "min_ms": min(ms), "retry_every_ms": retry_ms}


def _median(sorted_values):
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2


# --- 2. write throughput ----------------------------------------------------


def run_clients(addr, token, clients, duration, warmup, make_request):
    """@clients threads, each with one keep-alive connection, send
    make_request(thread, n) -> (method, path, body) back to back for warmup +
    duration seconds. Returns the figures of the answers that arrived in the
    measured window (after the warm-up)."""
    stop = threading.Event()
    per = [dict(lat=[], ends=[], statuses=collections.Counter(), errors=collections.Counter(),
                reconnects=0, first_error=None) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(t):
        r = per[t]
        c = Conn(addr, token)
        n = 0
        try:
            barrier.wait()
            while not stop.is_set():
                method, path, body = make_request(t, n)
                n += 1
                s = time.monotonic()
                try:
                    status, data = c.request(method, path, body)
                except (OSError, http_client.HTTPException) as e:
                    r["errors"][type(e).__name__] += 1
                    if r["first_error"] is None:
                        r["first_error"] = repr(e)
                    time.sleep(0.01)
                    continue
                e = time.monotonic()
                r["lat"].append((s, e - s, status))
                if status not in OK and r["first_error"] is None:
                    r["first_error"] = f"{status} {data[:300]!r}"
        finally:
            r["reconnects"] = c.reconnects
            c.close()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    barrier.wait()
    t_start = time.monotonic()
    w_start = t_start + warmup
    w_end = w_start + duration
    while time.monotonic() < w_end:
        time.sleep(min(0.1, max(0.0, w_end - time.monotonic())))
    stop.set()
    for th in threads:
        th.join(60)
    lat, statuses, errors = [], collections.Counter(), collections.Counter()
    first_error, reconnects = None, 0
    for r in per:
        reconnects += r["reconnects"]
        errors.update(r["errors"])
        first_error = first_error or r["first_error"]
        for s, d, status in r["lat"]:
            if w_start <= s + d <= w_end:
                statuses[status] += 1
                if status in OK:
                    lat.append(d * 1000.0)
    lat.sort()
    return {
        "clients": clients, "duration_s": duration, "warmup_s": warmup,
        "writes": len(lat), "writes_per_s": round(len(lat) / duration, 1),
        "p50_ms": _r(pct(lat, 50)), "p99_ms": _r(pct(lat, 99)), "max_ms": _r(lat[-1] if lat else None),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors), "reconnects": reconnects, "first_error": first_error,
    }


def _r(v, nd=2):
    return None if v is None else round(v, nd)


def measure_writes(cl, clients_list, duration, warmup):
    leader = cl.wait_leader()
    body = json.dumps({"display_name": "bench tenant"}).encode()
    out = []
    for c in clients_list:
        tag = f"w{c}"
        res = run_clients(leader.control_addr, cl.token, c, duration, warmup,
                          lambda t, n, tag=tag: ("PUT", f"/admin/v1/tenants/{tag}-{t}-{n}", body))
        res["leader"] = leader.name
        log(f"writes, {c} client(s): {res['writes_per_s']:.0f}/s, p50 {res['p50_ms']} ms, "
            f"p99 {res['p99_ms']} ms, answers {res['statuses']}, errors {res['errors'] or 'none'}")
        out.append(res)
    return out


# --- 3. snapshot and restore ------------------------------------------------


def load_keys(cl, leader, nkeys, clients, with_secret):
    """The provider, then @nkeys keys over @clients connections. Returns the
    load figures; raises BenchError when a key is refused."""
    status, data = one_request(
        leader.control_addr, cl.token, "PUT", "/admin/v1/providers/p1",
        json.dumps({"kind": "openai", "base_url": "https://api.openai.com/v1"}).encode(),
        timeout=30)
    if status not in OK:
        raise BenchError(f"PUT /admin/v1/providers/p1 -> {status}: {data[:300]!r}")
    nxt = iter(range(nkeys))
    lock = threading.Lock()
    per = [dict(done=0, retries=collections.Counter(), fail=None, lat=[], ends=[])
           for _ in range(clients)]
    progress = [0]

    def worker(t):
        r = per[t]
        c = Conn(leader.control_addr, cl.token, timeout=60)
        try:
            while r["fail"] is None:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                doc = {"provider": "p1", "name": f"key {i:06d}", "tags": ["bench"]}
                if with_secret:
                    doc["secret"] = f"sk-bench-{i:06d}-{os.urandom(16).hex()}"
                body = json.dumps(doc).encode()
                for attempt in range(20):
                    s = time.monotonic()
                    try:
                        status, data = c.request("PUT", f"/admin/v1/keys/k-{i:06d}", body)
                    except (OSError, http_client.HTTPException) as e:
                        status, data = type(e).__name__, b""
                    if status in OK:
                        e = time.monotonic()
                        r["lat"].append((e - s) * 1000.0)
                        r["ends"].append(e)
                        r["done"] += 1
                        break
                    r["retries"][str(status)] += 1
                    if status == 503 or isinstance(status, str):
                        time.sleep(0.05)
                        continue
                    r["fail"] = f"PUT /admin/v1/keys/k-{i:06d} -> {status}: {data[:300]!r}"
                    return
                else:
                    r["fail"] = f"PUT /admin/v1/keys/k-{i:06d}: no success in 20 attempts"
        finally:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    last = t0
    while any(th.is_alive() for th in threads):
        time.sleep(0.2)
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            log(f"  ... {sum(r['done'] for r in per):,} keys in {last - t0:.0f} s")
    elapsed = time.monotonic() - t0
    fails = [r["fail"] for r in per if r["fail"]]
    if fails:
        raise BenchError("loading keys failed: " + fails[0])
    done = sum(r["done"] for r in per)
    if done != nkeys:
        raise BenchError(f"loaded {done} keys, expected {nkeys}")
    retries = collections.Counter()
    lat = []
    for r in per:
        retries.update(r["retries"])
        lat.extend(r["lat"])
    lat.sort()
    # How the rate changes as the registry grows: keys/s over each tenth.
    ends = sorted(e for r in per for e in r["ends"])
    tenths = []
    prev_t, prev_n = t0, 0
    for k in range(1, 11):
        goal = nkeys * k // 10
        t = ends[goal - 1]
        tenths.append(round((goal - prev_n) / max(t - prev_t, 1e-6), 1))
        prev_t, prev_n = t, goal
    return {"keys": nkeys, "clients": clients, "seconds": round(elapsed, 1),
            "keys_per_s": round(nkeys / elapsed, 1), "keys_per_s_by_tenth": tenths,
            "p50_ms": _r(pct(lat, 50)),
            "p99_ms": _r(pct(lat, 99)), "retried_answers": dict(retries)}


SNAP_RE = re.compile(r"^snapshot at index (\d+): (\d+) bytes in (-?\d+) ms")
RESTORE_RE = re.compile(r"^restored snapshot at index (\d+): (\d+) bytes in (-?\d+) ms")


def log_matches(node, regex, offset=0):
    with open(node.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            m = regex.match(str(obj.get("msg", "")))
            if m:
                out.append(tuple(int(g) for g in m.groups()))
    return out


def snapshot_files(node):
    d = os.path.join(node.data_dir, "raft")
    out = {}
    for name in os.listdir(d):
        m = re.match(r"^snapshot-(\d+)-(\d+)-(\d+)(\.meta)?$", name)
        if m:
            idx = int(m.group(2))
            slot = out.setdefault(idx, {})
            slot["meta" if m.group(4) else "data"] = os.path.join(d, name)
    return out


def measure_snapshot(cl, nkeys, clients, with_secret):
    leader = cl.wait_leader()
    res = {"with_secret": with_secret, "node": leader.name}
    log(f"loading 1 provider + {nkeys:,} keys{' with secrets' if with_secret else ''} "
        f"through {leader.name} with {clients} clients")
    res["load"] = load_keys(cl, leader, nkeys, clients, with_secret)
    log(f"  loaded in {res['load']['seconds']} s ({res['load']['keys_per_s']:.0f} keys/s)")
    if cl.leader() is not leader:
        raise BenchError("leadership moved while loading keys")

    # Spot check: the first and last keys are there.
    for kid in (f"k-{0:06d}", f"k-{nkeys - 1:06d}"):
        status, _ = get_json(leader, cl.token, f"/admin/v1/keys/{kid}")
        if status != 200:
            raise BenchError(f"GET /admin/v1/keys/{kid} -> {status} after loading")

    # More writes (one tenant replaced over and over) until the leader has a
    # snapshot that covers everything loaded.
    st = cl.state(leader)
    loaded_index = st["commit_index"]
    fill_body = json.dumps({"display_name": "snapshot filler"}).encode()
    stop = threading.Event()
    filled = [0] * 4
    fill_err = []

    def filler(t):
        c = Conn(leader.control_addr, cl.token)
        try:
            while not stop.is_set():
                status, data = c.request("PUT", f"/admin/v1/tenants/snap-fill-{t}", fill_body)
                if status not in OK:
                    fill_err.append(f"{status} {data[:200]!r}")
                    return
                filled[t] += 1
        except (OSError, http_client.HTTPException) as e:
            fill_err.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=filler, args=(t,), daemon=True) for t in range(4)]
    for th in threads:
        th.start()
    try:
        st = H.wait_until(lambda: (lambda s: s if s and s.get("snapshot_index", 0) >= loaded_index
                                   else (bool(fill_err) and s))(cl.state(leader)),
                          timeout=120, interval=0.05,
                          what=f"{leader.name} to take a snapshot at index >= {loaded_index}")
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    if fill_err:
        raise BenchError("filler write failed: " + fill_err[0])
    snap_index = st["snapshot_index"]
    res["loaded_index"] = loaded_index
    res["filler_writes"] = sum(filled)

    # The snapshot file and the leader's log line about it.
    def files_ready():
        f = snapshot_files(leader).get(snap_index)
        return f if f and "data" in f and "meta" in f else None

    files = H.wait_until(files_ready, timeout=60, interval=0.05,
                         what=f"snapshot files for index {snap_index} in {leader.data_dir}/raft")
    taken = [m for m in log_matches(leader, SNAP_RE) if m[0] == snap_index]
    if not taken:
        H.wait_until(lambda: [m for m in log_matches(leader, SNAP_RE) if m[0] == snap_index],
                     timeout=30, what=f"the log line 'snapshot at index {snap_index}'")
        taken = [m for m in log_matches(leader, SNAP_RE) if m[0] == snap_index]
    time.sleep(0.2)  # let the writer finish; sizes are read after this
    res["snapshot"] = {
        "index": snap_index,
        "file": os.path.basename(files["data"]),
        "file_bytes": os.path.getsize(files["data"]),
        "meta_bytes": os.path.getsize(files["meta"]),
        "log_bytes": taken[0][1], "take_ms": taken[0][2],
    }
    all_taken = log_matches(leader, SNAP_RE)
    res["snapshots_taken_by_leader"] = len(all_taken)
    log(f"  snapshot at index {snap_index}: file {res['snapshot']['file_bytes']:,} bytes "
        f"(+ {res['snapshot']['meta_bytes']} meta), taken in {taken[0][2]} ms")

    # Restart the leader: SIGTERM, start again, read its restore line.
    t0 = time.monotonic()
    leader.stop(signal.SIGTERM, timeout=60)
    stop_s = time.monotonic() - t0
    offset = os.path.getsize(leader.log_path)
    listen_s, ready_s = cl.restart_same_ports(leader)
    restored = log_matches(leader, RESTORE_RE, offset)
    if not restored:
        raise BenchError(f"{leader.name} restarted without logging 'restored snapshot'")
    r_index, r_bytes, r_ms = restored[0]
    res["restart"] = {
        "stop_s": round(stop_s, 3), "restored_index": r_index, "restored_bytes": r_bytes,
        "restore_ms": r_ms, "start_to_listen_ms": round(listen_s * 1000, 1),
        "start_to_ready_ms": round(ready_s * 1000, 1),
    }
    log(f"  restart: restored index {r_index} ({r_bytes:,} bytes) in {r_ms} ms; "
        f"/readyz 200 after {ready_s * 1000:.0f} ms from spawn")
    cl.wait_voters(3, caught_up=leader)
    return res


# --- machine and build ------------------------------------------------------


class CpuMeter:
    """CPU time the whole machine spent busy (/proc/stat) against what this
    run's own processes used (this script, the nodes it reaped, the nodes
    still running): what is left was used by other processes, which on a
    shared machine competes with the nodes being measured."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()

    def _busy(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except OSError:
            return 0.0
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / self.hz

    def _own(self):
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        for o in Owner.live:
            for p in o.harness.procs:
                try:
                    with open(f"/proc/{p.pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    own += (int(fields[11]) + int(fields[12])) / self.hz
                except (OSError, IndexError, ValueError, AttributeError):
                    pass
        return own

    def read(self):
        wall = time.monotonic() - self.t0
        busy = self._busy() - self.busy0
        own = self._own() - self.own0
        ncpu = os.cpu_count() or 1
        return {"wall_s": round(wall, 1), "cpu_capacity_s": round(wall * ncpu, 1),
                "busy_s": round(busy, 1), "this_run_s": round(own, 1),
                "other_processes_s": round(max(0.0, busy - own), 1)}


def machine_info():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"nproc": ncpu, "cpu_model": model, "kernel": platform.release(),
            "memory_mib": mem, "python": platform.python_version()}


def build_info(bdir):
    out = {"bin_dir": bdir, "keyplaned": os.path.join(bdir, "keyplaned")}
    try:
        out["version"] = subprocess.run([out["keyplaned"], "--version"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
    except OSError:
        out["version"] = None
    cache = os.path.join(os.path.dirname(bdir), "CMakeCache.txt")
    try:
        with open(cache) as f:
            for line in f:
                m = re.match(r"^(CMAKE_BUILD_TYPE|KP_[A-Z_]+):[A-Z]+=(.*)$", line.strip())
                if m:
                    out[m.group(1)] = m.group(2)
    except OSError:
        pass
    return out


def ensure_binaries(werror):
    bdir = os.environ.get("KEYPLANE_BIN_DIR")
    if bdir:
        return bdir
    bdir = DEFAULT_BIN_DIR
    os.environ["KEYPLANE_BIN_DIR"] = bdir
    if os.access(os.path.join(bdir, "keyplaned"), os.X_OK):
        return bdir
    build = os.path.dirname(bdir)
    log(f"no keyplaned in {bdir}: building Release into {build}")
    cmds = [["cmake", "-S", REPO, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DKP_TESTS=OFF",
             f"-DKP_WERROR={'ON' if werror else 'OFF'}"],
            ["cmake", "--build", build, "-j2"]]
    for cmd in cmds:
        cp = subprocess.run(cmd, capture_output=True, text=True)
        if cp.returncode != 0:
            tail = "\n".join((cp.stdout + cp.stderr).splitlines()[-30:])
            raise SystemExit(f"raft-figures: {' '.join(cmd)} failed:\n{tail}\n"
                             "(with a compiler whose warnings the sources do not pass yet, "
                             "--build-no-werror builds without -Werror)")
    return bdir


# --- report -----------------------------------------------------------------


def fmt_num(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def report_text(r):
    lines = []
    m, b, cfg = r["machine"], r["build"], r["settings"]
    lines.append("Raft registry figures: 3 keyplaned nodes on loopback")
    lines.append(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
                 f"{fmt_num(m['memory_mib'])} MiB RAM")
    lines.append(f"binary:  {b['keyplaned']} ({b.get('version')}; "
                 f"CMAKE_BUILD_TYPE={b.get('CMAKE_BUILD_TYPE', '?')})")
    lines.append(f"settings: election_timeout_ms {cfg.get('election_timeout_ms')}, "
                 f"heartbeat_timeout_ms {cfg.get('heartbeat_timeout_ms')}, "
                 f"snapshot_threshold {cfg.get('snapshot_threshold')}, "
                 f"snapshot_trailing {cfg.get('snapshot_trailing')}, workers {cfg.get('workers')}")
    lines.append("")
    rows = []
    fo = r.get("failover")
    if fo:
        n = len(fo["samples"])
        rows.append((f"leader failover, kill -9 -> first write accepted ({n} kills)",
                     f"median {fo['median_ms']:.0f} ms, max {fo['max_ms']:.0f} ms"))
    for w in r.get("writes", []):
        rows.append((f"admin writes committed, {w['clients']} client(s), {w['duration_s']:g} s",
                     f"{fmt_num(w['writes_per_s'])} writes/s, p50 {w['p50_ms']:.2f} ms, "
                     f"p99 {w['p99_ms']:.2f} ms"))
    for s in r.get("snapshots", []):
        what = f"{s['load']['keys']:,} keys" + (" with a secret each" if s["with_secret"] else "")
        sn, rs = s["snapshot"], s["restart"]
        rows.append((f"load {what} ({s['load']['clients']} clients)",
                     f"{s['load']['seconds']:.1f} s, {fmt_num(s['load']['keys_per_s'])} keys/s"))
        rows.append((f"snapshot file, {what}",
                     f"{sn['file_bytes'] / 1e6:.2f} MB ({sn['file_bytes']:,} B; "
                     f".meta {sn['meta_bytes']:,} B)"))
        rows.append((f"snapshot taken (log), {what}",
                     f"{sn['log_bytes']:,} B in {sn['take_ms']} ms"))
        rows.append((f"snapshot restored on restart (log), {what}",
                     f"{rs['restored_bytes']:,} B in {rs['restore_ms']} ms"))
        rows.append((f"restart: process start -> /readyz 200, {what}",
                     f"{rs['start_to_ready_ms']:.0f} ms"))
    if r.get("secrets_skipped"):
        rows.append(("keys with secrets", "skipped: " + r["secrets_skipped"]))
    w0 = max(len(a) for a, _ in rows) if rows else 10
    lines.append(f"{'figure':<{w0}}  value")
    lines.append(f"{'-' * w0}  {'-' * 40}")
    for a, v in rows:
        lines.append(f"{a:<{w0}}  {v}")
    if fo:
        lines.append("")
        lines.append("failover samples (ms, in order): " +
                     ", ".join(f"{s['ms']:.0f}" for s in fo["samples"]))
        refused = collections.Counter()
        for s in fo["samples"]:
            refused.update(s["answers_before"])
        lines.append(f"answers before the first accepted write (all kills): "
                     f"{dict(refused) or 'none'}; retried every {fo['retry_every_ms']} ms, "
                     f"alternating between the 2 survivors")
        lines.append("restart of the killed node -> back as a caught-up voter (s): " +
                     ", ".join(f"{s['rejoin_s']:.1f}" for s in fo["samples"]))
    for w in r.get("writes", []):
        if w["errors"] or any(k not in ("200", "201") for k in w["statuses"]):
            lines.append(f"writes with {w['clients']} client(s): answers {w['statuses']}, "
                         f"errors {w['errors']}, first problem: {w['first_error']}")
    for s in r.get("snapshots", []):
        rs = s["restart"]
        lines.append(f"snapshot run{' (secrets)' if s['with_secret'] else ''}: load p50/p99 "
                     f"{s['load']['p50_ms']}/{s['load']['p99_ms']} ms per key; "
                     f"snapshot index {s['snapshot']['index']} (keys loaded by index "
                     f"{s['loaded_index']}, {s['filler_writes']} filler writes); SIGTERM stop "
                     f"{rs['stop_s']:.2f} s; start -> listen.json {rs['start_to_listen_ms']:.0f} ms"
                     + (f"; retried answers {s['load']['retried_answers']}"
                        if s['load']['retried_answers'] else ""))
        lines.append("  load rate by tenth of the keys (keys/s): " +
                     ", ".join(fmt_num(v) for v in s["load"]["keys_per_s_by_tenth"]))
    c = r["cpu"]
    lines.append(f"total run time {r['elapsed_s']:.0f} s; load average at start "
                 f"{r['machine'].get('loadavg_at_start')}; CPU busy {c['busy_s']:.0f} s of "
                 f"{c['cpu_capacity_s']:.0f} s, of which this run {c['this_run_s']:.0f} s and other "
                 f"processes {c['other_processes_s']:.0f} s")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description="Raft registry figures on 3 loopback keyplaned nodes")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--failovers", type=int, default=10, help="leader kills (default 10)")
    p.add_argument("--retry-ms", type=float, default=5.0,
                   help="pause between write attempts after a kill (default 5)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per write-throughput measurement (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (default 1)")
    p.add_argument("--clients", default="1,16", help="write-throughput client counts (default 1,16)")
    p.add_argument("--keys", type=int, default=100000, help="keys for the snapshot (default 100000)")
    p.add_argument("--load-clients", type=int, default=16,
                   help="concurrent clients loading keys (default 16)")
    p.add_argument("--snapshot-threshold", type=int, default=1024,
                   help="snapshot_threshold of the snapshot cluster (default 1024)")
    p.add_argument("--secrets", choices=("auto", "on", "off"), default="auto",
                   help="also load keys with a secret each: auto = only if the time budget "
                        "allows (default)")
    p.add_argument("--budget", type=float, default=570.0,
                   help="seconds the whole run should stay under, for --secrets auto")
    p.add_argument("--build-no-werror", action="store_true",
                   help="when building build-release, pass -DKP_WERROR=OFF")
    return p.parse_args(argv)


def main(argv):
    global H, QUIET
    args = parse_args(argv)
    QUIET = args.quiet
    t_begin = time.monotonic()
    bdir = ensure_binaries(not args.build_no_werror)
    os.environ["KEYPLANE_BIN_DIR"] = bdir
    H = load_harness()
    H.bin_path("keyplaned")  # fails early, saying how to build, when missing

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    result = {"command": " ".join(["bench/raft-figures.py"] + list(argv)),
              "machine": machine_info(), "build": build_info(bdir)}
    try:
        with open("/proc/loadavg") as f:
            result["machine"]["loadavg_at_start"] = " ".join(f.read().split()[:3])
    except OSError:
        pass
    meter = CpuMeter()
    base_cfg = {"snapshot_threshold": 1024, "snapshot_trailing": 128}
    failed = True
    try:
        # 1 and 2 on one cluster with the shipped defaults.
        log("starting 3 nodes (defaults: election 1 s, heartbeat 100 ms)")
        cl = Cluster("failover", base_cfg).start(3)
        result["settings"] = cl.effective_config()
        if args.failovers > 0:
            result["failover"] = measure_failover(cl, args.failovers, args.retry_ms)
        clients = [int(x) for x in args.clients.split(",") if x.strip()]
        if clients and args.duration > 0:
            result["writes"] = measure_writes(cl, clients, args.duration, args.warmup)
        cl.close()

        # 3 on a fresh cluster, so the snapshot holds the keys and little else.
        result["snapshots"] = []
        if args.keys > 0:
            snap_cfg = dict(base_cfg, snapshot_threshold=args.snapshot_threshold)
            log(f"starting a fresh cluster (snapshot_threshold {args.snapshot_threshold})")
            cl = Cluster("snapshot", snap_cfg).start(3)
            result["snapshot_settings"] = {k: cl.effective_config().get(k) for k in
                                           ("snapshot_threshold", "snapshot_trailing")}
            plain = measure_snapshot(cl, args.keys, args.load_clients, with_secret=False)
            result["snapshots"].append(plain)
            cl.close()

            run_secrets = args.secrets == "on"
            if args.secrets == "auto":
                # A key with a secret is two Raft entries and a sealing: guess
                # 2.5 times the plain load, plus the fixed costs seen so far.
                left = args.budget - (time.monotonic() - t_begin)
                guess = plain["load"]["seconds"] * 2.5 + 30
                run_secrets = guess < left
                if not run_secrets:
                    result["secrets_skipped"] = (
                        f"the plain load took {plain['load']['seconds']:.0f} s; with secrets "
                        f"(two Raft entries per key) it would take about {guess:.0f} s, more "
                        f"than the {left:.0f} s left of the {args.budget:.0f} s budget")
            elif args.secrets == "off":
                result["secrets_skipped"] = "--secrets off"
            if run_secrets:
                log("starting a fresh cluster for keys with secrets")
                cl = Cluster("snapshot-secrets", snap_cfg).start(3)
                result["snapshots"].append(
                    measure_snapshot(cl, args.keys, args.load_clients, with_secret=True))
                cl.close()
        failed = False
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: stopping every process and removing the temporary "
                         "directories\n")
        failed = False
        Owner.close_all()
        return 130
    except (BenchError, AssertionError, H.HarnessError) as e:
        sys.stderr.write(f"\nraft-figures: {e}\n")
        Owner.close_all(show_logs=True)
        return 1
    finally:
        # Whatever happened (another exception included): no process or
        # temporary directory outlives the run.
        Owner.close_all(show_logs=failed)
    result["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    result["cpu"] = meter.read()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(report_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
