"""When an async ``@checkpointed`` actor may be snapshotted: between calls, never mid-method.

Coroutines share one event loop, so a snapshot taken on it is never interrupted - but other
calls may be suspended at an ``await`` half-way through their method (debited, not yet
credited), and a snapshot then commits a change that exists nowhere whole. A lock cannot
help (every coroutine runs on the loop's one thread, an ``RLock`` admits them all), so
:class:`CallTurns` counts the coroutine calls inside the user's method, and the runtime
(:mod:`stages.actors.durability`) takes a snapshot only when that count is zero:

* A snapshot that becomes due while calls are inside (policy, timer, or
  ``await actor.checkpoint()``) is *wanted*: new calls are held at the door so that the
  ones inside drain, and the call that leaves last takes it.
* The hold gives way after :data:`HOLD_S` seconds: a call inside may be waiting for a later
  call (an ``asyncio.Event`` another method sets, a queue another method fills), and holding
  that one for ever would deadlock the actor. The calls it held go in, and a new hold, twice
  as long, begins for the calls arriving after - so a stream of calls that each last longer
  than :data:`HOLD_S` cannot put the snapshot off for as long as it lasts (before, it did).
* A resend of a call (same request id) that is still running waits for it and is then
  answered from its record (:meth:`CallTurns.claim`).
* In exactly-once mode calls take one turn at a time, in arrival order
  (:meth:`CallTurns.one_at_a_time`) - across the event loops of every concurrency group,
  which one ``asyncio.Lock`` cannot do (it belongs to one loop).
* In the other policies a call with a request id runs **alone** (:meth:`CallTurns.enter_alone`):
  it enters once no call is inside, and new calls are held while it runs, so that the state
  it snapshots before its method can be put back if the method raises
  (``stages/actors/dispatch.py``) without undoing another call's change. While it waits, the
  hold gives way after :data:`HOLD_S` to the calls it held (a call inside may await one of
  them) and is renewed, twice as long each time, for the calls arriving after - so a stream
  of calls longer than :data:`HOLD_S` cannot starve it. While it runs, the hold gives way
  after :data:`HOLD_S` (it may itself await another call); :attr:`CallTurns.entries` then
  tells that another call came in, and the runtime does not restore over its change.
  A *synchronous* method of an async actor runs on the event loop and cannot wait: it is
  refused while a call runs alone (:attr:`CallTurns.alone`).

Waiting polls instead of using ``asyncio`` primitives: an actor's concurrency groups run on
event loops of their own threads, and the counter is shared by all of them under the
runtime's lock. A waiter looks every :data:`_POLL_S` s at first, then half as often each
time up to every :data:`_POLL_MAX_S` s (the exactly-once queue keeps :data:`_POLL_S`: its
head goes next). With a fixed 2 ms, 40 calls held under a stream woke the loop 20,000
times a second: on a loaded machine the loop fell behind its own timers (a 10 s test took
256 s) and the holds, measured on the clock, no longer outlasted the calls inside.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

__all__ = ["HOLD_S", "CallTurns"]

#: Seconds a wanted snapshot holds new coroutine calls back, at most.
HOLD_S = 1.0
#: Seconds between a waiter's first two looks at the calls inside.
_POLL_S = 0.002
#: Seconds between two looks, at most, for a waiter that has waited a while.
_POLL_MAX_S = 0.02


async def _pause(wait: float) -> float:
    """Sleep ``wait`` seconds; the next pause: twice as long, :data:`_POLL_MAX_S` at most."""
    await asyncio.sleep(wait)
    return min(2 * wait, _POLL_MAX_S)

T = TypeVar("T")


class CallTurns:
    """The coroutine calls inside the user's method, and the snapshot waiting for them.

    Every method takes ``lock`` (the runtime's :attr:`ActorDurability.lock`) itself, except
    :meth:`want` and :attr:`inside`, read and set by callers that hold it.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        #: Coroutine calls between :meth:`enter` and :meth:`leave`.
        self.inside = 0
        self._wanted_since: float | None = None
        #: How long the current hold for a wanted snapshot lasts (renewed as for a call
        #: waiting to run alone, :meth:`enter`).
        self._wanted_hold = HOLD_S
        #: Since when the current hold for a call with a request id runs (policy mode):
        #: the hold while it waits to run alone (renewed, :meth:`enter_alone`), or while it
        #: runs (:data:`HOLD_S`).
        self._sole_since: float | None = None
        #: How long the current hold while a call waits to run alone lasts.
        self._sole_hold = HOLD_S
        #: True while a call with a request id runs alone (a synchronous call of an async
        #: actor, which cannot wait for it, is refused meanwhile: ``dispatch.py``).
        self.alone = False
        #: Calls let in so far (a call running alone compares it before and after).
        self.entries = 0
        self._running: set[str] = set()
        #: Exactly-once coroutine calls waiting for (or having, at [0]) their turn.
        self._queue: collections.deque[object] = collections.deque()

    def want(self) -> None:
        """A snapshot waits for the calls inside to leave (holds new ones, for a while)."""
        if self._wanted_since is None:
            self._wanted_since = time.monotonic()

    @property
    def wanted(self) -> bool:
        return self._wanted_since is not None

    def taken(self) -> None:
        """The snapshot was taken (or failed): nothing waits any more."""
        self._wanted_since = None
        self._wanted_hold = HOLD_S

    async def enter(self, due: Callable[[], None]) -> None:
        """Let a call in: held while a wanted snapshot waits, :data:`HOLD_S` at most. A
        snapshot left wanted with nobody inside (the last call out raised) is taken here by
        ``due()`` before this call touches the state. A snapshot, or a call waiting to run
        alone, holds the calls that arrive after its current hold began; when the hold gives
        way a new one, twice as long, begins (so a stream of calls longer than
        :data:`HOLD_S` cannot put the snapshot off for ever: :meth:`enter_alone`)."""
        arrived = time.monotonic()
        pause = _POLL_S
        while True:
            with self._lock:
                now = time.monotonic()
                if (self._wanted_since is not None
                        and now - self._wanted_since >= self._wanted_hold):
                    self._wanted_since, self._wanted_hold = now, 2 * self._wanted_hold
                wanted = self._wanted_since
                sole = self._sole_since
                if sole is None:
                    held = False
                elif self.alone:
                    held = now - sole < HOLD_S
                else:
                    held = arrived >= sole and now - sole < self._sole_hold
                held = held or (wanted is not None and arrived >= wanted)
                if not held:
                    self.inside += 1
                    self.entries += 1
                    return
                if not self.inside and wanted is not None:
                    due()
                    if self._wanted_since is None:
                        continue
                # Held by a call waiting to run alone (or a snapshot not yet taken): sleep.
                # (This looped without awaiting whenever nobody was inside, so the held call
                # spun on the loop's one thread until its hold ran out and went in first:
                # the call it was held for never got to look, and starved under load.)
            pause = await _pause(pause)

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1

    async def enter_alone(self, due: Callable[[], None]) -> int:
        """Let a call in once no call is inside, holding new calls meanwhile and while it
        runs; a wanted snapshot is taken first by ``due()``. Returns :attr:`entries` after
        it entered: if the value is the same when it leaves, no other call ran beside it.
        Leave with :meth:`leave_alone`.

        While it waits, the calls that arrive are held for :data:`HOLD_S`; then the hold
        gives way to them (one may be what a call inside waits for) and a new hold, twice
        as long, begins for the calls arriving after that. So a stream of calls that each
        last longer than :data:`HOLD_S` cannot starve it: the hold soon outlasts the calls
        inside, which then drain. While it runs, new calls are held :data:`HOLD_S` at most
        (it may itself wait for one)."""
        pause = _POLL_S
        while True:
            with self._lock:
                now = time.monotonic()
                if not self.inside:
                    if self._wanted_since is not None:
                        due()
                    self.inside += 1
                    self.entries += 1
                    self.alone = True
                    self._sole_since = now
                    return self.entries
                if self.alone:      # another one runs alone: its hold rules
                    pass
                elif self._sole_since is None:
                    self._sole_since, self._sole_hold = now, HOLD_S
                elif now - self._sole_since >= self._sole_hold:
                    self._sole_since, self._sole_hold = now, 2 * self._sole_hold
            pause = await _pause(pause)

    def leave_alone(self) -> None:
        with self._lock:
            self.inside -= 1
            self.alone = False
            self._sole_since = None
            self._sole_hold = HOLD_S

    async def when_alone(self, own: int, take: Callable[[], T]) -> T:
        """``take()`` under the lock once at most ``own`` calls are inside (``own`` = 1 for
        the caller's own call); new calls are held meanwhile, :data:`HOLD_S` at most."""
        pause = _POLL_S
        while True:
            with self._lock:
                if self.inside <= own:
                    return take()
                self.want()
            pause = await _pause(pause)

    async def claim(self, key: str | None,
                    recorded: Callable[[str | None], tuple[bool, Any]]) -> tuple[bool, Any]:
        """Before a call with request key ``key`` runs: ``recorded(key)`` if it was applied
        (after waiting for a run of it still in progress), else claim the key (``(False,
        None)``; :meth:`release` it when the call ends)."""
        pause = _POLL_S
        while True:
            with self._lock:
                done, result = recorded(key)
                if done:
                    return done, result
                if key is None or key not in self._running:
                    if key is not None:
                        self._running.add(key)
                    return False, None
            pause = await _pause(pause)

    @contextlib.asynccontextmanager
    async def one_at_a_time(self) -> AsyncIterator[None]:
        """Hold the one exactly-once turn, first come first served, across every event loop
        of the actor; a waiter cancelled in the queue leaves it."""
        ticket = object()
        with self._lock:
            self._queue.append(ticket)
        try:
            while True:
                with self._lock:
                    if self._queue[0] is ticket:
                        break
                await asyncio.sleep(_POLL_S)
            yield
        finally:
            with self._lock:
                self._queue.remove(ticket)

    def release(self, key: str | None) -> None:
        if key is not None:
            with self._lock:
                self._running.discard(key)
