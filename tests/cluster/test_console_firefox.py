"""The web console in Firefox (docs/console.md): tests/ui/firefox.test.mjs,
puppeteer-core driving Debian's firefox-esr over WebDriver BiDi, against a
real keyplaned and keyplane-mock set up as for test_console.py.

It skips, saying why, only when node or firefox-esr is not installed; a
missing tests/ui/node_modules (`npm ci` in tests/ui, which tests/run.sh
does) fails it.
"""

import os
import shutil
import subprocess
import sys
import time
import unittest

from harness import bin_dir
from test_console import KEY_A, MODEL, UI_DIR, Console


class ConsoleFirefoxTest(unittest.TestCase):
    """tests/ui/firefox.test.mjs in headless firefox-esr."""

    def test_console_in_firefox(self):
        node = shutil.which("node")
        if node is None:
            self.skipTest("node is not installed; the Firefox console test needs Node.js 20 or "
                          "later (deploy/install-deps.sh installs it)")
        browser = shutil.which("firefox-esr")
        if browser is None:
            self.skipTest("firefox-esr is not installed; the Firefox console test drives Debian's "
                          "firefox-esr (deploy/install-deps.sh installs it)")
        self.assertTrue(os.path.isdir(os.path.join(UI_DIR, "node_modules", "puppeteer-core")),
                        "tests/ui/node_modules/puppeteer-core is missing: run `npm ci` in "
                        "tests/ui (tests/run.sh does)")
        c = Console(self)
        app = c.new_token("app", tenant="acme")
        shots = os.path.normpath(os.path.join(bin_dir(), "..", "ui-screenshots"))
        env = dict(os.environ, KP_CONTROL=c.node.control_url, KP_GATEWAY=c.node.gateway_url,
                   KP_MOCK=c.mock.url, KP_ADMIN_TOKEN=c.token, KP_APP_TOKEN=app, KP_KEY_A=KEY_A,
                   KP_MODEL=MODEL, KP_FIREFOX=browser, KP_SHOTS=shots)
        started = time.monotonic()
        r = subprocess.run([node, "firefox.test.mjs"], cwd=UI_DIR, capture_output=True,
                           timeout=600, env=env)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        sys.stderr.write("\n--- firefox.test.mjs (%.1f s) ---\n%s\n"
                         % (time.monotonic() - started, out))
        self.assertEqual(r.returncode, 0, "firefox.test.mjs failed:\n" + out)
        self.assertRegex(out, r"(?m)^[1-9]\d* passed, 0 failed$")
        self.assertEqual(c.admin("GET", "/keys/key-ff")["status"], "disabled")


if __name__ == "__main__":
    unittest.main()
