"""The decision log: every plan, preemption, restore, drain and loss, with its reason.

One :class:`DecisionLog` serves the preemption manager (its plans) and the scheduler actor
(what it did about them), so sequence numbers are shared and strictly increasing. It is
bounded (a ``deque`` with a maximum length): a long-running scheduler's memory stays flat.
Decisions saved with the registry before a restart (without their plans' per-candidate
detail) are kept apart as *earlier* entries and listed after the live ones, so the log an
operator reads (``blockpoint scheduler decisions``) spans restarts.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blockstore.metrics import record
from scheduler.plans import PreemptionPlan

__all__ = ["Decision", "DecisionLog", "reason_tag"]

_FIRST_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{0,31}")


def reason_tag(reason: str) -> str:
    """The metric tag of a preemption's reason: its first word, lowercased, letters only.

    The reason is free text (``"spot notice node-3"``, ``"job 8f3a needs 4 GPUs"``); as a
    tag value it would make a Prometheus series per node, job or request. Its first word
    (``spot``, ``job``, ``demo``) is what an operator groups by; digits are cut off
    (``job-1234`` -> ``job``), a reason that does not start with a letter is ``other``, and
    no reason at all is ``""``.
    """
    text = reason.strip()
    if not text:
        return ""
    m = _FIRST_WORD.match(text)
    word = m.group(0).rstrip("-_").lower() if m else ""
    return word or "other"


@dataclass(frozen=True, slots=True)
class Decision:
    """One entry of the decision log.

    Entries of kind ``"select"`` are written by
    :meth:`~scheduler.manager.PreemptionManager.select_victims` and carry the whole plan;
    the scheduler actor adds its own kinds (``"preempt"``, ``"restore"``, ``"drain"``...)
    through :meth:`DecisionLog.record`.

    Attributes:
        seq: Increasing sequence number (survives a snapshot round trip).
        at: Manager clock time of the decision.
        kind: What was decided.
        reason: The reason given by the requester.
        outcome: Result, e.g. an :class:`Outcome` value, or ``"done"``/``"failed"``.
        victims: Stages affected, in order.
        notes: Per-stage notes as (stage id, text) pairs.
        plan: The plan, for ``"select"`` entries (else ``None``).
    """

    seq: int
    at: float
    kind: str
    reason: str
    outcome: str
    victims: tuple[str, ...]
    notes: tuple[tuple[str, str], ...] = ()
    plan: PreemptionPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "reason": self.reason,
            "outcome": self.outcome,
            "victims": list(self.victims),
            "notes": [list(n) for n in self.notes],
            "plan": None if self.plan is None else self.plan.to_dict(),
        }


class DecisionLog:
    """A bounded, thread-safe log of :class:`Decision` entries with shared sequence numbers.

    Guarantees:
        * Sequence numbers only grow, also across a restart when the next number is
          restored (:attr:`next_seq`) from a snapshot.
        * At most ``maxlen`` live entries are kept (oldest dropped first).

    Args:
        clock: Time source for entries (the manager's clock).
        maxlen: Capacity of the live log.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, maxlen: int = 1000) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError("max_decisions must be an int >= 1")
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: deque[Decision] = deque(maxlen=maxlen)
        self._next_seq = 1
        self._earlier: list[dict[str, Any]] = []

    @property
    def maxlen(self) -> int:
        """Capacity of the live log."""
        maxlen = self._entries.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def next_seq(self) -> int:
        """The sequence number the next entry gets."""
        with self._lock:
            return self._next_seq

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        with self._lock:
            self._next_seq = max(int(value), 1)

    def reserve(self) -> int:
        """Take the next sequence number for an entry appended later with :meth:`append`."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def append(self, entry: Decision) -> Decision:
        """Append an entry built with a :meth:`reserve`-d sequence number."""
        with self._lock:
            self._entries.append(entry)
        _count(entry)
        return entry

    def record(self, kind: str, outcome: str, *, reason: str = "",
               victims: Iterable[str] = (), notes: Mapping[str, str] | None = None) -> Decision:
        """Append a new entry (preempt/restore/drain results...) and return it."""
        with self._lock:
            entry = Decision(seq=self._next_seq, at=self._clock(), kind=str(kind),
                             reason=str(reason), outcome=str(outcome), victims=tuple(victims),
                             notes=tuple(sorted((notes or {}).items())))
            self._next_seq += 1
            self._entries.append(entry)
        _count(entry)
        return entry

    def newest(self, limit: int | None = None) -> list[Decision]:
        """Live entries, newest first, at most ``limit`` of them (all if ``None``)."""
        with self._lock:
            if limit is None:
                limit = len(self._entries)
            if limit <= 0:
                return []
            out: list[Decision] = []
            for entry in reversed(self._entries):
                if len(out) >= limit:
                    break
                out.append(entry)
            return out

    def set_earlier(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Keep decisions persisted before a restart (dicts with at least ``seq``)."""
        kept = [dict(d) for d in entries if isinstance(d, Mapping) and "seq" in d]
        with self._lock:
            self._earlier = kept

    def as_dicts(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Live entries then earlier (persisted) ones, newest first, as dicts."""
        live = [d.to_dict() for d in self.newest(limit)]
        if limit is not None and len(live) >= limit:
            return live
        oldest = min((d["seq"] for d in live), default=None)
        with self._lock:
            earlier = [d for d in self._earlier if oldest is None or d["seq"] < oldest]
        out = live + earlier
        return out if limit is None else out[:limit]

    def persistable(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries as dicts without plans (what a registry save keeps)."""
        return [{k: v for k, v in d.items() if k != "plan"} for d in self.as_dicts(limit)]


def _count(entry: Decision) -> None:
    """Count a logged decision (``docs/OPERATIONS.md``, Metrics).

    Only preemptions carry their reason as a tag, and only its first word
    (:func:`reason_tag`); the other kinds' reasons are free text (node ids, errors) that
    would make a new series each.
    """
    reason = reason_tag(entry.reason) if entry.kind == "preempt" else ""
    record("scheduler_decisions_total", 1, kind=entry.kind, outcome=entry.outcome,
           reason=reason)
    if entry.victims:
        record("scheduler_victims_total", len(entry.victims), kind=entry.kind,
               outcome=entry.outcome)
