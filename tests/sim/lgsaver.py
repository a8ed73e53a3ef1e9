"""The LangGraph saver (blockpoint_langgraph) on the simulated object store.

Writers put checkpoints into one thread, each through its own ``BlockpointSaver`` (takeover
or refuse on conflict: several processes resuming one graph); readers read the thread.
Beyond the block-level invariants, each read is checked against what writers did:

* **lg-unknown**: the newest checkpoint a reader gets is one some writer put, with the
  channel value that writer gave it;
* **lg-lost**: every checkpoint whose ``put`` returned before a read began is found by that
  read (by id, with its value) - retention keeps more than the run writes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint

from blockpoint_langgraph import BlockpointSaver
from blockpoint_langgraph.errors import SaverError
from blockstore.errors import BlockStoreError

from .clients import Sim, Spec, _labelled
from .invariants import Violation
from .scenarios import KNOWN_RACES, OPEN_FINDINGS, Mix, no_lost_record_replies
from .scheduler import Faults

__all__ = ["saver_mix"]

THREAD = "t1"
KEY = b"sim-langgraph-key"


class ThreadState:
    def __init__(self) -> None:
        self.attempted: dict[str, str] = {}  # checkpoint id -> its channel value
        self.returned: list[str] = []  # ids whose put returned, in order


def _state(sim: Sim) -> ThreadState:
    return sim.__dict__.setdefault("lg_thread", ThreadState())


def _saver(sim: Sim, name: str, conflict: str, ttl: float) -> BlockpointSaver:
    st = sim.open(name)
    try:
        return BlockpointSaver(st, on_conflict=conflict, ttl=ttl,  # type: ignore[arg-type]
                               holder=name, key=KEY)
    except (TypeError, ValueError):  # a saver that takes its key as str
        return BlockpointSaver(st, on_conflict=conflict, ttl=ttl,  # type: ignore[arg-type]
                               holder=name, key=KEY.decode())  # type: ignore[arg-type]


def _config(checkpoint_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": THREAD, "checkpoint_ns": ""}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


def writer(*, puts: int = 3, conflict: str = "takeover", ttl: float = 60.0,
           close_after_error: bool = True) -> Callable[[Sim, str], Any]:
    """Put ``puts`` checkpoints into the thread; stop when fenced or refused; close the
    saver (releasing the thread) - after a failed put only if ``close_after_error`` (the
    release would publish the failed put's writes)."""
    def run(sim: Sim, name: str) -> str:
        ts = _state(sim)
        saver = _saver(sim, name, conflict, ttl)
        done = 0
        for k in range(puts):
            cid = f"{sim.world.now:016.3f}.{name}.{k}"
            value = f"{name}/{k}"
            ck = empty_checkpoint()
            ck.update(id=cid, channel_values={"x": value}, channel_versions={"x": k + 1})
            ts.attempted[cid] = value
            try:
                saver.put(_config(), ck, {"source": "loop", "step": k}, {"x": k + 1})
            except SaverError as exc:
                return f"{type(exc).__name__} after {done} puts"
            except BlockStoreError:
                sim.world.pause(name)
                continue
            ts.returned.append(cid)
            done += 1
        if done < puts and not close_after_error:
            return f"put {done}, abandoned"
        try:
            saver.close()
        except BlockStoreError:
            pass
        return f"put {done}"
    return _labelled(f"lgwriter({conflict})", run)


def reader(*, rounds: int = 3) -> Callable[[Sim, str], Any]:
    """Read the thread's newest checkpoint and every returned one, ``rounds`` times."""
    def run(sim: Sim, name: str) -> str:
        ts = _state(sim)
        saver = _saver(sim, name, "refuse", 60.0)
        seen = []
        for _ in range(rounds):
            for _ in range(6):  # let the writers get on
                sim.world.pause(name)
            before = list(ts.returned)
            try:
                newest = saver.get_tuple(_config())
                found = {t.checkpoint["id"]: t.checkpoint["channel_values"].get("x")
                         for t in saver.list(_config())}
            except BlockStoreError:
                continue
            if newest is not None:
                cid = newest.checkpoint["id"]
                if ts.attempted.get(cid) != newest.checkpoint["channel_values"].get("x"):
                    _fail(sim, "lg-unknown", f"{name} read checkpoint {cid!r} with "
                                             f"{newest.checkpoint['channel_values']!r}, which "
                                             "no writer put")
                seen.append(cid.rsplit(".", 2)[-2])
            for cid in before:
                if found.get(cid) != ts.attempted[cid]:
                    _fail(sim, "lg-lost", f"{name}: checkpoint {cid!r}, whose put returned "
                                          f"before the read, reads {found.get(cid)!r}")
        return f"read {seen}"
    return _labelled("lgreader", run)


def _fail(sim: Sim, kind: str, message: str) -> None:
    v = Violation(kind, message)
    sim.checker.violations.append(v)
    raise v


def saver_mix(seed: int, known: frozenset[str] = KNOWN_RACES | OPEN_FINDINGS) -> Mix:
    """Two or three writers (takeover or refuse) and a reader on one thread."""
    rng = random.Random(f"lgmix-{seed}")
    specs = [Spec(f"w{k}", writer(puts=rng.randint(1, 3),
                                  conflict=rng.choice(["takeover", "refuse"]),
                                  ttl=rng.choice([5.0, 60.0]),
                                  close_after_error="release_vs_next_holder" not in known))
             for k in range(1, rng.randint(2, 3) + 1)]
    specs.append(Spec("rd", reader(rounds=rng.randint(2, 4))))
    fault_ok = no_lost_record_replies if "flush_lost_reply_takeover" in known else None
    return Mix("langgraph", specs, Faults(), fault_ok=fault_ok)
