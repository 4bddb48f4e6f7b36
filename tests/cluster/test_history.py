"""The checkers of history.py on hand-made histories: each one must pass a
history that keeps its guarantee and catch one that breaks it (a checker
that cannot fail proves nothing)."""

import unittest

import history


def op(h, f, t0, t1, kind="ok", **args):
    """An operation of @h invoked at @t0 and completed at @t1 (None: info)."""
    result = {}
    if f == "read":
        result["value"] = args.pop("value")
    o = h.invoke(f, 0, **args)
    o.invoked = t0
    o.type = kind
    o.completed = t1
    o.result = result
    return o


class LinearizableTest(unittest.TestCase):
    def check(self, build):
        h = history.History()
        build(h)
        return history.linearizable(h)

    def test_sequential_register(self):
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "read", 2, 3, key="k", value="a")
            op(h, "write", 4, 5, key="k", value="b")
            op(h, "read", 6, 7, key="k", value="b")
        self.assertTrue(self.check(build).ok)

    def test_stale_read_is_caught(self):
        # b was acknowledged before the read began, yet the read saw a.
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, 3, key="k", value="b")
            op(h, "read", 4, 5, key="k", value="a")
        report = self.check(build)
        self.assertFalse(report.ok)
        self.assertIn("register k", report.problems[0])

    def test_concurrent_write_may_go_either_way(self):
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, 6, key="k", value="b")
            op(h, "read", 3, 4, key="k", value="a")
            op(h, "read", 5, 7, key="k", value="b")
        self.assertTrue(self.check(build).ok)

    def test_reads_cannot_go_back_in_time(self):
        # Both writes overlap both reads, but once one read saw b a later
        # read cannot see a (a was written first and b never overwritten).
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, 10, key="k", value="b")
            op(h, "read", 3, 4, key="k", value="b")
            op(h, "read", 5, 6, key="k", value="a")
        self.assertFalse(self.check(build).ok)

    def test_indeterminate_write_may_or_may_not_happen(self):
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, None, kind="info", key="k", value="b")
            op(h, "read", 3, 4, key="k", value="a")
            op(h, "read", 5, 6, key="k", value="b")
            op(h, "read", 7, 8, key="k", value="b")
        self.assertTrue(self.check(build).ok)

        def never(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, None, kind="info", key="k", value="b")
            op(h, "read", 3, 4, key="k", value="a")
        self.assertTrue(self.check(never).ok)

    def test_a_failed_write_must_not_be_read(self):
        def build(h):
            op(h, "write", 0, 1, key="k", value="a")
            op(h, "write", 2, 3, kind="fail", key="k", value="b")
            op(h, "read", 4, 5, key="k", value="b")
        self.assertFalse(self.check(build).ok)

    def test_initial_value_is_none(self):
        def build(h):
            op(h, "read", 0, 1, key="k", value=None)
            op(h, "write", 2, 3, key="k", value="a")
        self.assertTrue(self.check(build).ok)


class OtherCheckersTest(unittest.TestCase):
    def test_lost_and_phantom_writes(self):
        h = history.History()
        op(h, "create", 0, 1, key="t1", value="v1")
        op(h, "create", 0, 1, key="t2", value="v2")
        op(h, "create", 0, 1, kind="fail", key="t3", value="v3")
        op(h, "create", 0, None, kind="info", key="t4", value="v4")
        self.assertTrue(history.lost_writes(h, {"t1": "v1", "t2": "v2"}, f="create").ok)
        self.assertTrue(history.lost_writes(h, {"t1": "v1", "t2": "v2", "t4": "v4"},
                                            f="create").ok)
        lost = history.lost_writes(h, {"t1": "v1"}, f="create")
        self.assertFalse(lost.ok)
        self.assertEqual(lost.figures["lost"], 1)
        self.assertFalse(history.lost_writes(h, {"t1": "v1", "t2": "v2", "t3": "v3"},
                                             f="create").ok)

    def test_metered_once(self):
        h = history.History()
        op(h, "call", 0, 1, rid="a")
        op(h, "call", 0, 1, rid="b")
        op(h, "call", 0, None, kind="info", rid="c")
        self.assertTrue(history.metered_once(h, ["a", "b"]).ok)
        self.assertTrue(history.metered_once(h, ["a", "b", "c"]).ok)
        self.assertFalse(history.metered_once(h, ["a"]).ok)
        self.assertTrue(history.metered_once(h, ["a"], may_lose={"b"}).ok)
        self.assertFalse(history.metered_once(h, ["a", "b", "b"]).ok)
        self.assertFalse(history.metered_once(h, ["a", "b", "z"]).ok)

    def test_budget_held(self):
        self.assertTrue(history.budget_held(100, {"meter": 100, "sm": 99}).ok)
        r = history.budget_held(100, {"meter": 101})
        self.assertFalse(r.ok)
        self.assertEqual(r.figures["overshoot"], 1)


if __name__ == "__main__":
    unittest.main()
