"""Metering end to end: routers spool usage events, ship sealed segments to
every meter, meters compact them into rollups and answer queries.

Every test counts by request id: each call that got an answer must appear
exactly once in the meter. Waits are on conditions (the meter's totals, the
files on disk), never on fixed sleeps.
"""

import csv
import glob
import hashlib
import hmac
import io
import json
import os
import secrets
import signal
import subprocess
import threading
import time
import unittest
import urllib.parse

from harness import Harness, bin_path, http, metric_value, wait_until

ADMIN = "/admin/v1"
MASTER = secrets.token_hex(32)
CONFIG = {"spool_seal_age_ms": "200ms", "workers": 2}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def cluster_secret(master_hex):
    return hmac.new(bytes.fromhex(master_hex), b"keyplane internal v1",
                    hashlib.sha256).hexdigest()


class Metered:
    """A bootstrap node (a meter) with a mock provider, a pool and an app
    token; more nodes may join."""

    def __init__(self, test, config=None):
        self.h = Harness(test)
        self.mock = self.h.start_mock()
        cfg = dict(CONFIG)
        cfg.update(config or {})
        self.cfg = cfg
        self.n1 = self.h.start_node("n1", config=cfg, env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: self.n1.admin_token, what="admin.token", alive=self.n1)
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": "sk-mock-meter-a-0001"})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        self.admin("PUT", "/prices/gpt-4o-mini", {"input_per_mtok": 150_000_000,
                                                  "output_per_mtok": 600_000_000})
        status, _, body = self.n1.control("POST", ADMIN + "/tokens",
                                          body={"role": "app", "tenant": "acme", "name": "app"})
        assert status == 201, body
        self.token = json.loads(body)["token"]

    def admin(self, method, path, body=None, node=None):
        node = node or self.n1
        hdrs = {"Authorization": "Bearer " + self.n1.admin_token}
        status, _, raw = node.control(method, ADMIN + path, body=body, headers=hdrs)
        assert status in (200, 201), (method, path, status, raw)
        return json.loads(raw) if raw else None

    def join(self, name, meter):
        cfg = dict(self.cfg)
        cfg["meter"] = "yes" if meter else "no"
        return self.h.start_node(name, config=cfg, args=["--join", self.n1.listen["control"]],
                                 env={"KEYPLANE_MASTER_KEY": MASTER})

    def call(self, node, rid=None):
        hdrs = {"Authorization": "Bearer " + self.token, "Content-Type": "application/json"}
        if rid:
            hdrs["X-Request-Id"] = rid
        status, headers, body = http("POST", node.gateway_url + "/v1/chat/completions",
                                     body=CHAT, headers=hdrs, timeout=30)
        return status, headers.get("x-request-id"), body

    def usage(self, node=None, **params):
        q = urllib.parse.urlencode(params, doseq=True)
        return self.admin("GET", "/usage?" + q, node=node)

    def total_requests(self, node=None):
        return self.usage(node=node, granularity="total", **{"from": "2025-12-15"})["totals"][
            "requests"]

    def events(self, node=None, **params):
        params.setdefault("from", "2020-01-01")
        params.setdefault("limit", 10000)
        q = urllib.parse.urlencode(params)
        return self.admin("GET", "/usage/events?" + q, node=node)["events"]


class SingleNodeTest(unittest.TestCase):
    def test_calls_reach_the_rollups_and_the_event_search_once_each(self):
        m = Metered(self)
        rids = []
        for i in range(40):
            status, rid, body = m.call(m.n1, rid=f"meter-one-{i:03d}")
            self.assertEqual(status, 200, body)
            rids.append(rid)
        wait_until(lambda: m.total_requests() == 40, what="40 requests metered", alive=m.n1)
        events = m.events()
        self.assertEqual(sorted(e["request_id"] for e in events), sorted(rids))
        one = m.events(request_id=rids[7])
        self.assertEqual(len(one), 1)
        self.assertEqual(one[0]["tenant"], "acme")
        self.assertEqual(one[0]["key_id"], "key-a")

        got = m.usage(granularity="day", group_by="tenant,model", **{"from": "2025-12-15"})
        self.assertEqual(got["group_by"], ["tenant", "model"])
        self.assertEqual(sum(r["requests"] for r in got["rows"]), 40)
        self.assertTrue(all(r["tenant"] == "acme" and r["model"] == "gpt-4o-mini"
                            for r in got["rows"]))
        cost = sum(e["cost"] for e in events)
        self.assertGreater(cost, 0)
        self.assertEqual(got["totals"]["cost_nanousd"], cost)
        self.assertEqual(got["totals"]["tokens_in"], sum(e["tokens_in"] for e in events))

        # CSV: the same numbers, RFC 4180, by format= or by Accept.
        status, headers, raw = m.n1.control(
            "GET", ADMIN + "/usage?granularity=total&group_by=model&from=2025-12-15&format=csv",
            headers={"Authorization": "Bearer " + m.n1.admin_token})
        self.assertEqual(status, 200, raw)
        self.assertTrue(headers["content-type"].startswith("text/csv"))
        self.assertTrue(raw.endswith(b"\r\n"))
        rows = list(csv.DictReader(io.StringIO(raw.decode())))
        self.assertEqual(len(rows), 1)
        self.assertEqual(int(rows[0]["requests"]), 40)
        self.assertEqual(rows[0]["model"], "gpt-4o-mini")
        status, headers, raw2 = m.n1.control(
            "GET", ADMIN + "/usage?granularity=total&group_by=model&from=2025-12-15",
            headers={"Authorization": "Bearer " + m.n1.admin_token, "Accept": "text/csv"})
        self.assertEqual(raw2, raw)

        # Bad queries say which parameter.
        for q, field in (("granularity=week", "granularity"), ("group_by=colour", "group_by"),
                         ("from=yesterday", "from"), ("nope=1", "nope")):
            status, _, raw = m.n1.control("GET", ADMIN + "/usage?" + q,
                                          headers={"Authorization": "Bearer " + m.n1.admin_token})
            self.assertEqual(status, 400, (q, raw))
            self.assertIn(field, json.loads(raw)["error"]["message"], q)

    def test_uploads_are_checked_and_idempotent(self):
        m = Metered(self)
        seg = m.h.path("gen.kpseg")
        subprocess.run([bin_path("kpseg"), "gen", seg, "--events", "300", "--seed", "7",
                        "--node", "ext-router", "--seq", "5"], check=True)
        data = read(seg)
        url = m.n1.control_url + "/internal/v1/segments"
        auth = {"Authorization": "Bearer " + cluster_secret(MASTER),
                "Content-Type": "application/vnd.keyplane.segment"}
        status, _, body = http("POST", url, body=data, headers=auth)
        self.assertEqual((status, json.loads(body)["result"]), (200, "stored"))
        status, _, body = http("POST", url, body=data, headers=auth)
        self.assertEqual((status, json.loads(body)["result"]), (200, "duplicate"))
        # Same node and sequence, other bytes: refused.
        other = m.h.path("other.kpseg")
        subprocess.run([bin_path("kpseg"), "gen", other, "--events", "10", "--seed", "8",
                        "--node", "ext-router", "--seq", "5"], check=True)
        status, _, body = http("POST", url, body=read(other), headers=auth)
        self.assertEqual(status, 409, body)
        # Damaged: a flipped byte, a cut, an open segment, garbage.
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x40
        opened = m.h.path("open.kpseg")
        subprocess.run([bin_path("kpseg"), "gen", opened, "--events", "10", "--seed", "9",
                        "--node", "ext-router", "--seq", "6", "--open"], check=True)
        for bad in (bytes(flipped), data[:len(data) - 10], read(opened),
                    b"not a segment"):
            status, _, body = http("POST", url, body=bad, headers=auth)
            self.assertEqual(status, 400, body)
            self.assertEqual(json.loads(body)["error"]["code"], "invalid_segment")
        # No cluster secret, no entry.
        status, _, _ = http("POST", url, body=data, headers={"Authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        # The stored segment's 300 events are counted once.
        wait_until(lambda: m.total_requests() == 300, what="300 events metered", alive=m.n1)
        summary = json.loads(subprocess.run([bin_path("kpseg"), "summary", "--json", seg],
                                            check=True, capture_output=True).stdout)
        self.assertEqual(summary["events"], 300)

    def test_a_stored_segment_damaged_on_disk_is_set_aside(self):
        m = Metered(self)
        wait_until(lambda: m.total_requests() == 0, what="the meter answers", alive=m.n1)
        # A segment damaged after it was stored (bit rot): written straight
        # into the store while the node is down, found at the next start.
        seg = m.h.path("rot.kpseg")
        subprocess.run([bin_path("kpseg"), "gen", seg, "--events", "50", "--seed", "3",
                        "--node", "ext-router", "--seq", "9"], check=True)
        data = bytearray(read(seg))
        data[len(data) // 2] ^= 0x01
        m.n1.stop()
        store = os.path.join(m.n1.data_dir, "meter", "segments", "ext-router")
        os.makedirs(store, exist_ok=True)
        with open(os.path.join(store, "00000000000000000009.kpseg"), "wb") as f:
            f.write(data)
        m.n1.start()
        wait_until(lambda: os.path.exists(os.path.join(
            m.n1.data_dir, "meter", "quarantine", "ext-router-00000000000000000009.kpseg.why")),
            what="the damaged segment quarantined", alive=m.n1)
        # Compaction goes on: a good segment after it is counted.
        good = m.h.path("good.kpseg")
        subprocess.run([bin_path("kpseg"), "gen", good, "--events", "20", "--seed", "4",
                        "--node", "ext-router", "--seq", "10"], check=True)
        status, _, body = http("POST", m.n1.control_url + "/internal/v1/segments",
                               body=read(good),
                               headers={"Authorization": "Bearer " + cluster_secret(MASTER)})
        self.assertEqual(status, 200, body)
        wait_until(lambda: m.total_requests() == 20, what="the good segment metered", alive=m.n1)


class SpoolFullTest(unittest.TestCase):
    """A spool at its cap (no meter takes its segments): refuse answers
    calls 503 and /readyz says why; serve answers them and counts the
    usage events it drops."""

    def start(self, mode):
        h = Harness(self)
        data = h.path(mode, "data")
        os.makedirs(os.path.join(data, "spool"), mode=0o700)
        # 1.2 MiB of sealed segments already waiting: over the 1 MiB cap.
        subprocess.run([bin_path("kpseg"), "gen",
                        os.path.join(data, "spool", "00000000000000000001.kpseg"),
                        "--events", "40000", "--seed", "5", "--node", mode], check=True)
        mock = h.start_mock()
        node = h.start_node(mode, data_dir=data, wait_ready=False,
                            config={"meter": "no", "spool_max_bytes": "1MiB",
                                    "spool_full": mode, "workers": 1},
                            env={"KEYPLANE_MASTER_KEY": MASTER})
        wait_until(lambda: node.admin_token, what="admin.token", alive=node)
        hdrs = {"Authorization": "Bearer " + node.admin_token}
        # Not waiting for /readyz (a full spool set to refuse keeps it 503):
        # for the cluster's first commands to apply, then.
        wait_until(lambda: node.control("GET", ADMIN + "/tenants", headers=hdrs)[0] == 200,
                   what="the cluster initialised", alive=node)
        for path, body in (("/providers/mock", {"kind": "openai-compatible",
                                                "base_url": mock.url + "/v1",
                                                "allow_insecure": True}),
                           ("/tenants/acme", {"display_name": "Acme"}),
                           ("/keys/key-a", {"provider": "mock", "secret": "sk-mock-spool-0001"}),
                           ("/pools/default", {"members": [{"key": "key-a"}]})):
            status, _, raw = node.control("PUT", ADMIN + path, body=body, headers=hdrs)
            self.assertIn(status, (200, 201), raw)
        status, _, raw = node.control("POST", ADMIN + "/tokens", headers=hdrs,
                                      body={"role": "app", "tenant": "acme", "name": "app"})
        self.assertEqual(status, 201, raw)
        token = json.loads(raw)["token"]

        def call():
            return http("POST", node.gateway_url + "/v1/chat/completions", body=CHAT,
                        headers={"Authorization": "Bearer " + token,
                                 "Content-Type": "application/json"})
        return node, call

    def test_refuse(self):
        node, call = self.start("refuse")
        wait_until(lambda: http("GET", node.control_url + "/readyz")[2] ==
                   b'{"status":"spool","reason":"the usage spool is full and set to refuse calls"}',
                   what="/readyz names the full spool", alive=node)
        status, headers, raw = call()
        self.assertEqual(status, 503, raw)
        self.assertEqual(headers["x-keyplane-error"], "usage_spool_full", raw)

    def test_serve(self):
        node, call = self.start("serve")
        status, _, raw = call()
        self.assertEqual(status, 200, raw)
        wait_until(lambda: metric_value(node.metrics(), "keyplane_usage_events_dropped_total") >= 1,
                   what="the dropped event counted", alive=node)
        self.assertEqual(http("GET", node.control_url + "/readyz")[0], 200)


class ClusterctlTest(unittest.TestCase):
    """clusterctl usage, usage export and reconcile against a live meter."""

    def test_usage_export_and_reconcile(self):
        m = Metered(self)
        for i in range(30):
            status, _, body = m.call(m.n1, rid=f"ctl-{i:03d}")
            self.assertEqual(status, 200, body)
        wait_until(lambda: m.total_requests() == 30, what="30 requests metered", alive=m.n1)
        env = {"KEYPLANE_SERVER": m.n1.control_url, "KEYPLANE_TOKEN": m.n1.admin_token}
        today = time.strftime("%Y-%m-%d", time.gmtime())
        tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))

        # The meter flag of a member, off and on again.
        for flag, want in (("off", False), ("on", True)):
            cp = m.h.run(["clusterctl", "members", "meter", "n1", flag], env=env)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertEqual(m.admin("GET", "/members/n1")["meter"], want)

        cp = m.h.run(["clusterctl", "usage", "--from", today, "--to", tomorrow,
                      "--group-by", "model"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("gpt-4o-mini", cp.stdout)
        self.assertIn("30", cp.stdout)

        # The export holds exactly what the API's CSV holds.
        out = m.h.path("export.csv")
        cp = m.h.run(["clusterctl", "usage", "export", "--from", today, "--to", tomorrow,
                      "--granularity", "hour", "--group-by", "tenant,model", "--format", "csv",
                      "-o", out], env=env)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        q = f"/usage?from={today}&to={tomorrow}&granularity=hour&group_by=tenant,model&format=csv"
        status, _, api_csv = m.n1.control("GET", ADMIN + q,
                                          headers={"Authorization": "Bearer " + m.n1.admin_token})
        self.assertEqual(status, 200)
        self.assertEqual(read(out), api_csv)

        # A vendor bill built from the metered cost matches...
        day = m.usage(granularity="day", group_by="model", **{"from": today, "to": tomorrow})
        rows = day["rows"]
        self.assertEqual(len(rows), 1)
        bill = ["start_time_iso,amount_value,amount_currency,line_item"]
        for r in rows:
            bill.append(f"{r['start']},{r['cost_usd']},usd,\"{r['model']}, input\"")
        path = m.h.write_file("bill.csv", "\n".join(bill) + "\n")
        cp = m.h.run(["clusterctl", "reconcile", "--vendor", "openai", "--file", path,
                      "--provider", "mock"], env=env)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        # ... and one 3% higher is reported, with a non-zero exit.
        cost = rows[0]["cost_nanousd"] * 103 // 100
        bill[1] = (f"{rows[0]['start']},{cost // 10**9}.{cost % 10**9:09d},usd,"
                   f"\"{rows[0]['model']}, input\"")
        path = m.h.write_file("bill3.csv", "\n".join(bill) + "\n")
        cp = m.h.run(["clusterctl", "reconcile", "--vendor", "openai", "--file", path,
                      "--provider", "mock"], env=env)
        self.assertEqual(cp.returncode, 1, cp.stdout + cp.stderr)
        self.assertIn("gpt-4o-mini", cp.stdout)


class ClusterTest(unittest.TestCase):
    def test_router_kill_meter_restart_and_two_identical_meters(self):
        m = Metered(self)
        n2 = m.join("n2", meter=True)
        n3 = m.join("n3", meter=False)
        wait_until(lambda: len(m.admin("GET", "/members")["items"]) == 3, what="3 members")
        members = {x["id"]: x for x in m.admin("GET", "/members")["items"]}
        self.assertTrue(members["n1"]["meter"])
        self.assertTrue(members["n2"]["meter"])
        self.assertFalse(members["n3"]["meter"])

        answered = {}  # request id -> monotonic time of the answer
        lock = threading.Lock()
        stop = threading.Event()

        def load(worker):
            i = 0
            while not stop.is_set():
                rid = f"kill-{worker}-{i:05d}"
                i += 1
                try:
                    status, got, _ = m.call(n3, rid=rid)
                except OSError:
                    continue
                if status == 200:
                    with lock:
                        answered[got] = time.monotonic()

        threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 150, what="150 calls answered", alive=n3)
        n3.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        n3.wait_exit()
        stop.set()
        for t in threads:
            t.join()
        # The meter restarts while the router is down; the router comes back
        # and ships what it had sealed or recovered.
        n1_before = len(answered)
        m.n1.restart(keep_ports=True)
        n3.restart(keep_ports=True)

        for i in range(50):
            status, rid, body = m.call(n3, rid=f"after-{i:03d}")
            self.assertEqual(status, 200, body)
            answered[rid] = time.monotonic()

        def metered_ids(node):
            return [e["request_id"] for e in m.events(node=node)]

        def settled():
            ids = metered_ids(m.n1)
            return len(set(ids) & set(answered)) >= len(answered) - 100 and \
                all(r in ids for r in answered if r.startswith("after-"))

        wait_until(settled, timeout=120, what="the answered calls metered", alive=m.n1)
        ids = metered_ids(m.n1)
        self.assertEqual(len(ids), len(set(ids)), "an event metered twice")
        missing = [r for r in answered if r not in set(ids)]
        oldest = max((killed_at - answered[r] for r in missing), default=0.0)
        print(f"\n{n1_before} calls answered before kill -9 of the router; "
              f"{len(missing)} of them not metered (unsynced at the kill; the oldest answered "
              f"{oldest * 1000:.0f} ms before it)")
        for r in missing:
            self.assertTrue(r.startswith("kill-"), r)
            self.assertLess(killed_at - answered[r], 1.0,
                            f"{r} was answered long before the kill and is not metered")
        extra = [r for r in ids if r not in answered]
        self.assertTrue(all(r.startswith("kill-") for r in extra), extra[:5])

        # Both meters hold the same events and byte-identical rollups.
        wait_until(lambda: sorted(metered_ids(n2)) == sorted(ids), timeout=60,
                   what="meter n2 has every event", alive=n2)

        def same_rollups():
            a = sorted(glob.glob(os.path.join(m.n1.data_dir, "meter/rollups/*.kpru")))
            b = sorted(glob.glob(os.path.join(n2.data_dir, "meter/rollups/*.kpru")))
            if not a or [os.path.basename(x) for x in a] != [os.path.basename(x) for x in b]:
                return False
            return all(read(x) == read(y) for x, y in zip(a, b))

        # Both meters compact on their own: wait until each has compacted every
        # event (equal files can be a moment both have reached, not the end).
        wait_until(lambda: m.total_requests(node=m.n1) == len(ids) and
                   m.total_requests(node=n2) == len(ids), timeout=60,
                   what="both meters' rollups count every metered event")
        wait_until(same_rollups, timeout=60, what="identical rollup files on both meters")
        # n1's restart (meter: auto) rewrote its member record and kept it a meter.
        self.assertTrue(m.admin("GET", "/members/n1")["meter"])
        q = {"granularity": "hour", "group_by": "tenant,key", "from": "2025-12-15"}
        self.assertEqual(m.usage(node=m.n1, **q)["rows"], m.usage(node=n2, **q)["rows"])
        # A router-only node relays queries to a meter.
        self.assertEqual(m.usage(node=n3, **q)["rows"], m.usage(node=m.n1, **q)["rows"])
        # Everything shipped: the router's spool is empty.
        wait_until(lambda: not glob.glob(os.path.join(n3.data_dir, "spool/*.kpseg")),
                   what="n3's spool drained")


if __name__ == "__main__":
    unittest.main()
