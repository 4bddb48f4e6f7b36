"""Raft between nodes over mutual TLS (docs/operations.md, "Securing node links").

Certificates come from a fresh cluster CA made per test with
deploy/make-certs.sh (the openssl command). Covers: three nodes forming a
cluster over TLS and replicating writes, SIGHUP reloading the certificates
(and keeping the old ones when a file is bad); a node whose certificate
another CA signed never becoming a member, with the refusal logged; plain
text and TLS without a certificate refused on the Raft port; and the
bytes on the Raft ports, captured on loopback, not holding the id of a
provider key just written, while the same capture without TLS does hold
it (so the check can fail).
"""

import os
import signal
import socket
import ssl
import struct
import threading
import time
import unittest
import uuid

from harness import wait_until
from test_raft_cluster import CONFIG, MASTER_KEY, Cluster

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAKE_CERTS = os.path.join(REPO, "deploy", "make-certs.sh")


def make_certs(h, name, *nodes):
    """A new CA in TMP/name and a certificate for each of @nodes."""
    d = h.path(name)
    r = h.run(["/bin/bash", MAKE_CERTS, d, *nodes])
    if r.returncode != 0:
        raise AssertionError(f"make-certs.sh failed: {r.stdout}{r.stderr}")
    return d


def tls_config(certs, name):
    return {"tls": {"cert_file": os.path.join(certs, name + ".pem"),
                    "key_file": os.path.join(certs, name + ".key"),
                    "ca_file": os.path.join(certs, "ca.pem")}}


class TlsCluster(Cluster):
    """test_raft_cluster's Cluster, each node with its own certificate."""

    def __init__(self, test, certs=None):
        super().__init__(test)
        self.certs = certs

    def config(self, name, certs=None):
        cfg = dict(CONFIG)
        certs = certs or self.certs
        if certs:
            cfg.update(tls_config(certs, name))
        return cfg

    def start(self, n=3):
        first = self.h.start_node("n1", config=self.config("n1"),
                                  env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
        self.token = first.admin_token
        self.nodes.append(first)
        for i in range(2, n + 1):
            self.add_node(f"n{i}")
        self.wait_members(n)
        return self

    def add_node(self, name, extra_config=None, key=MASTER_KEY, wait_ready=True, certs=None):
        extra = {k: v for k, v in self.config(name, certs).items() if k not in CONFIG}
        extra.update(extra_config or {})
        return super().add_node(name, extra_config=extra, key=key, wait_ready=wait_ready)


class LoopbackCapture:
    """Every TCP payload to or from @ports on the loopback interface, read
    with an AF_PACKET socket (root only). Payloads are kept per direction
    in arrival order, so a value split across segments is still found."""

    def __init__(self, ports):
        self.ports = set(ports)
        self.flows = {}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0800))
        # Every packet on lo is queued here, other tests' too: a large queue
        # so that none of ours is dropped while this thread is slow.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.stopping = False
        self.drain_deadline = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        # After stop(), what is queued is still read: the thread may lag
        # behind the test on a busy machine. It ends when the queue is
        # empty (a read times out), or at the drain deadline.
        while not (self.stopping and time.monotonic() > self.drain_deadline):
            try:
                frame, addr = self.sock.recvfrom(262144)
            except socket.timeout:
                if self.stopping:
                    return
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows each packet twice: keep the incoming copy
            self._packet(frame[14:])

    def _packet(self, ip):
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            return
        sport, dport = struct.unpack("!HH", tcp[:4])
        if sport not in self.ports and dport not in self.ports:
            return
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            self.flows.setdefault((sport, dport), bytearray()).extend(payload)

    def stop(self):
        self.drain_deadline = time.monotonic() + 30
        self.stopping = True
        self.thread.join()
        self.sock.close()
        return self.flows


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


class RaftTlsTest(unittest.TestCase):
    def test_cluster_over_tls_replicates_and_reloads(self):
        c = TlsCluster(self)
        c.certs = make_certs(c.h, "certs", "n1", "n2", "n3")
        c.start(3)
        for nd in c.nodes:
            self.assertIn("over mutual TLS", nd.stderr_text())
        leader = c.wait_leader()
        followers = [nd for nd in c.nodes if nd is not leader]
        status, body = c.put_tenant(leader, "over-tls")
        self.assertIn(status, (200, 201), body)
        status, body = c.put_tenant(followers[0], "via-follower")
        self.assertIn(status, (200, 201), body)
        for nd in c.nodes:
            wait_until(lambda nd=nd: {"over-tls", "via-follower"} <= (c.tenants(nd) or set()),
                       what=f"{nd.name} to hold both writes")

        # SIGHUP rereads the files; new links use them.
        n3 = c.nodes[2]
        n3.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificates reloaded" in n3.stderr_text(),
                   what="n3 to log the reload", alive=n3.proc)

        # A file that no longer parses is refused and the old certificates stay.
        with open(os.path.join(c.certs, "n3.pem"), "w") as f:
            f.write("not a certificate\n")
        n3.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS certificates not reloaded" in n3.stderr_text(),
                   what="n3 to refuse the bad certificate file", alive=n3.proc)
        self.assertIn("n3.pem", n3.stderr_text())
        # n3 still talks to the others: kill the leader, so new links are made.
        leader = c.wait_leader()
        leader.kill()
        survivors = [nd for nd in c.nodes if nd.running()]
        c.wait_leader(survivors)

        def write():
            status, _ = c.put_tenant(survivors[0], "after-reload")
            return status in (200, 201)
        wait_until(write, what="a write after the failed reload")
        for nd in survivors:
            wait_until(lambda nd=nd: "after-reload" in (c.tenants(nd) or set()),
                       what=f"{nd.name} to hold the write")

    def test_node_with_another_ca_cannot_join(self):
        c = TlsCluster(self)
        c.certs = make_certs(c.h, "certs", "n1")
        other = make_certs(c.h, "other-ca", "intruder")
        c.start(1)
        n1 = c.nodes[0]
        intruder = c.add_node("intruder", certs=other, wait_ready=False)
        # The leader dials the new member and refuses its certificate; the
        # intruder refuses the leader's the same way.
        wait_until(lambda: "refused" in n1.stderr_text()
                   and intruder.raft_addr in n1.stderr_text(),
                   what="n1 to log the refused link to the intruder")
        self.assertIn("certificate verify failed", n1.stderr_text())
        wait_until(lambda: "refused" in intruder.stderr_text(),
                   what="the intruder to log the refusal", alive=intruder.proc)

        # Writes still commit, and the intruder never gets them.
        status, body = c.put_tenant(n1, "members-only")
        self.assertIn(status, (200, 201), body)
        st = c.state(n1)
        self.assertEqual([m["name"] for m in st["members"] if m["role"] == "voter"], ["n1"], st)
        self.assertFalse(any(m.get("name") == "intruder" and m.get("reachable")
                             for m in st["members"]), st)
        self.assertNotIn("members-only", intruder.stderr_text())
        status, _, _ = intruder.control("GET", "/readyz")
        self.assertNotEqual(status, 200, "the intruder must never turn ready")

    def test_no_certificate_and_plaintext_are_refused(self):
        c = TlsCluster(self)
        c.certs = make_certs(c.h, "certs", "n1")
        c.start(1)
        n1 = c.nodes[0]
        host, port = n1.raft_addr.rsplit(":", 1)
        # raft_uv_tcp's preamble in plain text: protocol 1, node id 99, an
        # address; then bytes that would be a message.
        addr = b"127.0.0.1:1".ljust(16, b"\0")
        preamble = struct.pack("<QQQ", 1, 99, len(addr)) + addr + b"\x01" * 64
        with socket.create_connection((host, int(port)), timeout=10) as s:
            try:
                s.sendall(preamble)
                self.assertIn(s.recv(4096)[:1], (b"", b"\x15"), "a TLS alert or a close")
            except ConnectionResetError:
                pass  # closed with bytes unread
        wait_until(lambda: "refused: TLS handshake failed" in n1.stderr_text(),
                   what="n1 to refuse the plain-text link", alive=n1.proc)

        # TLS trusting the cluster CA but presenting no certificate: the
        # handshake may finish on the client's side (TLS 1.3), the link
        # never carries anything.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(os.path.join(c.certs, "ca.pem"))
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw) as s:
                    s.sendall(preamble)
                    self.assertEqual(s.recv(4096), b"")
            except OSError:
                pass  # the alert (certificate required), or the close after it
        wait_until(lambda: "peer did not return a certificate" in n1.stderr_text(),
                   what="n1 to refuse the link without a certificate", alive=n1.proc)
        status, body = c.put_tenant(n1, "still-alone")
        self.assertIn(status, (200, 201), body)
        self.assertEqual([m["name"] for m in c.state(n1)["members"]], ["n1"])

    def capture_write(self, certs):
        """Three nodes, TLS when @certs; the bytes their Raft ports carried
        while a provider key with a unique id was written and replicated."""
        c = TlsCluster(self)
        if certs:
            c.certs = make_certs(c.h, "certs", "n1", "n2", "n3")
        c.start(3)
        leader = c.wait_leader()
        status, body = c.json(leader, "PUT", "/admin/v1/providers/wire",
                              body={"kind": "openai", "base_url": "https://api.openai.com/v1"})
        self.assertEqual(status, 201, body)
        try:
            cap = LoopbackCapture(port_of(nd.raft_addr) for nd in c.nodes)
        except PermissionError:
            self.skipTest("capturing on loopback needs root (CAP_NET_RAW)")
        key_id = "probe-" + uuid.uuid4().hex
        try:
            status, body = c.json(leader, "PUT", "/admin/v1/keys/" + key_id,
                                  body={"provider": "wire", "secret": "sk-wire-test-0000000001",
                                        "name": "display " + key_id})
            self.assertEqual(status, 201, body)
            for nd in c.nodes:
                wait_until(lambda nd=nd: c.req(nd, "GET", "/admin/v1/keys/" + key_id)[0] == 200,
                           what=f"{nd.name} to hold the key")
        finally:
            flows = cap.stop()
        wire = b"".join(bytes(v) for v in flows.values())
        self.assertGreater(len(wire), 0, "nothing captured on the Raft ports")
        return key_id.encode(), wire

    def test_raft_bytes_on_the_wire_are_not_plaintext(self):
        key_id, wire = self.capture_write(certs=True)
        self.assertNotIn(key_id, wire)
        self.assertNotIn(b"display probe-", wire)
        # What was captured is TLS 1.3: application data records.
        self.assertIn(b"\x17\x03\x03", wire)

    def test_raft_bytes_without_tls_are_plaintext(self):
        # The control for the test above: the same capture finds the key id.
        key_id, wire = self.capture_write(certs=False)
        self.assertIn(key_id, wire)


if __name__ == "__main__":
    unittest.main()
