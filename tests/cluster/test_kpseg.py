"""kpseg on real files: gen writes deterministic segments, validate, dump and
summary read them back, and damaged copies (truncated, a flipped byte, not a
segment at all, missing) give exit code 1 with "FILE: offset N: what" on
stderr after whatever was still valid. Usage errors give exit code 2.

The binaries come from KEYPLANE_BIN_DIR (see harness.py); every file lives in
the harness's temporary directory.
"""

import json
import os
import re
import unittest

from harness import Harness

EVENTS = 400


class KpsegTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def kpseg(self, *args):
        return self.h.run(["kpseg", *args])

    def gen(self, name, events=EVENTS, seed=7, *extra):
        path = self.h.path(name)
        cp = self.kpseg("gen", path, "--events", str(events), "--seed", str(seed),
                        "--frame-bytes", "8192", *extra)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        return path

    def copy(self, src, name, transform):
        with open(src, "rb") as f:
            data = transform(bytearray(f.read()))
        path = self.h.path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def summary_json(self, path):
        cp = self.kpseg("summary", "--json", path)
        return cp, json.loads(cp.stdout.splitlines()[0]) if cp.stdout else None

    # -- whole segments --

    def test_gen_then_validate_dump_summary(self):
        path = self.gen("a.seg")
        cp = self.kpseg("validate", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        m = re.fullmatch(rf"{re.escape(path)}: ok \(sealed, (\d+) frames, {EVENTS} events\)\n",
                         cp.stdout)
        self.assertIsNotNone(m, cp.stdout)
        frames = int(m.group(1))
        self.assertGreater(frames, 2)

        cp = self.kpseg("dump", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        events = [json.loads(line) for line in cp.stdout.splitlines()]
        self.assertEqual(len(events), EVENTS)
        for key in ("time", "time_ms", "request_id", "node", "key_id", "pool", "tenant",
                    "project", "feature", "provider", "model_requested", "model_served",
                    "tokens_in", "tokens_out", "tokens_cached", "tokens_estimated", "cost",
                    "ttfb_us", "total_us", "status", "error_class", "retries", "streamed",
                    "kind"):
            self.assertIn(key, events[0])
        self.assertEqual({e["node"] for e in events}, {"gen-node"})
        self.assertEqual([e["time_ms"] for e in events], sorted(e["time_ms"] for e in events))

        cp = self.kpseg("dump", "--limit", "7", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertEqual([json.loads(x) for x in cp.stdout.splitlines()], events[:7])

        cp, s = self.summary_json(path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertTrue(s["valid"] and s["sealed"])
        self.assertIsNone(s["error"])
        self.assertEqual((s["frames"], s["events"]), (frames, EVENTS))
        self.assertEqual(s["bytes"], os.path.getsize(path))
        self.assertEqual(s["min_time_ms"], events[0]["time_ms"])
        self.assertEqual(s["max_time_ms"], events[-1]["time_ms"])
        total_cost = sum(e["cost"] for e in events)
        self.assertEqual(s["totals"]["requests"], EVENTS)
        self.assertEqual(s["totals"]["cost_nanousd"], total_cost)
        self.assertEqual(s["totals"]["cost_usd"],
                         f"{total_cost // 10**9}.{total_cost % 10**9:09d}")
        self.assertEqual(s["totals"]["tokens_in"], sum(e["tokens_in"] for e in events))
        rows = s["by_tenant_model"]
        self.assertEqual(sum(r["requests"] for r in rows), EVENTS)
        acme = [e for e in events if e["tenant"] == "acme" and e["model_served"] == "gpt-4o"]
        row = next(r for r in rows if (r["tenant"], r["model"]) == ("acme", "gpt-4o"))
        self.assertEqual(row["requests"], len(acme))
        self.assertEqual(row["cost_nanousd"], sum(e["cost"] for e in acme))

        cp = self.kpseg("summary", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("state     sealed", cp.stdout)
        self.assertIn("node      gen-node", cp.stdout)
        self.assertRegex(cp.stdout, r"\(all\)\s+400\s")

    def test_gen_is_deterministic(self):
        a = self.gen("a.seg", 300, 11)
        b = self.gen("b.seg", 300, 11)
        c = self.gen("c.seg", 300, 12)
        data = {}
        for p in (a, b, c):
            with open(p, "rb") as f:
                data[p] = f.read()
        self.assertEqual(data[a], data[b])
        self.assertNotEqual(data[a], data[c])

    def test_gen_options(self):
        path = self.gen("o.seg", 50, 1, "--node", "router-7", "--seq", "99", "--open")
        cp = self.kpseg("validate", path)
        self.assertEqual(cp.returncode, 1)
        self.assertIn(f"{path}: offset {os.path.getsize(path)}: segment is not sealed", cp.stderr)
        cp = self.kpseg("validate", "--allow-open", path)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("ok (open,", cp.stdout)
        cp, s = self.summary_json(path)
        self.assertEqual((s["node"], s["seq"], s["sealed"], s["events"]),
                         ("router-7", 99, False, 50))

    # -- damaged copies --

    def test_truncated_copy(self):
        path = self.gen("a.seg")
        size = os.path.getsize(path)
        cut = self.copy(path, "cut.seg", lambda d: d[: size // 2])
        cp = self.kpseg("validate", cut)
        self.assertEqual(cp.returncode, 1)
        m = re.fullmatch(rf"{re.escape(cut)}: offset (\d+): frame (header )?truncated.*\n",
                         cp.stderr)
        self.assertIsNotNone(m, cp.stderr)
        offset = int(m.group(1))
        self.assertLess(offset, size // 2)

        cp = self.kpseg("dump", cut)
        self.assertEqual(cp.returncode, 1)
        dumped = [json.loads(line) for line in cp.stdout.splitlines()]
        self.assertGreater(len(dumped), 0)
        self.assertLess(len(dumped), EVENTS)
        self.assertIn(f"{cut}: offset {offset}: ", cp.stderr)
        full = [json.loads(x) for x in self.kpseg("dump", path).stdout.splitlines()]
        self.assertEqual(dumped, full[: len(dumped)])

        cp, s = self.summary_json(cut)
        self.assertEqual(cp.returncode, 1)
        self.assertFalse(s["valid"])
        self.assertEqual(s["valid_len"], offset)
        self.assertEqual(s["events"], len(dumped))
        self.assertEqual(s["error"]["offset"], offset)
        self.assertIn(f"{cut}: offset {offset}: ", cp.stderr)

    def test_open_segment_cut_back_to_valid_prefix(self):
        path = self.gen("open.seg", EVENTS, 5, "--open")
        size = os.path.getsize(path)
        torn = self.copy(path, "torn.seg", lambda d: d[: size - 100])
        cp, s = self.summary_json(torn)
        self.assertEqual(cp.returncode, 1)
        cut = self.copy(torn, "cut.seg", lambda d: d[: s["valid_len"]])
        cp = self.kpseg("validate", "--allow-open", cut)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn(f"{s['events']} events", cp.stdout)

    def test_corrupted_copy(self):
        good = self.gen("a.seg")
        size = os.path.getsize(good)

        def flip(d):
            d[size // 2] ^= 0x40
            return d

        bad = self.copy(good, "bad.seg", flip)
        cp = self.kpseg("validate", good, bad)
        self.assertEqual(cp.returncode, 1)
        self.assertIn(f"{good}: ok (sealed", cp.stdout)
        self.assertRegex(cp.stderr,
                         rf"^{re.escape(bad)}: offset \d+: frame (payload |header )?checksum "
                         r"mismatch\n$")
        cp = self.kpseg("dump", bad)
        self.assertEqual(cp.returncode, 1)
        for line in cp.stdout.splitlines():
            json.loads(line)
        cp = self.kpseg("summary", bad)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("state     damaged at offset", cp.stdout)

    def test_not_a_segment_empty_and_missing(self):
        text = self.h.write_file("notes.txt", "hello, not a segment\n")
        empty = self.h.write_file("empty.seg", "")
        missing = self.h.path("missing.seg")
        cp = self.kpseg("validate", text, empty, missing)
        self.assertEqual(cp.returncode, 1)
        self.assertIn(f"{text}: offset 0: not a segment (bad magic)", cp.stderr)
        self.assertIn(f"{empty}: offset 0: not a segment (bad magic)", cp.stderr)
        self.assertIn(f"{missing}: cannot read: No such file or directory", cp.stderr)
        for cmd in ("dump", "summary"):
            cp = self.kpseg(cmd, missing)
            self.assertEqual(cp.returncode, 1)
            self.assertIn("No such file or directory", cp.stderr)

    # -- command line --

    def test_usage(self):
        cp = self.kpseg("--help")
        self.assertEqual(cp.returncode, 0)
        for word in ("validate", "dump", "summary", "Exit codes"):
            self.assertIn(word, cp.stdout)
        cp = self.kpseg("--version")
        self.assertEqual(cp.returncode, 0)
        self.assertRegex(cp.stdout, r"^kpseg \S+")
        seg = self.gen("a.seg", 10, 1)
        for args in ([], ["frobnicate"], ["--bogus"], ["validate"], ["dump"],
                     ["dump", seg, seg], ["dump", "--limit", "x", seg],
                     ["dump", "--limit"], ["summary"], ["validate", "--nope", seg],
                     ["gen", self.h.path("g.seg"), "--events", "3"],
                     ["gen", self.h.path("g.seg"), "--events", "-1", "--seed", "1"],
                     ["gen", self.h.path("g.seg"), "--events", "3", "--seed", "1",
                      "--node", ""]):
            cp = self.kpseg(*args)
            self.assertEqual(cp.returncode, 2, f"kpseg {args}: {cp.stderr}")
            self.assertIn("kpseg --help", cp.stderr)


if __name__ == "__main__":
    unittest.main()
