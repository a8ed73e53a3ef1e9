"""Stages that push to the next stages themselves: the driver out of the data path.

With ``Pipeline(..., data_path="push")`` (``stages/pipeline/pushing.py``) the driver sends
each batch to the first stages only; every stage instance then sends its output straight to
the instances of the stages that read it, and an output stage to the sink writer - handles
given to it at :meth:`Pushed.wire`, batches as Ray object references. The driver injects the
barriers and commits the steps; it no longer submits a call per stage per batch.

What each instance keeps (:class:`Inbox`, one per attempt of the run):

* **One order, the driver's.** Every message names its batch (``seq``, counted by the driver
  from the attempt's start), its step and its *call key*: the place of the call among the
  calls the stage makes for one batch - a stage makes one call per output of each of its
  inputs, inputs in their listed order (``stages/pipeline/graph.py``), so a key is the input's
  index followed by the input's own key (the source's is ``()``). The inbox runs the calls in
  ``(seq, key)`` order, each once all its parts are in (one per instance of a parallel input;
  one share when the producer split the batch for this instance): exactly the calls, in
  exactly the order, the driver path makes. State and output are those of the driver path,
  whatever order Ray delivers messages from several senders in.
* **Aligned barriers.** A barrier message for step ``s`` names the step's last ``seq``. The
  inbox checkpoints ``s`` once every sender's barrier arrived and every call of the step ran,
  and runs no call of step ``s + 1`` before that (they wait in the inbox); then it sends the
  barrier on. :meth:`Pushed.barrier_done` answers the driver with the checkpoint's info.
* **Backpressure per edge.** A push returns once the receiver *ran* the call, and a sender
  keeps at most ``bound`` pushes unanswered per receiving instance: it sends a call's output
  to every receiver first, then waits for the oldest ones past the bound. A receiver so
  holds at most ``bound`` waiting calls per sender, and, as every output reaches every reader
  before its sender waits, no diamond of stages can wait on itself.
* **Failures travel back.** A call that raises (the stage's code, a lost receiver, a
  fenced checkpoint) stops the inbox: every push waiting on it and every later one raises
  that error, so each sender fails in turn and the driver sees it on its own pushes and on
  :meth:`Pushed.barrier_done`; it recovers as on the driver path (``stages/pipeline/rollback.py``).
  A rollback ends the inbox first (messages of the old attempt are answered :data:`STALE`
  and change nothing); the driver wires a new one.

See docs/ARCHITECTURE.md ("The push data path").
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from ..errors import StageError
from .routing import Splitting

__all__ = ["MAX_PUSH_SENDERS", "PUSH_CONCURRENCY", "PUSH_GROUP", "PUSH_RESERVE", "STALE", "Edge",
           "Inbox", "PushGroupMethods", "Pushed", "Route"]

#: Concurrency group of the push messages (each waits until its call ran).
PUSH_GROUP = "push"
#: Threads of that group. Every push holds one until its call ran, and a sender may hold
#: ``bound + 1`` at a receiver (it waits once past the bound): so a receiver of ``n``
#: sending instances needs ``n x (bound + 1)`` threads beside :data:`PUSH_RESERVE`
#: (``stages/pipeline/pushing.py``, ``Pushing.edge_bound``). Idle threads cost no CPU.
PUSH_CONCURRENCY = 64
#: Threads kept for barrier messages and the driver's ``barrier_done``.
PUSH_RESERVE = 8
#: The most sending instances one receiver may have (a bound of 1 each).
MAX_PUSH_SENDERS = (PUSH_CONCURRENCY - PUSH_RESERVE) // 2

#: Outputs an output stage sends the sink writer per call (and at every barrier).
WRITER_CHUNK = 32

#: What a message of an attempt that ended gets back (never an error: nothing to report).
STALE = "stale"


class InboxStopped(StageError, RuntimeError):
    """The inbox's attempt ended (rollback, stop): the message changed nothing."""


@dataclass(frozen=True, slots=True)
class Edge:
    """Where one output goes: the instances of one reading stage.

    Attributes:
        targets: their handles, in instance order.
        key_index: this stage's place among the reader's inputs (the first element of the
            call key the reader gets).
        split: send share ``i`` of the output to target ``i`` (this stage splits its output
            for a keyed reader); else the whole output to every target.
    """

    targets: tuple[Any, ...]
    key_index: int
    split: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One instance's wiring for one attempt of a run.

    Attributes:
        attempt: the driver's attempt (messages of any other are :data:`STALE`).
        step: the attempt's first step (the committed step + 1).
        expected: per call of one batch, in order: ``(call key, parts)``.
        senders: barrier messages per step (one per instance of every input; the driver
            counts as one).
        edges: the readers of this stage's output.
        writer: the sink writer, if this is an output stage (its output goes there too).
        output: the stage id the writer files this output under.
        part: this instance's index among its stage's instances (0 for a plain stage).
        bound: pushes unanswered per receiving instance before this sender waits.
        encode: the sink's encoder (an output stage no stage reads), or ``None``.
        split: how to split this stage's output for its keyed reader, or ``None``.
    """

    attempt: int
    step: int
    expected: tuple[tuple[tuple[int, ...], int], ...]
    senders: int
    edges: tuple[Edge, ...]
    writer: Any = None
    output: str | None = None
    part: int = 0
    bound: int = 8
    encode: Any = None
    split: Splitting | None = None


class _Waiter:
    """What one message waits for: set once, with the outcome."""

    __slots__ = ("event", "ok", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.value: Any = None


class Inbox:
    """The calls and barriers of one attempt, run in the driver's order by one thread."""

    def __init__(self, actor: Any, route: Route, gen: int) -> None:
        self.route = route
        self._actor = actor
        self._gen = gen
        self._index = {key: i for i, (key, _) in enumerate(route.expected)}
        self._cond = threading.Condition()
        #: (seq, key index) -> part -> (step, payload)
        self._units: dict[tuple[int, int], dict[int, tuple[int, Any]]] = {}
        #: step -> [barrier messages in, the step's last seq, meta]
        self._barriers: dict[int, list[Any]] = {}
        self._seq, self._ki = 0, 0  # the next call to run
        self._step = route.step  # the step whose calls run now
        self._done: dict[int, dict[str, Any]] = {}  # step -> its checkpoint's info
        self._error: BaseException | None = None
        self._stopped = False
        #: the most calls held waiting at once (with every part in or not)
        self.most = 0
        self._sent: dict[int, deque[tuple[Any, int]]] = {}  # receiver -> (push, its calls)
        self._counts: dict[int, int] = {}  # receiver -> calls in its unanswered pushes
        #: calls run in a row before their outputs go (half the edge's bound)
        self._run_max = max(1, route.bound // 2)
        self._loose: list[Any] = []  # barrier messages sent (answered at once)
        self._for_writer: list[tuple[int, tuple[int, ...], Any]] = []  # not sent yet
        self._waiters: dict[tuple[int, int], _Waiter] = {}  # per call waiting to run
        self._step_waiters: dict[int, _Waiter] = {}  # per step a barrier_done waits for
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"inbox-{route.attempt}")
        self._thread.start()

    # -- messages (Ray's threads of the push group) -------------------------------------------
    # Each waits on an event of its own (its call's, its step's), set once: a condition all
    # of them waited on woke every one of them at every call (a wake-up storm on the GIL).
    def push(self, step: int, items: Sequence[tuple[int, tuple[int, ...], int, Any]]) -> Any:
        """Keep parts of calls of ``step`` - ``(seq, call key, part, payload)`` each, in the
        sender's order; return once they all ran (``STALE`` if the attempt ended first);
        raise the inbox's error if it failed."""
        last: tuple[int, int] | None = None
        with self._cond:
            if self._error is not None:
                raise self._error
            for seq, key, part, payload in items:
                ki = self._index.get(tuple(key))
                if ki is None:
                    raise ValueError(f"call key {key!r} is not one of this stage's "
                                     f"{[k for k, _ in self.route.expected]} (a routing bug)")
                if self._stopped or (seq, ki) < (self._seq, self._ki):
                    return STALE  # ended, or a call that ran already (never sent twice)
                self._units.setdefault((seq, ki), {})[part] = (step, payload)
                last = (seq, ki) if last is None else max(last, (seq, ki))
            if last is None:
                return None
            self.most = max(self.most, len(self._units))
            waiter = self._waiters.setdefault(last, _Waiter())
            self._cond.notify()  # the thread: one waiter
        waiter.event.wait()
        return self._outcome(waiter)

    def barrier(self, step: int, last_seq: int, meta: dict[str, Any] | None) -> None:
        """One sender's barrier of ``step`` (whose last batch is ``last_seq``)."""
        with self._cond:
            entry = self._barriers.setdefault(step, [0, last_seq, meta])
            entry[0] += 1
            self._cond.notify()

    def done(self, step: int) -> Any:
        """Wait until ``step`` is checkpointed here; its info (``STALE`` if the attempt
        ended first). Raises the inbox's error if it failed."""
        with self._cond:
            if step in self._done:
                return self._done[step]
            if self._error is not None:
                raise self._error
            if self._stopped:
                return STALE
            waiter = self._step_waiters.setdefault(step, _Waiter())
        waiter.event.wait()
        return self._outcome(waiter)

    def _outcome(self, waiter: _Waiter) -> Any:
        if waiter.ok:
            return waiter.value
        if self._error is not None:
            raise self._error
        return STALE

    def _release_all(self) -> None:
        """Every waiting message is answered (the caller holds the condition)."""
        for w in (*self._waiters.values(), *self._step_waiters.values()):
            w.event.set()
        self._waiters.clear()
        self._step_waiters.clear()

    def stop(self) -> None:
        """End the attempt: waiting messages get ``STALE``; the thread ends after the call
        it is running (which the stage's generation check keeps off the state)."""
        with self._cond:
            self._stopped = True
            self._units.clear()
            self._release_all()
            self._cond.notify_all()

    # -- the thread --------------------------------------------------------------------------
    def _next(self) -> tuple[str, Any] | None:
        """What runs next, if it can (the caller holds the condition)."""
        bar = self._barriers.get(self._step)
        if (bar is not None and self._ki == 0 and bar[1] == self._seq - 1
                and bar[0] >= self.route.senders):
            return "barrier", bar
        unit = self._units.get((self._seq, self._ki))
        if unit is None or len(unit) < self.route.expected[self._ki][1]:
            return None
        steps = {s for s, _ in unit.values()}
        if steps != {self._step}:
            if min(steps) < self._step or len(steps) > 1:
                raise ValueError(f"batch {self._seq} came as step(s) {sorted(steps)} while "
                                 f"step {self._step} runs (a routing bug)")
            return None  # the next step's: after this step's barrier
        return "call", [unit[p][1] for p in sorted(unit)]

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._stopped:
                            return
                        job = self._next()
                        if job is not None:
                            break
                        self._cond.wait()
                kind, what = job
                if kind == "barrier":
                    info = self._checkpoint(what)
                    with self._cond:
                        self._done[self._step] = info
                        self._done.pop(self._step - 3, None)
                        self._barriers.pop(self._step, None)
                        waiter = self._step_waiters.pop(self._step, None)
                        self._step += 1
                    if waiter is not None:
                        waiter.ok, waiter.value = True, info
                        waiter.event.set()
                    continue
                # A run of calls that are ready, their outputs sent together: a message per
                # output cost each side a Ray task (a third of a stage's CPU on 2 cores).
                outs: list[tuple[int, tuple[int, ...], Any]] = []
                while True:
                    outs.append(self._call(what))
                    with self._cond:
                        self._units.pop((self._seq, self._ki), None)
                        waiter = self._waiters.pop((self._seq, self._ki), None)
                        self._ki += 1
                        if self._ki == len(self.route.expected):
                            self._seq, self._ki = self._seq + 1, 0
                        job = None if len(outs) >= self._run_max else self._next()
                    if waiter is not None:
                        waiter.ok = True
                        waiter.event.set()
                    if job is None or job[0] != "call":
                        break
                    what = job[1]
                self._send_all(outs)
        except InboxStopped:  # a receiver's attempt ended, or this one: nothing to report
            with self._cond:
                self._stopped = True
                self._release_all()
        except BaseException as exc:  # noqa: BLE001 - every waiting message raises it
            with self._cond:
                if not self._stopped:
                    self._error = exc
                self._release_all()

    def _call(self, parts: Sequence[Any]) -> tuple[int, tuple[int, ...], Any]:
        """Run the next call; ``(seq, key, output)``."""
        r = self.route
        # one object for several receivers: a reference inside the message, fetched here
        parts = [ray.get(p) if isinstance(p, ray.ObjectRef) else p for p in parts]
        out = self._actor._push_process(self._gen, parts, r.encode, r.split)
        return self._seq, r.expected[self._ki][0], out

    def _send_all(self, outs: Sequence[tuple[int, tuple[int, ...], Any]]) -> None:
        """A run's outputs to every reader (one message per receiving instance), then wait
        for the oldest messages past the edge's bound."""
        r, step = self.route, self._step
        touched: dict[int, Any] = {}
        for edge in r.edges:
            if edge.split:
                for i, target in enumerate(edge.targets):
                    items = [(seq, (edge.key_index, *key), 0, out[i]) for seq, key, out in outs]
                    self._track(touched, target, target.push.remote(r.attempt, step, items),
                                len(items))
                continue
            items = [(seq, (edge.key_index, *key), r.part,
                      ray.put(out) if len(edge.targets) > 1 else out) for seq, key, out in outs]
            for target in edge.targets:
                self._track(touched, target, target.push.remote(r.attempt, step, items),
                            len(items))
        if r.writer is not None:  # to the writer in chunks: a call per output cost it a task
            self._for_writer.extend(outs)
            if len(self._for_writer) >= WRITER_CHUNK:
                self._to_writer(touched)
        for tid in touched:  # every reader got the outputs: now wait past the bound
            q = self._sent[tid]
            while self._counts[tid] > r.bound and q:
                ref, n = q.popleft()
                self._counts[tid] -= n
                self._answer(ref)

    def _to_writer(self, touched: dict[int, Any]) -> None:
        """The outputs kept for the writer, in one call."""
        r = self.route
        if self._for_writer:
            self._track(touched, r.writer, r.writer.push_many.remote(
                r.attempt, self._step, r.output, r.part, self._for_writer), 0)
            self._for_writer = []

    def _track(self, touched: dict[int, Any], target: Any, ref: Any, units: int) -> None:
        tid = id(target)
        self._sent.setdefault(tid, deque()).append((ref, units))
        self._counts[tid] = self._counts.get(tid, 0) + units
        touched[tid] = target

    def _answer(self, ref: Any) -> None:
        if ray.get(ref) == STALE:  # the receiver's attempt ended: so did this one
            raise InboxStopped("a receiver ended this attempt")

    def _checkpoint(self, bar: list[Any]) -> dict[str, Any]:
        r = self.route
        step, meta = self._step, bar[2]
        info = self._actor._push_checkpoint(self._gen, step, meta)
        for edge in r.edges:
            for target in edge.targets:
                self._loose.append(target.push_barrier.remote(r.attempt, step, bar[1], meta))
        if len(self._loose) > 64:
            self._loose = ray.wait(self._loose, num_returns=len(self._loose), timeout=0)[1]
        if r.writer is not None:  # the writer holds the step's output before the driver asks
            self._to_writer({})
            q = self._sent.get(id(r.writer), deque())
            while q:
                self._answer(q.popleft()[0])
        return info


class PushGroupMethods:
    """:class:`Pushed`'s messages in the ``push`` concurrency group (mixed into
    ``ControlledStageActor`` before the stage actor, whose class declares the group)."""

    @ray.method(concurrency_group=PUSH_GROUP)
    def push(self, attempt: int, step: int, items: Any) -> Any:
        return Pushed.push(self, attempt, step, items)  # type: ignore[arg-type]

    @ray.method(concurrency_group=PUSH_GROUP)
    def push_barrier(self, attempt: int, step: int, last_seq: int,
                     meta: dict[str, Any] | None) -> Any:
        return Pushed.push_barrier(self, attempt, step, last_seq, meta)  # type: ignore[arg-type]

    @ray.method(concurrency_group=PUSH_GROUP)
    def barrier_done(self, attempt: int, step: int) -> Any:
        return Pushed.barrier_done(self, attempt, step)  # type: ignore[arg-type]


class Pushed:
    """The push data path's methods of a stage actor (a mixin of
    :class:`~stages.actors.actor.StageActor`; its lock guards the state)."""

    _inbox: Inbox | None = None
    _push_gen: int = 0

    def wire(self, route: Route) -> bool:
        """Start ``route``'s attempt (after the stage was launched or rolled back): a new
        inbox; the one before, if any, ends."""
        with self._lock:  # type: ignore[attr-defined]
            self._check_running()  # type: ignore[attr-defined]
            old, self._inbox = self._inbox, None
            self._push_gen += 1
            if old is not None:
                old.stop()
            self._inbox = Inbox(self, route, self._push_gen)
        return True

    def push(self, attempt: int, step: int,
             items: Sequence[tuple[int, tuple[int, ...], int, Any]]) -> Any:
        """Parts of calls, ``(seq, call key, part, payload)`` each (:meth:`Inbox.push`);
        ``STALE`` for another attempt's."""
        inbox = self._inbox
        if inbox is None or inbox.route.attempt != attempt:
            return STALE
        return inbox.push(step, items)

    def push_barrier(self, attempt: int, step: int, last_seq: int,
                     meta: dict[str, Any] | None) -> Any:
        """One sender's barrier of ``step`` (:meth:`Inbox.barrier`)."""
        inbox = self._inbox
        if inbox is None or inbox.route.attempt != attempt:
            return STALE
        inbox.barrier(step, last_seq, meta)
        return None

    def barrier_done(self, attempt: int, step: int) -> Any:
        """``step``'s checkpoint info once this instance made it (``checkpoint``'s reply on
        the driver path); ``STALE`` if the attempt ended."""
        inbox = self._inbox
        if inbox is None or inbox.route.attempt != attempt:
            return STALE
        return inbox.done(step)

    def _unwire(self) -> None:
        """End the current attempt (the caller holds the lock: a rollback, a stop)."""
        old, self._inbox = self._inbox, None
        self._push_gen += 1
        if old is not None:
            old.stop()

    def _push_process(self, gen: int, parts: Sequence[Any], encode: Any,
                      split: Splitting | None) -> Any:
        with self._lock:  # type: ignore[attr-defined]
            if gen != self._push_gen:
                raise InboxStopped("rolled back")
            out = self._process_locked(parts[0], tuple(parts[1:]))  # type: ignore[attr-defined]
        return self._shaped(out, encode, split)  # type: ignore[attr-defined]

    def _push_checkpoint(self, gen: int, step: int, meta: dict[str, Any] | None
                         ) -> dict[str, Any]:
        with self._lock:  # type: ignore[attr-defined]
            if gen != self._push_gen:
                raise InboxStopped("rolled back")
            return self._checkpoint_locked(step, meta)  # type: ignore[attr-defined]
