"""Reliability scenarios: faults under load, judged by checkers over the
recorded history (reliability.py, history.py, faults.py;
docs/reliability.md maps each guarantee to its scenario).

Each scenario has a fixed seed and a bounded length: seconds in CI,
minutes with KEYPLANE_RELIABILITY_LONG=1. The checkers assert invariants
(nothing acknowledged lost, metered exactly once, no overshoot, no secret
anywhere), never timings; the figures (failover times, counts) are printed
for docs/reliability.md.
"""

import json
import os
import signal
import time
import unittest

import faults
import history
from harness import http, wait_until
from reliability import ReliabCluster, long_mode


def duration(short, long):
    return long if long_mode() else short


def figures(test, name, **values):
    line = " ".join(f"{k}={v}" for k, v in values.items())
    print(f"\nRELIABILITY {test.id().split('.')[-1]} {name}: {line}", flush=True)


class Checks:
    """The checks every scenario ends with."""

    def final_checks(self, c, may_lose=(), meters=("n1", "n2")):
        c.halt()
        if c.net:
            c.net.heal()
        for n in c.nodes.values():
            if not n.running():
                n.restart(keep_ports=True)
        c.wait_leader()
        reports = [
            history.lost_writes(c.hist, c.final_tenants(), f="create"),
            history.linearizable(c.hist),
        ]
        for m in meters:
            ids = c.wait_metered(m, may_lose=may_lose)
            reports.append(history.metered_once(c.hist, ids, may_lose=may_lose))
        wait_until(lambda: c.budget_spent() == c.meter_cost(meters[0]), timeout=60,
                   what="spent in the state machine == the meter's cost")
        reports.append(history.budget_held(c.budget_nanousd, {
            "meter": c.meter_cost(meters[0]), "state_machine": c.budget_spent()}))
        for r in reports:
            print("\n" + str(r), flush=True)
        files = c.check_secrets()
        print(f"\ncanaries: {len(c.canaries)} secrets, 0 hits in {files} files", flush=True)
        print(f"history: {c.hist.summary()}", flush=True)
        for r in reports:
            self.assertTrue(r.ok, str(r))
        return reports


class LeaderKillTest(Checks, unittest.TestCase):
    def test_leader_kill_loop_under_load(self):
        c = ReliabCluster(self, seed=11).start()
        for i in range(2):
            c.spawn(c.writer, i)
        for i in range(2):
            c.spawn(c.register, 10 + i)
        for i in range(3):
            c.spawn(c.caller, 20 + i)
        kills = duration(5, 40)
        failovers = []
        for _ in range(kills):
            leader = c.wait_leader()
            acked = len(c.hist.of("create", "ok"))
            wait_until(lambda: len(c.hist.of("create", "ok")) >= acked + 5, timeout=60,
                       what="writes acknowledged before the kill")
            leader.kill()
            t0 = time.monotonic()
            others = [n for n in c.voters() if n is not leader]
            c.wait_leader(others)
            # Failover: from the kill to the first write acknowledged after it.
            wait_until(lambda: any(o.invoked > t0 for o in c.hist.of("create", "ok")),
                       timeout=60, what="a write acknowledged after the kill")
            first = min(o.completed for o in c.hist.of("create", "ok") if o.invoked > t0)
            failovers.append(first - t0)
            leader.restart(keep_ports=True)
        reports = self.final_checks(c)
        figures(self, "failover_ms", min=round(min(failovers) * 1000),
                max=round(max(failovers) * 1000), kills=kills)


class PartitionTest(Checks, unittest.TestCase):
    def workload(self, c, callers_on=("r1",)):
        for i in range(2):
            c.spawn(c.writer, i)
        for i in range(3):
            c.spawn(c.register, 10 + i)
        for i, name in enumerate(callers_on):
            c.spawn(c.caller, 20 + i, name)

    def test_leader_partitioned_from_the_voters(self):
        # The leader loses the other nodes (apps and the test still reach
        # it): the majority elects a leader and goes on; the old one must
        # neither acknowledge a write nor answer a consistent read from its
        # stale state; on healing it rejoins and what it could not commit
        # is gone (those writes were indeterminate, never acknowledged).
        c = ReliabCluster(self, seed=21).start()
        self.workload(c, callers_on=("r1", "n1", "n2", "n3"))
        rounds = duration(2, 12)
        elections = []
        for _ in range(rounds):
            old = c.wait_leader()
            c.run_for(1)
            c.net.isolate(old.host)
            t0 = time.monotonic()
            others = [n for n in c.voters() if n is not old]
            c.wait_leader(others)
            elections.append(time.monotonic() - t0)
            c.run_for(duration(3, 10))
            c.net.heal()
            wait_until(lambda: c.leader() is not None and c.leader() is not old
                       or c.cluster_state(old) and c.cluster_state(old).get("state") != "leader",
                       timeout=60, what="the old leader to step down or lead again")
        self.final_checks(c)
        figures(self, "new_leader_ms", min=round(min(elections) * 1000),
                max=round(max(elections) * 1000), rounds=rounds)

    def test_router_partitioned_from_the_meters(self):
        # r1 loses both meters (n1, n2) but keeps the leader (n3): calls
        # go on, their events wait in r1's spool, and once healed every
        # answered call is metered exactly once on both meters.
        c = ReliabCluster(self, seed=31).start()
        c.make_leader("n3")
        self.workload(c)
        c.run_for(1)
        c.net.partition(["r1"], ["n1", "n2"])
        before = len(c.hist.of("call", "ok"))
        c.run_for(duration(6, 60))
        during = len(c.hist.of("call", "ok")) - before
        self.assertGreater(during, 0, "calls are served while the meters are away")
        c.net.heal()
        c.run_for(1)
        self.final_checks(c)
        figures(self, "calls_while_partitioned", n=during)


if __name__ == "__main__":
    unittest.main()
