"""The official OpenAI and Anthropic SDKs against a real keyplane-mock.

Runs tests/sdk/sdk_check.mjs (Node.js) with the mock's URL and expects exit 0.
Skips, saying why, when node or tests/sdk/node_modules (from `npm ci` in
tests/sdk) or the mock binary is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import unittest

from test_mock import MOCK, MockProcess
from harness import wait_until

SDK_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))


class SdkTest(unittest.TestCase):
    def test_official_sdks_get_well_formed_answers(self):
        node = shutil.which("node")
        if node is None:
            self.skipTest("node is not installed; the SDK check needs Node.js 20 or later")
        if not os.path.isdir(os.path.join(SDK_DIR, "node_modules")):
            self.skipTest("tests/sdk/node_modules is missing; run `npm ci` in tests/sdk")
        if not os.access(MOCK, os.X_OK):
            self.skipTest("no keyplane-mock at %s (set KEYPLANE_BIN_DIR)" % MOCK)
        mock = MockProcess("--workers", "2")
        try:
            r = subprocess.run([node, "sdk_check.mjs", mock.base], cwd=SDK_DIR,
                               capture_output=True, timeout=300)
            out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
            if r.returncode != 0:
                sys.stderr.write("\n--- sdk_check.mjs ---\n%s\n--- keyplane-mock stderr ---\n%s\n"
                                 % (out, mock.stderr_text()))
            self.assertEqual(r.returncode, 0, "sdk_check.mjs failed:\n" + out)
            self.assertRegex(out, r"(?m)^\d+ passed, 0 failed$")
            self.assertEqual(mock.stop(), 0)
        finally:
            mock.close()


class GatewaySdkTest(unittest.TestCase):
    """The OpenAI and Anthropic SDKs pointed at a keyplane gateway (the app
    token as their API key) in front of the mock: chat, streams, embeddings,
    models, responses and Anthropic messages (translated to the pool's
    OpenAI-shaped provider) come back well formed through the router."""

    def test_official_sdks_through_the_gateway(self):
        node = shutil.which("node")
        if node is None:
            self.skipTest("node is not installed; the SDK check needs Node.js 20 or later")
        if not os.path.isdir(os.path.join(SDK_DIR, "node_modules")):
            self.skipTest("tests/sdk/node_modules is missing; run `npm ci` in tests/sdk")
        from test_router import Gateway
        g = Gateway(self)
        g.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        for model in ("gpt-4o", "text-embedding-3-small"):
            g.admin("PUT", "/prices/" + model, {"input_per_mtok": 1, "output_per_mtok": 1})
        env = dict(os.environ, OPENAI_API_KEY=g.token, ANTHROPIC_API_KEY=g.token,
                   ANTHROPIC_BASE_URL=g.node.gateway_url + "/anthropic")
        r = subprocess.run([node, "sdk_check.mjs", g.node.gateway_url,
                            "^(openai|anthropic) (?!error)"],
                           cwd=SDK_DIR, capture_output=True, timeout=300, env=env)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, "sdk_check.mjs through the gateway failed:\n" + out)
        self.assertRegex(out, r"(?m)^[1-9]\d* passed, 0 failed$")

        # A budget refusal: the SDK (2 retries allowed) sends it once.
        g.admin("PUT", "/tenants/broke", {"display_name": "Broke"})
        g.admin("PUT", "/prices/gpt-4o-mini", {"input_per_mtok": 1000, "output_per_mtok": 1000})
        g.admin("PUT", "/policies/broke-spend", {
            "scope_kind": "tenant", "scope_target": "broke",
            "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": 1,
                         "kind": "hard"}]})
        status, _, raw = g.node.control("POST", "/admin/v1/tokens",
                                        body={"role": "app", "tenant": "broke", "name": "broke"})
        self.assertEqual(status, 201, raw)
        env["OPENAI_BUDGET_KEY"] = json.loads(raw)["token"]
        r = subprocess.run([node, "sdk_check.mjs", g.node.gateway_url, "^openai budget"],
                           cwd=SDK_DIR, capture_output=True, timeout=300, env=env)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, "the budget refusal check failed:\n" + out)
        self.assertIn("1 passed, 0 failed", out)
        # The SDK's process has ended, retries included; the gateway records
        # each call's event as it ends.
        def refused():
            return [e for e in g.usage() if e["tenant"] == "broke"]
        wait_until(refused, what="the refused call's usage event")
        self.assertEqual([(e["status"], e["error_class"]) for e in refused()], [(429, "budget")])


if __name__ == "__main__":
    unittest.main()
