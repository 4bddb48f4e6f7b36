"""Cluster test harness: real keyplane processes on loopback ports.

A test builds a Harness from its TestCase. The harness owns a temporary
directory, starts keyplaned and keyplane-mock processes on port 0 (so tests
never collide on ports), finds their addresses from what they publish
(DATA_DIR/listen.json for keyplaned, the first stdout line for the mock) and
stops everything in the test's cleanup. Every process writes its stdout and
stderr to files under the temporary directory; when the test failed or errored,
the cleanup prints the tail of each of them, so a red test always shows the
nodes' side of the story. Sanitizer reports found in any log fail the test even
when its assertions passed.

Waiting is done only with wait_until(): a condition polled against a generous
deadline, never a sleep that hopes enough time has passed. Deadlines can be
stretched for slow builds with KEYPLANE_TIMEOUT_SCALE (e.g. 3 under valgrind).

Environment:
  KEYPLANE_BIN_DIR        where the binaries are (default: REPO/build/bin)
  KEYPLANE_KEEP_TMP=1     keep the temporary directory (its path is printed)
  KEYPLANE_SHOW_LOGS=1    print the process logs even when the test passed
  KEYPLANE_TIMEOUT_SCALE  multiply every deadline by this factor

Python 3 standard library only.
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from http import client as http_client

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Lines that mean a sanitizer found a bug in the process that wrote them.
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "runtime error:",
)

LOG_TAIL_LINES = 200


class HarnessError(Exception):
    """The harness could not do what the test asked (not a test failure)."""


def timeout_scale():
    try:
        scale = float(os.environ.get("KEYPLANE_TIMEOUT_SCALE", "1"))
    except ValueError:
        return 1.0
    return scale if scale > 0 else 1.0


def bin_dir():
    return os.environ.get("KEYPLANE_BIN_DIR") or os.path.join(REPO_ROOT, "build", "bin")


def bin_path(name):
    """Path of the built binary @name; raises HarnessError saying how to build
    it when it is missing."""
    path = os.path.join(bin_dir(), name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError(
            f"{name} not found at {path}: build it "
            f"(cmake --build build --target {name}) or point KEYPLANE_BIN_DIR "
            f"at the directory holding the binaries")
    return path


# --- waiting ----------------------------------------------------------------


def wait_until(fn, timeout=30, interval=0.05, what="condition", alive=None):
    """Poll fn() until it returns a truthy value and return that value.

    Connection errors (OSError) raised by fn count as "not yet" and are kept as
    the last value, so waiting for a port to answer needs no try/except. When
    @alive (a process object with .poll() and .describe_exit()) has exited,
    the wait stops at once: nothing it was waiting for can happen anymore.
    Raises AssertionError naming @what and the last value at the deadline."""
    deadline = time.monotonic() + timeout * timeout_scale()
    last = None
    while True:
        try:
            last = fn()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        if alive is not None and alive.poll() is not None:
            raise AssertionError(
                f"gave up waiting for {what}: {alive.describe_exit()}; last value: {last!r}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout * timeout_scale():.1f}s waiting for {what}; "
                f"last value: {last!r}")
        time.sleep(interval)



def wait_equal(fn, expected, timeout=30, interval=0.05, what="value"):
    """Poll fn() until it returns @expected; on timeout the error names @what,
    the expected and the last value seen."""
    seen = []

    def check():
        seen[:] = [fn()]
        return seen[0] == expected

    try:
        wait_until(check, timeout=timeout, interval=interval, what=what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what} == {expected!r}; "
                             f"last value: {seen[0] if seen else None!r}") from None
    return expected

# --- HTTP -------------------------------------------------------------------


def http(method, url, body=None, headers=None, timeout=10, context=None):
    """One request on a fresh connection. Returns (status, headers, body bytes)
    with header names lower-cased (repeated headers joined with ", ").

    @body may be bytes, str, or a dict/list (sent as JSON). https:// URLs
    need @context (an ssl.SSLContext). Raises only for connection-level
    errors (OSError, http.client.HTTPException)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.scheme == "https" and context is None):
        raise HarnessError(f"http(): only http:// URLs, or https:// with a context, got {url!r}")
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if parts.scheme == "https":
        conn = http_client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                           context=context)
    else:
        conn = http_client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        out = {}
        for name, value in resp.getheaders():
            key = name.lower()
            out[key] = out[key] + ", " + value if key in out else value
        return resp.status, out, data
    finally:
        conn.close()


def http_json(method, url, body=None, headers=None, timeout=10, context=None):
    """http() with the body parsed as JSON (None when it is not JSON)."""
    status, hdrs, data = http(method, url, body=body, headers=headers, timeout=timeout,
                              context=context)
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    return status, hdrs, parsed


class RawResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-cased names
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"RawResponse({self.status} {self.reason}, {self.headers}, {self.body[:200]!r})"


class RawConn:
    """A plain TCP connection for sending exactly the bytes a test wants
    (malformed requests, pipelining, half-sent requests) and parsing the
    HTTP/1.1 responses that come back."""

    def __init__(self, addr, timeout=10):
        host, port = split_addr(addr)
        self.timeout = timeout * timeout_scale()
        self.sock = socket.create_connection((host, port), timeout=self.timeout)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete response within {self.timeout:.1f}s; "
                                 f"have {self.buf[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except socket.timeout:
            raise AssertionError(f"no complete response within {self.timeout:.1f}s; "
                                 f"have {self.buf[:300]!r}") from None
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _need(self, pred, deadline, what):
        while not pred():
            if not self._fill(deadline):
                if pred():
                    break
                raise AssertionError(f"connection closed before {what}; have {self.buf[:300]!r}")

    def read_response(self, head_request=False):
        """Read one whole response (Content-Length, chunked, or until close)."""
        deadline = time.monotonic() + self.timeout
        self._need(lambda: b"\r\n\r\n" in self.buf, deadline, "the end of the response headers")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
        if not m:
            raise AssertionError(f"bad status line {lines[0]!r}")
        status, reason = int(m.group(1)), m.group(2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = headers[key] + ", " + value if key in headers else value
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(deadline)
        elif "content-length" in headers:
            n = int(headers["content-length"])
            self._need(lambda: len(self.buf) >= n, deadline, f"{n} body bytes")
            body, self.buf = self.buf[:n], self.buf[n:]
        else:
            while self._fill(deadline):
                pass
            body, self.buf = self.buf, b""
        return RawResponse(status, reason, headers, body)

    def _read_chunked(self, deadline):
        body = b""
        while True:
            self._need(lambda: b"\r\n" in self.buf, deadline, "a chunk size")
            size_line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._need(lambda: b"\r\n" in self.buf, deadline, "the last chunk")
                # Skip trailers up to the empty line.
                while not self.buf.startswith(b"\r\n"):
                    self._need(lambda: self.buf.count(b"\r\n") >= 2, deadline, "trailers")
                    self.buf = self.buf.split(b"\r\n", 1)[1]
                self.buf = self.buf[2:]
                return body
            self._need(lambda: len(self.buf) >= size + 2, deadline, "chunk data")
            body += self.buf[:size]
            self.buf = self.buf[size + 2:]

    def wait_closed(self, timeout=None):
        """True once the peer closed (EOF or reset); False if it is still open
        at the deadline. Bytes that arrive meanwhile are kept in self.buf."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while self._fill(deadline):
                pass
        except AssertionError:
            return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def raw_http(addr, data, responses=1, timeout=10):
    """Send @data on a new connection and read @responses responses."""
    with RawConn(addr, timeout=timeout) as conn:
        conn.send(data)
        return [conn.read_response() for _ in range(responses)]


def split_addr(addr):
    """"127.0.0.1:7601", "http://127.0.0.1:7601/x" or (host, port) -> (host, port)."""
    if isinstance(addr, tuple):
        return addr
    if "://" in addr:
        parts = urllib.parse.urlsplit(addr)
        return parts.hostname, parts.port
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


# --- metrics ----------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape_label(value):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_metrics(text):
    """Prometheus text format -> list of (name, labels dict, value float).
    Raises AssertionError on a line that is not valid exposition format."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise AssertionError(f"bad metrics line {line!r}")
        labels = {}
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL_RE.match(body, pos)
            if not lm or lm.end() == pos:
                raise AssertionError(f"bad labels in metrics line {line!r}")
            labels[lm.group(1)] = _unescape_label(lm.group(2))
            pos = lm.end()
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def metric_value(text, name, **labels):
    """Sum of the samples named @name whose labels include @labels; None when
    there is none."""
    found = [v for n, l, v in parse_metrics(text)
             if n == name and all(l.get(k) == str(want) for k, want in labels.items())]
    return sum(found) if found else None


# --- logs and secrets -------------------------------------------------------


def log_lines(path, strict=False):
    """The JSON objects logged one per line in @path. Non-JSON lines are
    skipped, or raise AssertionError naming the line when @strict."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                if strict:
                    raise AssertionError(f"{path}:{n}: not a JSON object: {line[:300]!r}")
                continue
            out.append(obj)
    return out


def _base64_needles(secret):
    """Substrings that any base64 encoding of a text containing @secret must
    contain, for each of the three byte alignments, in the standard and the
    URL-safe alphabet."""
    needles = set()
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + secret).rstrip(b"=")
        # Drop the characters that mix in the padding before and the unknown
        # bytes after the secret.
        start = (shift * 8 + 5) // 6
        stable = enc[start:len(enc) - 2]
        if len(stable) >= 8:
            needles.add(stable)
            needles.add(stable.replace(b"+", b"-").replace(b"/", b"_"))
    return needles


def _secret_forms(secret):
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {("raw", raw)}
    quoted = urllib.parse.quote(raw, safe="")
    forms.add(("url-encoded", quoted.encode()))
    forms.add(("url-encoded", quoted.lower().encode()))
    forms.add(("url-encoded", urllib.parse.quote_plus(raw).encode()))
    for needle in _base64_needles(raw):
        forms.add(("base64", needle))
    return forms


def _walk_files(paths):
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                for name in files:
                    yield os.path.join(root, name)
        elif os.path.exists(p):
            yield p


def assert_no_secrets(paths, secrets):
    """Fail if any file in @paths (files or directories, walked) contains any
    of @secrets raw, base64-encoded (any alignment) or URL-encoded."""
    forms = [(s, kind, needle) for s in secrets for kind, needle in _secret_forms(s)]
    hits = []
    for path in _walk_files(paths):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for secret, kind, needle in forms:
            at = data.find(needle)
            if at >= 0:
                line = data.count(b"\n", 0, at) + 1
                hits.append(f"{path}:{line}: {kind} form of secret {str(secret)[:12]}...")
    if hits:
        raise AssertionError("secrets found:\n  " + "\n  ".join(hits))


# --- config files -----------------------------------------------------------


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(v))


def to_yaml(value, indent=0):
    """A small YAML writer for config dicts: scalars, lists and nested dicts."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            elif isinstance(v, (dict, list)):
                lines.append(f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict) and v:
                sub = to_yaml(v, indent + 1).split("\n")
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            elif isinstance(v, list) and v:
                lines.append(f"{pad}-")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return "\n".join(lines)


# --- processes --------------------------------------------------------------


def _tail(path, n=LOG_TAIL_LINES):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"(cannot read: {e})"
    if len(lines) > n:
        return f"... ({len(lines) - n} lines omitted)\n" + "\n".join(lines[-n:])
    return "\n".join(lines) if lines else "(empty)"


def _describe_rc(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with code {rc}"


class _Proc:
    """A process started by the harness with its output in log files."""

    def __init__(self, harness, name, argv, env):
        self.harness = harness
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.stdout_path = os.path.join(harness.log_dir, f"{name}.stdout.log")
        self.log_path = os.path.join(harness.log_dir, f"{name}.stderr.log")
        self.proc = None

    def _spawn(self):
        with open(self.stdout_path, "ab") as out, open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=self.env, cwd=self.harness.tmp)

    @property
    def pid(self):
        return self.proc.pid

    def poll(self):
        return self.proc.poll() if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def describe_exit(self):
        rc = self.poll()
        return (f"{self.name} (pid {self.pid}) {_describe_rc(rc)}; stderr:\n"
                f"{_tail(self.log_path, 40)}")

    def stderr_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def send_signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout=30):
        """Wait for the process to exit and return its code (negative: the
        signal that killed it). Raises AssertionError at the deadline."""
        try:
            return self.proc.wait(timeout=timeout * timeout_scale())
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) still running after "
                                 f"{timeout * timeout_scale():.1f}s") from None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send @sig and wait for the exit; returns the exit code. A process
        that does not exit by the deadline is killed and AssertionError raised."""
        if not self.running():
            return self.poll()
        self.proc.send_signal(sig)
        try:
            return self.wait_exit(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self):
        """SIGKILL and reap; returns the exit code."""
        if self.running():
            self.proc.kill()
        return self.proc.wait()


class MockProc(_Proc):
    url = None
    port = None

    def start(self):
        self._spawn()
        pattern = re.compile(r"keyplane-mock listening on (http://(\S+):(\d+))")

        def listening():
            with open(self.stdout_path, "rb") as f:
                m = pattern.search(f.read().decode("utf-8", "replace"))
            return m

        m = wait_until(listening, timeout=30, what=f"{self.name} to print its address",
                       alive=self)
        self.url = m.group(1)
        self.port = int(m.group(3))
        return self


class NodeProc(_Proc):
    """A keyplaned process. Addresses come from DATA_DIR/listen.json, which
    keyplaned writes atomically once its listeners are bound."""

    def __init__(self, harness, name, argv, env, data_dir, tls_context=None,
                 tls_gateway=False, tls_control=False):
        super().__init__(harness, name, argv, env)
        self.data_dir = data_dir
        self.listen = None
        self.gateway_url = self.control_url = self.raft_addr = None
        # With TLS listeners: the ssl.SSLContext the harness's own calls use.
        self.tls_context = tls_context
        self.tls_gateway = tls_gateway
        self.tls_control = tls_control

    @property
    def listen_path(self):
        return os.path.join(self.data_dir, "listen.json")

    def _read_listen(self):
        try:
            with open(self.listen_path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == self.proc.pid else None

    def start(self, wait_listen=True, wait_ready=True):
        self._spawn()
        if not wait_listen:
            return self
        self.listen = wait_until(self._read_listen, timeout=30,
                                 what=f"{self.name} to write {self.listen_path} with its pid",
                                 alive=self)
        self.gateway_url = ("https://" if self.tls_gateway else "http://") + self.listen["gateway"]
        self.control_url = ("https://" if self.tls_control else "http://") + self.listen["control"]
        self.raft_addr = self.listen.get("raft")
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        wait_until(lambda: http("GET", self.control_url + "/readyz", timeout=5,
                                context=self.tls_context)[0] == 200,
                   timeout=timeout, what=f"{self.name} GET /readyz == 200", alive=self)

    @property
    def control_addr(self):
        return split_addr(self.listen["control"])

    @property
    def gateway_addr(self):
        return split_addr(self.listen["gateway"])

    @property
    def admin_token(self):
        """The bootstrap admin token (DATA_DIR/admin.token), or None."""
        try:
            with open(os.path.join(self.data_dir, "admin.token")) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def control(self, method, path, body=None, headers=None, timeout=10, auth=True):
        """A request to the control port, with the admin token when one exists."""
        hdrs = dict(headers or {})
        if auth and self.admin_token and "Authorization" not in hdrs:
            hdrs["Authorization"] = "Bearer " + self.admin_token
        return http(method, self.control_url + path, body=body, headers=hdrs, timeout=timeout,
                    context=self.tls_context)

    def metrics(self):
        status, _, body = http("GET", self.control_url + "/metrics", context=self.tls_context)
        if status != 200:
            raise AssertionError(f"GET /metrics -> {status}: {body[:300]!r}")
        return body.decode()

    def restart(self, wait_ready=True, keep_ports=False, timeout=30):
        """Stop (SIGTERM) and start again with the same data directory. With
        @keep_ports the new process binds the addresses the old one had."""
        if self.running():
            self.stop(timeout=timeout)
        if keep_ports and self.listen:
            for flag, key in (("--gateway-listen", "gateway"), ("--control-listen", "control"),
                              ("--raft-listen", "raft")):
                if self.listen.get(key):
                    i = self.argv.index(flag)
                    self.argv[i + 1] = self.listen[key]
        return self.start(wait_ready=wait_ready)


def _clean_env(home):
    """The test runner's environment minus anything that would configure a
    keyplane process behind the test's back, or send its loopback traffic
    through a proxy."""
    keep = {"KEYPLANE_TRACE"}
    drop = {"XDG_CONFIG_HOME", "http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("KEYPLANE_") and k not in keep) and k.lower() not in drop}
    env["HOME"] = home
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def _test_failed(testcase):
    """True when the running test has failed or errored so far."""
    outcome = getattr(testcase, "_outcome", None)
    if outcome is None:
        return False
    if getattr(outcome, "errors", None):  # Python <= 3.10 collects them here
        return any(exc is not None for _, exc in outcome.errors)
    result = getattr(outcome, "result", None)
    if result is None:
        return not getattr(outcome, "success", True)
    for test, _ in list(getattr(result, "errors", [])) + list(getattr(result, "failures", [])):
        if test is testcase or getattr(test, "test_case", None) is testcase:
            return True
    return False


class Harness:
    """Everything one test starts. h = Harness(self) in a test or setUp."""

    def __init__(self, testcase, check_sanitizers=True):
        self.testcase = testcase
        self.check_sanitizers = check_sanitizers
        self.tmp = tempfile.mkdtemp(prefix="kp-cluster-")
        self.log_dir = os.path.join(self.tmp, "logs")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.log_dir)
        os.makedirs(self.home)
        self.procs = []
        self._names = set()
        self.networks = []  # faults.Network, closed after the processes stop
        self.mounts = []  # faults.Tmpfs
        testcase.addCleanup(self._cleanup)

    # -- naming and files --

    def _unique(self, name):
        base, n = name, 1
        while name in self._names:
            n += 1
            name = f"{base}.{n}"
        self._names.add(name)
        return name

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def write_file(self, name, content, mode=0o600):
        """Write @content (str or bytes) to TMP/name and return the path."""
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def write_config(self, name, config):
        """@config as YAML (a dict, or text used as is) in TMP/name."""
        text = config if isinstance(config, str) else to_yaml(config) + "\n"
        return self.write_file(name, text)

    def env(self, extra=None):
        env = _clean_env(self.home)
        env.update(extra or {})
        return env

    def add_network(self, net):
        self.networks.append(net)

    def add_mount(self, mount):
        self.mounts.append(mount)

    # -- processes --

    def start_mock(self, extra_args=(), name="mock", host=None):
        """Start keyplane-mock on port 0; with @host (a faults.Host) inside
        that host's network namespace on its address."""
        name = self._unique(name)
        addr = host.ip if host else "127.0.0.1"
        argv = [bin_path("keyplane-mock"), "--listen", addr + ":0", *extra_args]
        if host:
            argv = host.wrap(argv)
        mock = MockProc(self, name, argv, self.env())
        self.procs.append(mock)
        return mock.start()

    def start_node(self, name="n1", config=None, args=(), env=None, wait_ready=True,
                   data_dir=None, wait_listen=True, tls_context=None, host=None):
        """Start keyplaned on port 0 for every listener. @config (dict or YAML
        text) is passed with --config. With wait_listen=False the call returns
        as soon as the process is spawned (for tests that expect it to fail).
        A dict @config with tls: gateway/control makes the node's URLs https,
        called with @tls_context (an ssl.SSLContext). With @host (a
        faults.Host) the node runs inside that host's network namespace and
        listens on its address."""
        name = self._unique(name)
        data_dir = data_dir or self.path(name, "data")
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        addr = (host.ip if host else "127.0.0.1") + ":0"
        argv = [bin_path("keyplaned"), "--data-dir", data_dir,
                "--gateway-listen", addr, "--control-listen", addr, "--raft-listen", addr]
        if config is not None:
            argv += ["--config", self.write_config(os.path.join(name, "keyplane.yaml"), config)]
        argv += list(args)
        if host:
            argv = host.wrap(argv)
        node_env = {"KEYPLANE_NODE_NAME": name.split(".")[0]}
        node_env.update(env or {})
        tls = config.get("tls", {}) if isinstance(config, dict) else {}
        node = NodeProc(self, name, argv, self.env(node_env), data_dir, tls_context=tls_context,
                        tls_gateway=bool(tls.get("gateway")), tls_control=bool(tls.get("control")))
        node.host = host
        self.procs.append(node)
        return node.start(wait_listen=wait_listen, wait_ready=wait_ready)

    def run(self, argv, timeout=30, env=None, input=None, name=None):
        """Run a command to completion (argv[0] without a slash is a keyplane
        binary). Returns subprocess.CompletedProcess with text stdout/stderr,
        which are also kept in the log directory."""
        argv = list(argv)
        if "/" not in argv[0]:
            argv[0] = bin_path(argv[0])
        name = self._unique(name or os.path.basename(argv[0]))
        try:
            cp = subprocess.run(argv, input=input, capture_output=True, text=True,
                                env=self.env(env), cwd=self.tmp,
                                timeout=timeout * timeout_scale())
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"{' '.join(argv)} did not finish within {timeout * timeout_scale():.1f}s; "
                f"stderr: {e.stderr!r}") from None
        for suffix, text in (("stdout", cp.stdout), ("stderr", cp.stderr)):
            with open(os.path.join(self.log_dir, f"{name}.{suffix}.log"), "w") as f:
                f.write(text or "")
        return cp

    # -- teardown --

    def _stop_all(self):
        for p in reversed(self.procs):
            if not p.running():
                continue
            p.send_signal(signal.SIGCONT)  # one a test paused must see the SIGTERM
            try:
                p.stop(signal.SIGTERM, timeout=30)
            except AssertionError:
                pass  # stop() already killed it

    def _sanitizer_reports(self):
        found = []
        for name in sorted(os.listdir(self.log_dir)):
            path = os.path.join(self.log_dir, name)
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    found.append(f"{name}: {marker}")
        return found

    def dump_logs(self, stream=None):
        stream = stream or sys.stderr
        for name in sorted(os.listdir(self.log_dir)):
            path = os.path.join(self.log_dir, name)
            stream.write(f"\n----- {name} -----\n{_tail(path)}\n")
        stream.flush()

    def _cleanup(self):
        reports = []
        try:
            self._stop_all()
            reports = self._sanitizer_reports() if self.check_sanitizers else []
            if (reports or _test_failed(self.testcase)
                    or os.environ.get("KEYPLANE_SHOW_LOGS") == "1"):
                sys.stderr.write(f"\n===== logs of {self.testcase.id()} ({self.log_dir}) =====")
                self.dump_logs()
        finally:
            # Even when stopping or printing failed: no process or directory
            # outlives the test.
            for p in self.procs:
                if p.running():
                    p.send_signal(signal.SIGCONT)  # a paused process cannot die
                    p.kill()
            for res in reversed(self.networks + self.mounts):
                res.close()
            if os.environ.get("KEYPLANE_KEEP_TMP") == "1":
                sys.stderr.write(f"\nkept {self.tmp}\n")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        if reports:
            raise AssertionError("sanitizer reports in process logs: " + "; ".join(reports))
