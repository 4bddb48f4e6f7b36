"""A data directory serves one cluster for its whole life (docs/operations.md,
"A data directory from another cluster").

Two clusters, X and Y, share a master key (so node-to-node calls between
them are authenticated and only the cluster id tells them apart). A node's
data directory records its cluster in DATA_DIR/cluster.json; started with a
join address of the other cluster, with its Raft state gone, or with a
cluster.json that is not its registry's, the node refuses to run (exit 2)
and says which clusters are involved. Started as it should be, it runs.
"""

import json
import os
import shutil
import unittest

from harness import Harness, http, wait_until
from test_raft_cluster import CONFIG, MASTER_KEY

ENV = {"KEYPLANE_MASTER_KEY": MASTER_KEY}


class ClusterIdentityTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.x1 = self.h.start_node("x1", config=CONFIG, env=ENV)
        self.y1 = self.h.start_node("y1", config=CONFIG, env=ENV)
        self.x_id = self.cluster_id(self.x1)
        self.y_id = self.cluster_id(self.y1)
        self.assertNotEqual(self.x_id, self.y_id)

    def cluster_id(self, node):
        with open(os.path.join(node.data_dir, "cluster.json")) as f:
            return json.load(f)["cluster_id"]

    def members(self, node):
        status, _, raw = node.control("GET", "/admin/v1/cluster")
        self.assertEqual(status, 200, raw)
        return [m["name"] for m in json.loads(raw)["members"]]

    def refused(self, node):
        self.assertEqual(node.wait_exit(), 2, node.stderr_text()[-2000:])
        return node.stderr_text()

    def test_a_data_directory_stays_with_its_cluster(self):
        # x2 joins X; its data directory now says X.
        x2 = self.h.start_node("x2", config=CONFIG, env=ENV,
                               args=["--join", self.x1.listen["control"]])
        wait_until(lambda: os.path.exists(os.path.join(x2.data_dir, "cluster.json")),
                   what="x2 records its cluster", alive=x2)
        self.assertEqual(self.cluster_id(x2), self.x_id)
        x2.stop()
        argv = list(x2.argv)

        # Restarted with Y's join address: refused before it serves.
        x2.argv = argv[:argv.index("--join") + 1] + [self.y1.listen["control"]]
        x2.start(wait_listen=False)
        text = self.refused(x2)
        self.assertIn(f"belongs to cluster {self.x_id}", text)
        self.assertIn(f"is cluster {self.y_id}", text)
        self.assertIn("new, empty data directory", text)

        # Its Raft state deleted, it would join Y as a new node: refused
        # before it asks (Y's configuration does not change).
        shutil.rmtree(os.path.join(x2.data_dir, "raft"))
        x2.start(wait_listen=False)
        self.refused(x2)
        self.assertEqual(self.members(self.y1), ["y1"])
        # ... nor may it start a cluster of its own there.
        x2.argv = [a for i, a in enumerate(argv) if a != "--join" and argv[i - 1] != "--join"]
        x2.start(wait_listen=False)
        self.assertIn(f"belongs to cluster {self.x_id} (its cluster.json) but holds no Raft",
                      self.refused(x2))

        # A cluster.json that is not the registry's: y1 given X's.
        self.y1.stop()
        shutil.copy(os.path.join(self.x1.data_dir, "cluster.json"),
                    os.path.join(self.y1.data_dir, "cluster.json"))
        self.y1.start(wait_listen=False)
        text = self.refused(self.y1)
        self.assertIn(f"belongs to cluster {self.x_id}", text)
        self.assertIn(f"this node's registry is cluster {self.y_id}", text)

    def test_the_right_join_address_is_checked_and_accepted(self):
        x2 = self.h.start_node("x2", config=CONFIG, env=ENV,
                               args=["--join", self.x1.listen["control"]])
        wait_until(lambda: os.path.exists(os.path.join(x2.data_dir, "cluster.json")),
                   what="x2 records its cluster", alive=x2)
        x2.restart()
        wait_until(lambda: f"is in cluster {self.x_id}, as this data directory"
                   in x2.stderr_text(), what="x2 checks its join address", alive=x2)
        self.assertEqual(http("GET", x2.control_url + "/readyz")[0], 200)


if __name__ == "__main__":
    unittest.main()
