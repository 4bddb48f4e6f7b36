"""Histories of what clients did to a cluster, and the checkers that judge
them afterwards (in the manner of Jepsen and etcd's robustness tests).

A workload records every operation as it is invoked and as it completes:

    op = hist.invoke("write", client, key="t-3", value="v-17", node="n2")
    ...  # the request
    hist.ok(op, status=200)         # the cluster acknowledged it
    hist.fail(op, status=409)       # it certainly did not happen
    hist.info(op, error="timeout")  # it may or may not have happened

Times are time.monotonic() of the test process; an operation that ended
with info() has no completion (it may take effect any time after it was
invoked). Checkers are pure functions of a history and of what the test read
back at the end; each returns a Report (ok flag, counts, the first
offending operations) so that a test asserts report.ok and prints the
figures either way.

Checkers:
  lost_writes        every acknowledged registry write is in the final state;
                     nothing that certainly failed is.
  linearizable       reads and writes of single registers (one per key) have a
                     linearization consistent with real time (Wing & Gong's
                     search with Lowe's cache, as in Knossos and Porcupine).
  metered_once       every answered gateway call is in the meter exactly once;
                     no event the workload did not cause.
  budget_held        money spent never above a hard limit.
  revoked_unused     no call invoked after a revocation reached a router's view
                     was served with the revoked key or token.
"""

import threading
import time


class Op:
    __slots__ = ("id", "f", "client", "args", "invoked", "completed", "type", "result")

    def __init__(self, oid, f, client, args):
        self.id = oid
        self.f = f
        self.client = client
        self.args = args
        self.invoked = time.monotonic()
        self.completed = None
        self.type = "invoke"  # then ok, fail or info
        self.result = {}

    def __getattr__(self, name):
        try:
            return self.args[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        args = {k: v for k, v in self.args.items() if k != "token"}
        result = {k: (v[:120] if isinstance(v, bytes) else v) for k, v in self.result.items()}
        return (f"Op#{self.id}({self.f} {self.type} client={self.client} {args} "
                f"-> {result} t={self.invoked:.3f}..{self.completed or 0:.3f})")


class History:
    def __init__(self):
        self.ops = []
        self._lock = threading.Lock()

    def invoke(self, f, client, **args):
        with self._lock:
            op = Op(len(self.ops), f, client, args)
            self.ops.append(op)
        return op

    def _complete(self, op, kind, result):
        op.completed = time.monotonic() if kind != "info" else None
        op.type = kind
        op.result = result
        return op

    def ok(self, op, **result):
        return self._complete(op, "ok", result)

    def fail(self, op, **result):
        return self._complete(op, "fail", result)

    def info(self, op, **result):
        return self._complete(op, "info", result)

    def of(self, f, kind=None):
        return [o for o in self.ops if o.f == f and (kind is None or o.type == kind)]

    def summary(self):
        counts = {}
        for o in self.ops:
            counts[(o.f, o.type)] = counts.get((o.f, o.type), 0) + 1
        statuses = {}
        for o in self.ops:
            if o.type == "info" or o.f == "call":
                k = (f"{o.f} {o.type} {o.result.get('status')}/"
                     f"{o.result.get('error') or o.result.get('code') or '-'}")
                k = k[:80]
                statuses[k] = statuses.get(k, 0) + 1
        return (", ".join(f"{f} {t}: {n}" for (f, t), n in sorted(counts.items()))
                + "; answers: " + ", ".join(f"{k}: {n}" for k, n in sorted(statuses.items())))


class Report:
    def __init__(self, name, ok, figures, problems):
        self.name = name
        self.ok = ok
        self.figures = figures
        self.problems = problems

    def __bool__(self):
        return self.ok

    def __str__(self):
        figs = ", ".join(f"{k}={v}" for k, v in self.figures.items())
        text = f"{self.name}: {'ok' if self.ok else 'FAILED'} ({figs})"
        for p in self.problems[:10]:
            text += f"\n    {p}"
        if len(self.problems) > 10:
            text += f"\n    ... {len(self.problems) - 10} more"
        return text


# --- registry writes ----------------------------------------------------------


def lost_writes(history, final, f="write"):
    """@final maps key -> value read back from the cluster at the end (a
    consistent read, after healing). Every acknowledged write of a key whose
    value no later write could have replaced must be there, and a key that
    only certainly-failed writes touched must not exist.

    Writes here create one key each (put with a fresh key), so the check is
    exact: acknowledged -> present with its value."""
    acked = [o for o in history.of(f) if o.type == "ok"]
    failed = [o for o in history.of(f) if o.type == "fail"]
    written = {o.key for o in history.of(f) if o.type != "fail"}
    problems = []
    for o in acked:
        if final.get(o.key) != o.value:
            problems.append(f"lost: acknowledged {o!r}; final value {final.get(o.key)!r}")
    for o in failed:
        if o.key in final and o.key not in written:
            problems.append(f"phantom: {o!r} failed but its key exists")
    maybe = sum(1 for o in history.of(f) if o.type == "info")
    return Report("no acknowledged write lost", not problems,
                  {"acknowledged": len(acked), "failed": len(failed), "indeterminate": maybe,
                   "lost": sum(p.startswith("lost") for p in problems)}, problems)


# --- linearizability of registers -----------------------------------------------


def _linearizable_register(ops, initial=None, budget=2_000_000):
    """Wing & Gong's search over one register's operations, with Lowe's
    cache of (linearized set, state). @ops are Op with f "write"/"read",
    .args["value"] (write) or .result["value"] (read). Reads that did not
    complete ok are dropped (they constrain nothing); writes that ended in
    info may take effect at any time after their invocation or never.
    Returns (ok, explored) or (None, explored) when the search budget ran
    out."""
    ops = [o for o in ops if o.type == "ok" or (o.f == "write" and o.type == "info")]
    inf = float("inf")
    # Events: (time, kind, index); calls before returns at equal times.
    events = []
    for i, o in enumerate(ops):
        events.append((o.invoked, 0, i))
        events.append((o.completed if o.completed is not None else inf, 1, i))
    events.sort()
    # Doubly linked list of events, as in the algorithm.
    n = len(events)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    head = [0 if n else n]
    match = {}
    for pos, (_, kind, i) in enumerate(events):
        if kind == 1:
            match[i] = pos

    def unlink(pos):
        p, q = prv[pos], nxt[pos]
        if p >= 0:
            nxt[p] = q
        else:
            head[0] = q
        if q < n:
            prv[q] = p

    def relink(pos):
        p, q = prv[pos], nxt[pos]
        if p >= 0:
            nxt[p] = pos
        else:
            head[0] = pos
        if q < n:
            prv[q] = pos

    def apply(state, o):
        if o.f == "write":
            return True, o.args["value"]
        return o.result.get("value") == state, state

    linearized = 0
    state = initial
    stack = []
    cache = set()
    explored = 0
    pos = head[0]
    # Operations that may never take effect: a pending write (info) may be
    # left out; once only such returns remain, the history is linearizable.
    while head[0] < n:
        explored += 1
        if explored > budget:
            return None, explored
        if pos >= n:
            # No call left to try before the next return: backtrack.
            if not stack:
                return False, explored
            pos, state, linearized = _pop(stack, unlink, relink, match, events)
            pos = nxt[pos]
            continue
        t, kind, i = events[pos]
        if kind == 0:
            o = ops[i]
            ok, new_state = apply(state, o)
            if ok:
                key = (linearized | (1 << i), new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((pos, state, linearized))
                    linearized |= 1 << i
                    state = new_state
                    unlink(pos)
                    unlink(match[i])
                    pos = head[0]
                    continue
            pos = nxt[pos]
        else:
            # The first event is a return whose call is not linearized.
            o = ops[i]
            if t == inf:
                # Only never-completed writes are left before it: each may
                # simply not have happened.
                return True, explored
            if not stack:
                return False, explored
            pos, state, linearized = _pop(stack, unlink, relink, match, events)
            pos = nxt[pos]
    return True, explored


def _pop(stack, unlink, relink, match, events):
    pos, state, linearized = stack.pop()
    i = events[pos][2]
    relink(match[i])
    relink(pos)
    return pos, state, linearized


def linearizable(history, initial=None):
    """Check every register (ops "write"/"read" with args key) separately."""
    by_key = {}
    for o in history.ops:
        if o.f in ("write", "read") and "key" in o.args:
            by_key.setdefault(o.args["key"], []).append(o)
    problems = []
    explored = 0
    unknown = 0
    for key, ops in sorted(by_key.items()):
        ok, n = _linearizable_register(ops, initial)
        explored += n
        if ok is None:
            unknown += 1
        elif not ok:
            shown = sorted(ops, key=lambda o: o.invoked)
            problems.append(f"register {key} not linearizable: " +
                            "; ".join(repr(o) for o in shown[:12]))
    return Report("consistent reads linearizable", not problems,
                  {"registers": len(by_key), "ops": sum(len(v) for v in by_key.values()),
                   "states_explored": explored, "undecided": unknown}, problems)


# --- metering -------------------------------------------------------------------


def metered_once(history, event_ids, f="call", may_lose=()):
    """@event_ids: every request id in the meter (a list, duplicates kept).
    Each call answered (ok, with the request id the gateway returned) must be
    there exactly once; a call without an answer (info) at most once; no id
    the workload did not send. @may_lose: request ids allowed to be missing
    (answered by a router killed before its group commit, docs/meter.md)."""
    counts = {}
    for rid in event_ids:
        counts[rid] = counts.get(rid, 0) + 1
    calls = history.of(f)
    sent = {o.args["rid"] for o in calls}
    problems = []
    lost = dup = 0
    allowed_loss = 0
    allowed_by_status = {}
    for o in calls:
        n = counts.get(o.args["rid"], 0)
        if o.type == "ok" and n == 0:
            if o.args["rid"] in may_lose:
                allowed_loss += 1
                k = f"{o.result.get('status')}/{o.result.get('error') or '-'}"
                allowed_by_status[k] = allowed_by_status.get(k, 0) + 1
                continue
            lost += 1
            problems.append(f"not metered: {o!r}")
        if n > 1:
            dup += 1
            problems.append(f"metered {n} times: {o!r}")
    stray = [r for r in counts if r not in sent]
    if stray:
        problems.append(f"{len(stray)} events for request ids never sent: {stray[:5]}")
    answered = sum(1 for o in calls if o.type == "ok")
    return Report("every answered call metered exactly once", not problems,
                  {"answered": answered, "events": len(event_ids), "lost": lost,
                   "duplicated": dup, "stray": len(stray), "lost_allowed": allowed_loss,
                   **({"lost_allowed_by_status": allowed_by_status} if allowed_by_status else {})},
                  problems)


# --- budgets -------------------------------------------------------------------


def budget_held(limit, spent_by_source):
    """@spent_by_source: {"meter": n, "state machine": n, ...} in nano-USD."""
    over = {k: v - limit for k, v in spent_by_source.items() if v > limit}
    problems = [f"{k} shows {v + limit} > limit {limit} (overshoot {v})" for k, v in over.items()]
    figures = {"limit": limit, **spent_by_source,
               "overshoot": max(over.values()) if over else 0}
    return Report("hard budget never exceeded", not problems, figures, problems)


# --- revocation ----------------------------------------------------------------


def revoked_unused(history, revoked_at, f="call", key_of=lambda o: o.result.get("key")):
    """@revoked_at: {(node, key_or_token): monotonic time the node's view held
    the revocation}. No call invoked on that node at or after that time may
    have been served (ok with status 200) with it."""
    problems = []
    checked = 0
    for o in history.of(f, "ok"):
        for (node, what), t in revoked_at.items():
            if o.args.get("node") != node or o.invoked < t:
                continue
            checked += 1
            if o.result.get("status") == 200 and what in (key_of(o), o.args.get("token")):
                problems.append(f"served with revoked {what} on {node}: {o!r}")
    return Report("revoked keys and tokens unused", not problems,
                  {"calls_after_revocation": checked, "violations": len(problems)}, problems)
