"""What the figure scripts in bench/ share: the repository's paths, a log
line, the cluster test harness (tests/cluster/harness.py, loaded by path)
and a stand-in for the unittest.TestCase a Harness expects.

Python 3 standard library only."""

import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN_DIR = os.path.join(REPO, "build-release", "bin")


def log(msg):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def load_harness():
    path = os.path.join(REPO, "tests", "cluster", "harness.py")
    spec = importlib.util.spec_from_file_location("kp_cluster_harness", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Owner:
    """What a Harness expects of a unittest.TestCase: cleanups, an id."""

    def __init__(self, label):
        self.label = label
        self._cleanups = []

    def addCleanup(self, fn, *args, **kwargs):
        self._cleanups.append((fn, args, kwargs))

    def id(self):
        return self.label

    def close(self):
        while self._cleanups:
            fn, args, kwargs = self._cleanups.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                sys.stderr.write(f"cleanup: {e}\n")
