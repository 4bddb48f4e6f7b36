"""Recovery from the loss of a majority (docs/operations.md, "Losing a
majority of the voters").

Three voters hold data; two are killed with SIGKILL and their data
directories deleted, so no leader can ever be elected again. The survivor is
stopped, `keyplaned --recover` rewrites its Raft configuration to itself
alone, and it starts again as a one-voter cluster: it leads, every write the
cluster acknowledged is there, writes work, the lost members' records can be
removed, and new nodes join it.
"""

import shutil
import signal
import unittest

from harness import http, wait_until
from test_raft_cluster import MASTER_KEY, Cluster


class RecoveryTest(unittest.TestCase):
    def test_majority_lost_recover_survivor(self):
        c = Cluster(self).start(3)
        n1, n2, n3 = c.nodes
        # n3 leads from term 2 on, so its log holds entries of a later term
        # than the bootstrap's: the configuration --recover appends must
        # come after them.
        n3_id = c.state(n3)["this_node"]
        status, body = c.json(c.wait_leader(), "POST", "/admin/v1/cluster/transfer",
                              body={"node_id": n3_id})
        self.assertEqual(status, 200, body)
        leader = wait_until(lambda: c.leader() is n3 and n3, what="n3 leads")
        self.assertGreater(c.state(n3)["term"], 1)
        acked = set()
        for i in range(20):
            status, body = c.put_tenant(leader, f"before-{i}")
            self.assertIn(status, (200, 201), body)
            acked.add(f"before-{i}")
        # The survivor must hold every acknowledged write (the procedure
        # says: pick the survivor with the longest log).
        wait_until(lambda: acked <= (c.tenants(n3) or set()), what="n3 holds every write")

        for lost in (n1, n2):
            lost.send_signal(signal.SIGKILL)
            lost.wait_exit()
            shutil.rmtree(lost.data_dir)
        # No quorum: n3 cannot commit anything.
        wait_until(lambda: (c.state(n3) or {}).get("state") != "leader"
                   and not (c.state(n3) or {}).get("leader"), timeout=30,
                   what="n3 without a leader")
        self.assertEqual(c.put_tenant(n3, "no-quorum")[0], 503)

        # --recover refuses while the node runs (the data directory is locked).
        busy = c.h.run(["keyplaned", *n3.argv[1:], "--recover"])
        self.assertEqual(busy.returncode, 1, busy.stderr)
        self.assertIn("in use by another keyplaned", busy.stderr)

        n3.stop()
        done = c.h.run(["keyplaned", *n3.argv[1:], "--recover"])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("is now the only voter", done.stderr)

        n3.start()
        st = wait_until(lambda: (c.state(n3) or {}).get("state") == "leader" and c.state(n3),
                        what="n3 leads alone")
        self.assertEqual([m["node_id"] for m in st["members"]],
                         [st["this_node"]], st)
        self.assertLessEqual(acked, c.tenants(n3))
        status, body = c.put_tenant(n3, "after-recovery")
        self.assertIn(status, (200, 201), body)

        # The lost members' records go with `members remove` (they are no
        # longer in the Raft configuration).
        for name in ("n1", "n2"):
            done = c.h.run(["clusterctl", "--server", n3.control_url, "members", "remove", name],
                           env={"KEYPLANE_TOKEN": c.token})
            self.assertEqual(done.returncode, 0, done.stderr)
        status, body = c.json(n3, "GET", "/admin/v1/members")
        self.assertEqual([m["id"] for m in body["items"]], ["n3"], body)

        # New nodes join the recovered cluster and receive everything.
        c.nodes = [n3]
        for name in ("n4", "n5"):
            c.add_node(name)
        c.wait_members(3)
        for nd in c.nodes:
            wait_until(lambda nd=nd: acked | {"after-recovery"} <= (c.tenants(nd) or set()),
                       what=f"{nd.name} holds the registry")
            wait_until(lambda nd=nd: c.json(nd, "GET", "/admin/v1/audit/verify")[1].get("ok"),
                       what=f"{nd.name} audit chain verifies")
        status, _, _ = http("GET", c.nodes[-1].control_url + "/readyz")
        self.assertEqual(status, 200)

    def test_recover_needs_raft_state(self):
        c = Cluster(self)
        empty = c.h.path("empty")
        done = c.h.run(["keyplaned", "--data-dir", empty, "--recover"],
                       env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("nothing to recover", done.stderr)


if __name__ == "__main__":
    unittest.main()
