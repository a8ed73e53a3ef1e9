"""The seeded scheduler: clients as threads of which exactly one runs at a time.

Each client is a real thread running real :class:`blockstore.objectstore.ObjectStore` code.
Whenever it sends a request it stops (:meth:`World.request`) until the scheduler picks that
request; the scheduler then applies it to the bucket - or not, with the fault it drew - and
lets that one client run until its next request. Everything else the runs depend on comes
from the seed too: which pending request goes next, the fault, how far the virtual clock
moves, the lease ids and tokens the code draws (``uuid.uuid4`` and ``secrets.token_hex``
are drawn from the seed while the world runs), and each client's own choices. So a seed
replays exactly, and its trace (one line per step) says what happened.

Faults, each drawn per step (probabilities in :class:`Faults`):

* ``lost-reply``: applied, the reply lost; the client library retries the same request
  later (a conditional put then meets its own write: 412 or "already exists").
* ``lost-reply-error``: applied, the reply lost, the client gives up ("timed out").
* ``dropped``: never applied; retried later (a delay).
* ``dropped-error``: never applied; the client gives up.
* ``stale``: a read (GET, a LIST page) served from the state when it arrived.
* ``crash``: the client dies before this request; every later request of it fails at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .store import Request, SimBucket, SimConnection, timed_out

__all__ = ["Crashed", "Faults", "SimHang", "World"]

START = 1_800_000_000.0  # the virtual clock at the start of every run
MAX_STEPS = 5000
HANG_SECONDS = 30.0  # real seconds a client may run without reaching a request


class Crashed(BaseException):
    """Raised in a client that the scheduler crashed (a process that died): no ``except
    Exception`` of the code under test stops it."""


class SimHang(AssertionError):
    """A client ran without sending a request or ending (a deadlock in the simulation)."""


@dataclass(frozen=True)
class Faults:
    lost_reply: float = 0.04
    lost_reply_error: float = 0.02
    dropped: float = 0.04
    dropped_error: float = 0.02
    stale: float = 0.15
    crash: float = 0.006
    #: Seconds the virtual clock may move per step (drawn uniformly from this tuple).
    advance: tuple[float, ...] = (0.0, 0.0, 0.0, 0.1, 0.5, 2.0)

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class InlinePool:
    """Runs ``submit``ted work at once in the caller (the client's one thread)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        from concurrent.futures import Future
        f: Future[Any] = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by the future
            f.set_exception(exc)
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class SimClock:
    """The store's clock as the client sees it: the virtual clock, no offset."""

    offset = 0.0

    def __init__(self, world: World) -> None:
        self._world = world

    def now(self) -> float:
        return self._world.now

    def observe(self, last_modified: float, sent: float, acked: float) -> None:
        pass


class _Client:
    def __init__(self, name: str, body: Callable[[Any], Any]) -> None:
        self.name = name
        self.body = body
        self.conn: SimConnection | None = None
        self.thread: threading.Thread | None = None
        self.dead = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_text = ""
        #: Where this client's thread waits (on the world's one lock): woken alone, so a
        #: step wakes the one thread that runs next, not every client's.
        self.cv: threading.Condition | None = None


class World:
    """One run: a bucket, clients, a virtual clock, a seed."""

    def __init__(self, seed: int, faults: Faults | None = None,
                 fault_ok: Callable[[Request, str], bool] | None = None) -> None:
        self.seed = seed
        self.faults = faults or Faults()
        self.fault_ok = fault_ok or (lambda req, fault: True)
        self.rng = random.Random(f"sched-{seed}")
        self._ids = random.Random(f"ids-{seed}")
        self.now = START
        self.bucket = SimBucket(lambda: self.now)
        self.trace: list[str] = []
        self.step = 0
        self.clients: dict[str, _Client] = {}
        self.checks: list[Callable[[], None]] = []
        self._lock = threading.RLock()
        #: Where the scheduler waits for the running client to send a request or end.
        self._cv = threading.Condition(self._lock)
        self._pending: dict[str, Request] = {}
        self._running: str | None = None
        self._aborting = False

    # -- clients ------------------------------------------------------------------------
    def add_client(self, name: str, body: Callable[[Any], Any]) -> None:
        c = self.clients[name] = _Client(name, body)
        c.cv = threading.Condition(self._lock)

    def client_rng(self, name: str) -> random.Random:
        return random.Random(f"client-{self.seed}-{name}")

    def connection(self, name: str) -> SimConnection:
        return SimConnection(self, name)

    def object_client(self, name: str, url: Any) -> Any:
        from blockstore.objectclient import ObjectClient
        c = ObjectClient(url, store=self.connection(name), pool=InlinePool())
        c.clock = SimClock(self)  # type: ignore[assignment]
        return c

    # -- the client side ----------------------------------------------------------------
    def request(self, conn: SimConnection, req: Request) -> Any:
        """Called in a client's thread: wait until the scheduler has decided ``req``."""
        me = self.clients[conn.client]
        with self._cv:
            if me.dead:
                raise Crashed(conn.client)
            req.client = conn.client
            req.arrival = self.bucket.version
            self._pending[conn.client] = req
            self._running = None
            self._cv.notify()
            assert me.cv is not None
            while req.outcome is None:
                me.cv.wait()
        kind, value = req.outcome
        if kind == "raise":
            raise value
        return value

    def pause(self, name: str) -> None:
        """A client waiting a while (for a lease to free up): one scheduling point."""
        self.request(SimConnection(self, name), Request("PAUSE", "-"))

    def _thread(self, c: _Client) -> None:
        assert c.cv is not None
        with self._lock:
            while self._running != c.name:
                c.cv.wait()
        try:
            c.result = c.body(c.name)
        except Crashed:
            c.result = "stopped at the failed check" if self._aborting else "crashed"
        except BaseException as exc:  # noqa: BLE001 - reported by the run
            c.error = exc
            c.error_text = traceback.format_exc()
        finally:
            with self._lock:
                c.done = True
                self._running = None
                self._cv.notify()

    # -- the scheduler ------------------------------------------------------------------
    def _let_run(self, name: str) -> None:
        """With the lock held: let ``name`` run until it sends a request or ends."""
        self._running = name
        cv = self.clients[name].cv
        assert cv is not None
        cv.notify()
        while self._running is not None:
            if not self._cv.wait(timeout=HANG_SECONDS):
                raise SimHang(f"seed {self.seed}: client {name} neither sent a request nor "
                              f"ended within {HANG_SECONDS}s\n" + self.format_trace())

    def _draw_fault(self, req: Request) -> str:
        f, r = self.faults, self.rng.random()
        table = [("crash", f.crash), ("lost-reply", f.lost_reply),
                 ("lost-reply-error", f.lost_reply_error), ("dropped", f.dropped),
                 ("dropped-error", f.dropped_error)]
        if req.op in ("GET", "LIST"):
            table.append(("stale", f.stale))
        if req.op == "PAUSE":  # waiting, not a request: nothing to fail
            table = []
        for name, p in table:
            if r < p:
                return name if self.fault_ok(req, name) else "ok"
            r -= p
        return "ok"

    def run(self) -> None:
        """Run every client added since the last run to its end, checking every invariant
        after every step (a world may run several phases: a setup, then the clients)."""
        with deterministic_ids(self._ids), one_cpu():
            fresh = [c for c in self.clients.values() if c.thread is None]
            for c in fresh:
                c.thread = threading.Thread(target=self._thread, args=(c,),
                                            name=f"sim-{c.name}", daemon=True)
                c.thread.start()
            with self._cv:
                try:
                    for c in fresh:  # each runs to its first request
                        self._let_run(c.name)
                    self._check()
                    while self._pending:
                        self.step += 1
                        if self.step > MAX_STEPS:
                            raise AssertionError(f"seed {self.seed}: no end after "
                                                 f"{MAX_STEPS} steps")
                        self._one_step()
                        self._check()
                except BaseException:
                    self._abort()
                    raise
            for c in fresh:
                assert c.thread is not None
                c.thread.join(timeout=HANG_SECONDS)

    def _abort(self) -> None:
        """With the lock held: crash every client (after a failed check) so threads end."""
        self._aborting = True
        for c in self.clients.values():
            c.dead = True
        for name, req in sorted(self._pending.items()):
            req.outcome = ("raise", Crashed(name))
        self._pending.clear()
        self._notify_clients()
        for c in self.clients.values():
            if c.thread is not None and c.thread.ident is not None and not c.done:
                self._running = c.name
                self._notify_clients()
                self._cv.wait_for(lambda: c.done, timeout=HANG_SECONDS)

    def _notify_clients(self) -> None:
        for c in self.clients.values():
            assert c.cv is not None
            c.cv.notify_all()

    def _one_step(self) -> None:
        name = self.rng.choice(sorted(self._pending))
        req = self._pending[name]
        fault = self._draw_fault(req)
        if req.args.get("once") and fault in ("lost-reply", "dropped"):
            fault += "-error"  # a request the client never resends
        self.now += self.rng.choice(self.faults.advance)
        line = f"{self.step:4d} t+{self.now - START:7.1f} {name:>10}: {req.describe()}"
        outcome: tuple[str, Any] | None
        if fault == "crash":
            self.clients[name].dead = True
            outcome = ("raise", Crashed(name))
        elif fault in ("dropped", "dropped-error"):
            outcome = None if fault == "dropped" else ("raise", timed_out(req))
        else:
            try:
                outcome = self.bucket.apply(req, stale=fault == "stale")
            except AssertionError:  # an invariant failed while applying it
                self.trace.append(f"{line} [{fault}] -> INVARIANT FAILED")
                raise
            req.tries += 1
            if fault == "lost-reply":
                outcome = None
            elif fault == "lost-reply-error":
                outcome = ("raise", timed_out(req))
        shown = "(retried later)" if outcome is None else _show(outcome)
        self.trace.append(f"{line} [{fault}] -> {shown}")
        if outcome is None:
            return
        del self._pending[name]
        req.outcome = outcome
        self._let_run(name)

    def _check(self) -> None:
        for check in self.checks:
            check()

    def format_trace(self, last: int | None = None) -> str:
        lines = self.trace if last is None else self.trace[-last:]
        return "\n".join(lines)


def _show(outcome: tuple[str, Any]) -> str:
    kind, value = outcome
    if kind == "raise":
        return type(value).__name__
    if isinstance(value, tuple):  # a listing page
        return f"{len(value[0])} keys{' (more)' if value[1] else ''}"
    if isinstance(value, dict):
        return f"etag {value['e_tag']}"
    return "ok" if value is None else f"{len(value.bytes())} bytes"


@contextlib.contextmanager
def deterministic_ids(rng: random.Random) -> Iterator[None]:
    """``uuid.uuid4`` and ``secrets.token_hex`` drawn from ``rng`` (lease ids, nonces,
    generation tokens), so that keys - and so listing orders - replay exactly."""
    saved = uuid.uuid4, secrets.token_hex

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    def token_hex(nbytes: int | None = None) -> str:
        return rng.getrandbits(8 * (nbytes or 32)).to_bytes(nbytes or 32, "big").hex()

    uuid.uuid4, secrets.token_hex = uuid4, token_hex  # type: ignore[assignment]
    try:
        yield
    finally:
        uuid.uuid4, secrets.token_hex = saved  # type: ignore[assignment]


@contextlib.contextmanager
def one_cpu() -> Iterator[None]:
    """The calling thread - and so the client threads it starts, which inherit it - kept on
    the CPU it runs on now. Exactly one thread of a run runs at a time and every step hands
    over between two of them; on one CPU a hand-over is a switch, across two a wake-up of the
    other CPU (about 3x slower for the whole run, measured). Linux only; elsewhere a no-op."""
    getaff = getattr(os, "sched_getaffinity", None)
    setaff = getattr(os, "sched_setaffinity", None)
    if getaff is None or setaff is None:
        yield
        return
    saved = getaff(0)
    try:
        with open("/proc/thread-self/stat") as f:  # field 39: the CPU it last ran on
            cpu = int(f.read().rpartition(")")[2].split()[36])
    except (OSError, ValueError, IndexError):
        cpu = min(saved)
    if cpu not in saved:
        cpu = min(saved)
    setaff(0, {cpu})
    try:
        yield
    finally:
        setaff(0, saved)
