"""TLS on the gateway and control listeners and between nodes.

Certificates are made in each test's temporary directory with the openssl
command line: a cluster CA, a certificate per node (SAN 127.0.0.1 and
localhost, serverAuth and clientAuth), and for the negative cases a second
CA nobody trusts. Clients are Python's ssl and http.client, verifying the
CA.

Covers: chat completions (whole and streamed) through the mock over TLS,
the control port over TLS, ALPN, pipelining over TLS, plain HTTP and
garbage on a TLS port, the handshake deadline, client certificates
(required: none and a stranger's refused and logged, the CA's accepted),
SIGHUP reload (new connections see the new certificate, open ones keep
theirs, a bad file keeps the old one and says why), bad files at start,
and a three-node cluster with tls.control: joins, forwarding to the
leader and usage segments shipped to the meter over https, counted, and
a node whose certificate is not from the cluster CA kept out and logged.
"""

import http.client as http_client
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

from harness import Harness, http, metric_value, wait_until

ADMIN = "/admin/v1"
MASTER = secrets.token_hex(32)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "over tls"}]}


class Certs:
    """A CA and the certificates it signs, in TMP/certs (openssl CLI)."""

    def __init__(self, h, name="ca"):
        self.h = h
        self.dir = h.path("certs")
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.crt = os.path.join(self.dir, name + ".crt")
        self.key = os.path.join(self.dir, name + ".key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", self.key, "-out", self.crt, "-days", "2",
                      "-subj", f"/CN=keyplane test {name}")

    def _openssl(self, *args):
        r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)}: {r.stderr}")

    def issue(self, cn, serial, out=None):
        """A certificate for @cn with @serial; returns (cert path, key path)."""
        base = os.path.join(self.dir, out or f"{self.name}-{cn}-{serial}")
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", base + ".key", "-out", base + ".csr",
                      "-subj", f"/CN={cn}")
        self._openssl("x509", "-req", "-in", base + ".csr", "-CA", self.crt, "-CAkey", self.key,
                      "-set_serial", str(serial), "-days", "2", "-extfile", ext,
                      "-out", base + ".crt")
        return base + ".crt", base + ".key"

    def context(self, cert=None):
        """A client context verifying this CA, presenting @cert (a pair)."""
        ctx = ssl.create_default_context(cafile=self.crt)
        if cert:
            ctx.load_cert_chain(cert[0], cert[1])
        return ctx


def tls_config(crt, key, ca, gateway=True, control=True, client_ca=None, require=False, **extra):
    tls = {"cert_file": crt, "key_file": key, "ca_file": ca, "gateway": gateway,
           "control": control}
    if client_ca:
        tls["client_ca_file"] = client_ca
        tls["require_client_cert"] = require
    cfg = {"workers": 2, "spool_seal_age_ms": "200ms", "tls": tls}
    cfg.update(extra)
    return cfg


def seed(node, mock):
    """A provider on the mock, a key, a pool and an app token; returns it."""
    def admin(method, path, body):
        status, _, raw = node.control(method, ADMIN + path, body=body)
        assert status in (200, 201), (method, path, status, raw)
        return json.loads(raw) if raw else None
    admin("PUT", "/providers/mock", {"kind": "openai-compatible", "base_url": mock.url + "/v1",
                                     "allow_insecure": True})
    admin("PUT", "/tenants/acme", {"display_name": "Acme"})
    admin("PUT", "/keys/key-a", {"provider": "mock", "secret": "sk-mock-tls-a-0001"})
    admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
    admin("PUT", "/prices/gpt-4o-mini", {"input_per_mtok": 150_000_000,
                                         "output_per_mtok": 600_000_000})
    return admin("POST", "/tokens", {"role": "app", "tenant": "acme", "name": "app"})["token"]


def peer_serial(addr, ctx):
    """The serial number (hex, as Python shows it) of the certificate a new
    connection to @addr sees."""
    host, port = addr
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return s.getpeercert()["serialNumber"]


def read_head(f):
    """The status line and header lines of one answer from file @f."""
    head = []
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            return head or [""]
        head.append(line.decode().rstrip("\r\n"))


def head_fields(head):
    return {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head[1:])}


def refused(fn):
    """True when @fn fails at the TLS or connection level."""
    try:
        fn()
    except (ssl.SSLError, ConnectionError, OSError, http_client.HTTPException):
        return True
    return False


class TlsListenerTest(unittest.TestCase):
    def test_gateway_and_control_over_tls(self):
        h = Harness(self)
        ca = Certs(h)
        crt, key = ca.issue("n1", 1001)
        ctx = ca.context()
        mock = h.start_mock()
        n1 = h.start_node("n1", config=tls_config(crt, key, ca.crt, header_timeout_ms="1s"),
                          env={"KEYPLANE_MASTER_KEY": MASTER}, tls_context=ctx)
        self.assertTrue(n1.gateway_url.startswith("https://"))
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        token = seed(n1, mock)
        hdrs = {"Authorization": "Bearer " + token}

        # The control port: health, status, the admin API.
        status, _, body = http("GET", n1.control_url + "/healthz", context=ctx)
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        status, _, body = n1.control("GET", ADMIN + "/tenants")
        self.assertEqual(status, 200, body)
        status, _, body = n1.control("GET", ADMIN + "/status")
        tls = json.loads(body)["tls"]
        self.assertEqual((tls["gateway"], tls["control"]), (True, True))
        self.assertIn("subject /CN=n1, serial 03E9", tls["certificate"])

        # A chat completion through the mock, whole.
        status, headers, body = http("POST", n1.gateway_url + "/v1/chat/completions", body=CHAT,
                                     headers=hdrs, context=ctx, timeout=30)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["object"], "chat.completion")
        self.assertEqual(headers.get("x-keyplane-key"), "key-a")

        # Streamed: events arrive and end with [DONE].
        conn = http_client.HTTPSConnection("127.0.0.1", n1.gateway_addr[1], context=ctx,
                                           timeout=30)
        conn.request("POST", "/v1/chat/completions",
                     body=json.dumps(dict(CHAT, stream=True)),
                     headers=dict(hdrs, **{"Content-Type": "application/json"}))
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        text = resp.read().decode()
        events = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
        self.assertGreater(len(events), 2, text)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(json.loads(events[0])["object"], "chat.completion.chunk")
        # The same connection serves the next request (keep-alive over TLS).
        conn.request("GET", "/v1/models", headers=hdrs)
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        resp.read()
        conn.close()

        # A large body in, and a long stream out to a client with a small
        # receive buffer (the gateway's writes wait on the watermark).
        big = dict(CHAT, messages=[{"role": "user", "content": "word " * 400_000}])
        status, _, body = http("POST", n1.gateway_url + "/v1/chat/completions", body=big,
                               headers=hdrs, context=ctx, timeout=60)
        self.assertEqual(status, 200, body[:300])
        # Two thousand pipelined requests sent at once to a client with a
        # small receive buffer: the server stops reading while its pipeline
        # buffer is full, takes the rest out of OpenSSL after each answer,
        # and every answer arrives, in order.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(60)
        raw.connect(n1.gateway_addr)
        n = 2000
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            reqs = b"".join(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: many-%d\r\n"
                            b"Authorization: Bearer %s\r\n\r\n" % (i, token.encode())
                            for i in range(n))
            sender = threading.Thread(target=s.sendall, args=(reqs,))
            sender.start()
            f = s.makefile("rb")
            for i in range(n):
                head = read_head(f)
                self.assertTrue(head[0].startswith("HTTP/1.1 200"), head)
                fields = head_fields(head)
                self.assertEqual(fields["x-request-id"], f"many-{i}")
                f.read(int(fields["content-length"]))
            sender.join()

        # ALPN: http/1.1 is chosen from what the client offers.
        alpn = ca.context()
        alpn.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(n1.gateway_addr, timeout=10) as raw:
            with alpn.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
                # Three pipelined requests in one write, three answers in order.
                s.sendall(b"".join(
                    f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                    f"X-Request-Id: pipe-{i}\r\n\r\n".encode() for i in range(3)))
                f = s.makefile("rb")
                for i in range(3):
                    head = read_head(f)
                    self.assertTrue(head[0].startswith("HTTP/1.1 200"), head)
                    fields = head_fields(head)
                    self.assertEqual(fields["x-request-id"], f"pipe-{i}")
                    f.read(int(fields["content-length"]))

        # Plain HTTP on a TLS port: a readable 400 in the clear, then close.
        for port in (n1.gateway_addr[1], n1.control_addr[1]):
            status, headers, body = http("GET", f"http://127.0.0.1:{port}/healthz")
            self.assertEqual(status, 400)
            self.assertIn(b"https://", body)
            self.assertEqual(headers.get("connection"), "close")
        # Not TLS and not HTTP: closed without an answer.
        with socket.create_connection(n1.gateway_addr, timeout=10) as s:
            s.sendall(b"\x00\x01\x02garbage")
            self.assertEqual(s.recv(100), b"")
        # A handshake that never finishes is dropped at the header deadline.
        with socket.create_connection(n1.gateway_addr, timeout=30) as s:
            s.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, and nothing more
            self.assertEqual(s.recv(100), b"")

        # keyplane-bench over https: every request answered, none failed.
        url = n1.gateway_url + "/v1/chat/completions"
        r = h.run(["keyplane-bench", "--url", url, "--cacert", ca.crt, "--token", token,
                   "--connections", "4", "--requests", "200", "--json", "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["status"], {"200": 200}, report)
        self.assertEqual(sum(report["errors"].values()), 0, report)
        # Without the CA it cannot verify the gateway, and says so.
        r = h.run(["keyplane-bench", "--url", url, "--token", token, "--requests", "1",
                   "--quiet"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("TLS handshake with 127.0.0.1:", r.stderr)
        self.assertIn("certificate not trusted", r.stderr)

        # A client that does not trust the CA gives up; the node goes on.
        self.assertTrue(refused(lambda: http("GET", n1.control_url + "/healthz",
                                             context=ssl.create_default_context())))
        status, _, _ = http("GET", n1.control_url + "/healthz", context=ctx)
        self.assertEqual(status, 200)
        self.assertEqual(n1.stop(), 0)

    def test_client_certificates(self):
        h = Harness(self)
        ca = Certs(h)
        stranger = Certs(h, "stranger")
        crt, key = ca.issue("n1", 2001)
        mine = ca.issue("operator", 2002)
        theirs = stranger.issue("intruder", 2003)
        n1 = h.start_node("n1", config=tls_config(crt, key, ca.crt, client_ca=ca.crt,
                                                  require=True),
                          env={"KEYPLANE_MASTER_KEY": MASTER}, tls_context=ca.context(mine))
        url = n1.control_url + "/healthz"
        # Without a certificate, or with one from another CA: refused.
        self.assertTrue(refused(lambda: http("GET", url, context=ca.context())))
        self.assertTrue(refused(lambda: http("GET", url, context=ca.context(theirs))))
        # With one from the CA: served, on both listeners.
        self.assertEqual(http("GET", url, context=ca.context(mine))[0], 200)
        self.assertEqual(http("GET", n1.gateway_url + "/v1/models",
                              context=ca.context(mine))[0], 401)
        wait_until(lambda: "client certificate not accepted" in n1.stderr_text() and
                   "CN=intruder" in n1.stderr_text(),
                   what="the stranger's certificate logged", alive=n1)
        self.assertIn("TLS handshake with 127.0.0.1:", n1.stderr_text())
        self.assertGreaterEqual(metric_value(n1.metrics(), "keyplane_tls_handshake_failures_total",
                                             listener="control"), 2)
        self.assertEqual(n1.stop(), 0)

    def test_clusterctl_over_tls(self):
        h = Harness(self)
        ca = Certs(h)
        crt, key = ca.issue("n1", 6001)
        op = ca.issue("operator", 6002)
        n1 = h.start_node("n1", config=tls_config(crt, key, ca.crt, client_ca=ca.crt,
                                                  require=True),
                          env={"KEYPLANE_MASTER_KEY": MASTER}, tls_context=ca.context(op))
        wait_until(lambda: n1.admin_token, what="admin.token", alive=n1)
        conf = h.path("ctl")
        env = {"KEYPLANE_CONFIG_DIR": conf, "KEYPLANE_TOKEN": n1.admin_token}

        def ctl(*args, extra_env=None):
            return h.run(["clusterctl", *args], env=dict(env, **(extra_env or {})))
        server = ["--server", n1.control_url]
        # Not trusting the CA, or without a client certificate: unreachable (3).
        r = ctl(*server, "get", "tenants")
        self.assertEqual(r.returncode, 3, r.stderr)
        r = ctl(*server, "--cacert", ca.crt, "get", "tenants")
        self.assertEqual(r.returncode, 3, r.stderr)
        # Both: served.
        r = ctl(*server, "--cacert", ca.crt, "--cert", op[0], "--key", op[1], "get", "tenants")
        self.assertEqual(r.returncode, 0, r.stderr)
        # The same from the environment, and from a context.
        r = ctl(*server, "get", "tenants", extra_env={"KEYPLANE_CACERT": ca.crt,
                                                       "KEYPLANE_CERT": op[0],
                                                       "KEYPLANE_KEY": op[1]})
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ctl("config", "set-context", "tls", "--server", n1.control_url, "--cacert", ca.crt,
                "--cert", op[0], "--key", op[1])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ctl("get", "tenants")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ctl("config", "get-contexts", "-o", "json")
        self.assertEqual(json.loads(r.stdout)["contexts"][0]["cacert"], ca.crt)
        # Half a client certificate, or a file that is not there: usage errors.
        r = ctl(*server, "--cert", op[0], "get", "tenants")
        self.assertEqual(r.returncode, 2)
        self.assertIn("needs both --cert and --key", r.stderr)
        r = ctl(*server, "--cacert", h.path("none.crt"), "get", "tenants")
        self.assertEqual(r.returncode, 2)
        self.assertIn("cannot read", r.stderr)

    def test_sighup_reloads_the_certificate(self):
        h = Harness(self)
        ca = Certs(h)
        ctx = ca.context()
        first = ca.issue("n1", 3001)
        live_crt, live_key = h.path("certs", "live.crt"), h.path("certs", "live.key")

        def install(pair):
            for src, dst in zip(pair, (live_crt, live_key)):
                with open(src, "rb") as f:
                    data = f.read()
                with open(dst + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(dst + ".tmp", dst)

        install(first)
        n1 = h.start_node("n1", config=tls_config(live_crt, live_key, ca.crt),
                          env={"KEYPLANE_MASTER_KEY": MASTER}, tls_context=ctx)
        self.assertEqual(int(peer_serial(n1.gateway_addr, ctx), 16), 3001)
        # A connection opened before the reload.
        old = http_client.HTTPSConnection("127.0.0.1", n1.gateway_addr[1], context=ctx,
                                          timeout=10)
        old.request("GET", "/v1/models")
        resp = old.getresponse()
        resp.read()
        self.assertEqual(resp.status, 401)
        old_serial = old.sock.getpeercert()["serialNumber"]

        install(ca.issue("n1-renewed", 3002))
        n1.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificate reloaded" in n1.stderr_text(),
                   what="the reload logged", alive=n1)
        self.assertIn("serial 0BBA", n1.stderr_text())  # 3002
        for addr in (n1.gateway_addr, n1.control_addr):
            self.assertEqual(int(peer_serial(addr, ctx), 16), 3002)
        # The old connection still works, with the certificate it had.
        old.request("GET", "/v1/models")
        resp = old.getresponse()
        resp.read()
        self.assertEqual(resp.status, 401)
        self.assertEqual(old.sock.getpeercert()["serialNumber"], old_serial)
        old.close()

        # Reloads while connections arrive on every worker: each handshake
        # sees one whole certificate (ThreadSanitizer runs this too).
        seen, errors = set(), []

        def connect_many():
            try:
                for _ in range(60):
                    seen.add(int(peer_serial(n1.gateway_addr, ctx), 16))
            except Exception as e:  # reported below
                errors.append(e)
        t = threading.Thread(target=connect_many)
        t.start()
        for i in range(2, 12):
            n1.send_signal(signal.SIGHUP)
            # One at a time: signals sent close together may arrive as one.
            wait_until(lambda: n1.stderr_text().count("TLS certificate reloaded") >= i,
                       what=f"reload {i} logged", alive=n1)
        t.join()
        self.assertEqual((errors, seen), ([], {3002}))

        # A bad file: the reload fails, says why, and the last good one stays.
        with open(live_crt, "w") as f:
            f.write("not a certificate\n")
        n1.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS reload failed" in n1.stderr_text(),
                   what="the failed reload logged", alive=n1)
        self.assertIn("not a PEM certificate", n1.stderr_text())
        text = n1.metrics()
        self.assertEqual(metric_value(text, "keyplane_tls_reloads_total", result="failed"), 1)
        self.assertEqual(metric_value(text, "keyplane_tls_reloads_total", result="ok"), 11)
        self.assertGreater(metric_value(text, "keyplane_tls_certificate_expiry_seconds"),
                           time.time() + 3600)
        self.assertEqual(int(peer_serial(n1.gateway_addr, ctx), 16), 3002)
        # A key that is not the certificate's: refused the same way.
        install((ca.issue("n1-third", 3003)[0], first[1]))
        n1.send_signal(signal.SIGHUP)
        wait_until(lambda: "not the key of certificate" in n1.stderr_text(),
                   what="the mismatched key logged", alive=n1)
        self.assertEqual(int(peer_serial(n1.control_addr, ctx), 16), 3002)
        self.assertEqual(n1.stop(), 0)

    def test_bad_files_at_start(self):
        h = Harness(self)
        ca = Certs(h)
        crt, _ = ca.issue("n1", 4001)
        _, other_key = ca.issue("n2", 4002)
        bad = h.start_node("bad", config=tls_config(crt, other_key, ca.crt),
                           env={"KEYPLANE_MASTER_KEY": MASTER}, wait_listen=False)
        self.assertEqual(bad.wait_exit(timeout=30), 2)
        self.assertIn("not the key of certificate", bad.stderr_text())
        missing = h.start_node("missing", config=tls_config(crt, h.path("nope.key"), ca.crt),
                               env={"KEYPLANE_MASTER_KEY": MASTER}, wait_listen=False)
        self.assertEqual(missing.wait_exit(timeout=30), 2)
        self.assertIn("nope.key: cannot open: No such file or directory", missing.stderr_text())
        no_ca = h.start_node("noca", config=tls_config(crt, other_key, None),
                             env={"KEYPLANE_MASTER_KEY": MASTER}, wait_listen=False)
        self.assertEqual(no_ca.wait_exit(timeout=30), 2)
        # The three files go together (they make Raft links TLS too).
        self.assertIn("tls.cert_file, tls.key_file set but not tls.ca_file", no_ca.stderr_text())


class TlsClusterTest(unittest.TestCase):
    def test_three_nodes_over_https(self):
        h = Harness(self)
        ca = Certs(h)
        stranger = Certs(h, "stranger")
        admin_ctx = ca.context(ca.issue("operator", 5000))
        mock = h.start_mock()
        nodes = []
        for i in (1, 2, 3):
            crt, key = ca.issue(f"n{i}", 5000 + i)
            cfg = tls_config(crt, key, ca.crt, client_ca=ca.crt, require=True,
                             election_timeout_ms="400ms", heartbeat_timeout_ms="50ms")
            args = ["--join", nodes[0].listen["control"]] if nodes else []
            nodes.append(h.start_node(f"n{i}", config=cfg, args=args,
                                      env={"KEYPLANE_MASTER_KEY": MASTER},
                                      tls_context=admin_ctx))
        n1, n2, n3 = nodes
        token = seed(n1, mock)

        def cluster(node):
            status, _, raw = node.control("GET", ADMIN + "/cluster",
                                          headers={"Authorization": "Bearer " + n1.admin_token})
            return json.loads(raw) if status == 200 else None

        def all_reachable():
            st = cluster(n1)
            return st and len(st["members"]) == 3 and all(m.get("reachable")
                                                          for m in st["members"])
        wait_until(all_reachable, what="3 reachable members over https", alive=n1)

        # A write sent to a follower is forwarded to the leader over https.
        leader = next(nd for nd in nodes if (cluster(nd) or {}).get("state") == "leader")
        follower = next(nd for nd in nodes if nd is not leader)
        status, headers, body = follower.control(
            "PUT", ADMIN + "/tenants/forwarded", body={"display_name": "via a follower"},
            headers={"Authorization": "Bearer " + n1.admin_token})
        self.assertIn(status, (200, 201), body)
        self.assertEqual(headers.get("x-keyplane-forwarded-to"), "leader")

        # Calls on the two other routers; their usage segments reach the
        # meter (n1, the bootstrap node) over https, each call once.
        hdrs = {"Authorization": "Bearer " + token}
        rids = []
        for i in range(20):
            node = (n2, n3)[i % 2]
            rid = f"tls-ship-{i:02d}"
            status, _, body = http("POST", node.gateway_url + "/v1/chat/completions", body=CHAT,
                                   headers=dict(hdrs, **{"X-Request-Id": rid}),
                                   context=admin_ctx, timeout=30)
            self.assertEqual(status, 200, body)
            rids.append(rid)

        def metered():
            status, _, raw = n1.control("GET", ADMIN + "/usage/events?from=2020-01-01&limit=1000",
                                        headers={"Authorization": "Bearer " + n1.admin_token})
            if status != 200:
                return None
            return sorted(e["request_id"] for e in json.loads(raw)["events"]
                          if e["request_id"].startswith("tls-ship-"))
        wait_until(lambda: metered() == rids, what="20 calls shipped to the meter over https",
                   alive=n1, timeout=60)
        self.assertIn("https://", n1.stderr_text())

        # A node whose certificate is not from the cluster CA (with the
        # right master key) cannot join; the node it calls logs why.
        crt, key = stranger.issue("n4", 5004)
        cfg = tls_config(crt, key, ca.crt, client_ca=ca.crt, require=True)
        n4 = h.start_node("n4", config=cfg, args=["--join", n1.listen["control"]],
                          env={"KEYPLANE_MASTER_KEY": MASTER}, tls_context=admin_ctx,
                          wait_ready=False)
        wait_until(lambda: "join: cannot reach" in n4.stderr_text(),
                   what="n4's join refused", alive=n4)
        self.assertIn("does not verify against tls.ca_file", n4.stderr_text())
        wait_until(lambda: "client certificate not accepted" in n1.stderr_text(),
                   what="n1 logs the refused certificate", alive=n1)
        self.assertEqual(len(cluster(n1)["members"]), 3)
        n4.kill()


if __name__ == "__main__":
    unittest.main()
