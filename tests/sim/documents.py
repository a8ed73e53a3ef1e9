"""Slotted documents (blockstore/document.py) on the simulated object store.

Savers hold the lease (waiting for it, or stealing it) and save documents that name their
writer and a sequence number; loaders load. On top of the block-level invariants the
checker keeps, every load is checked against what savers did:

* **doc-unknown**: a loaded document is one some saver passed to ``save`` (never a mix of
  two saves, never bytes nobody saved);
* **doc-rollback**: a load that began after a ``save`` returned generation ``g`` returns a
  generation >= ``g`` (the newest returned save is never lost or rolled back; a newer
  holder's saves come after it, since it loads before it saves);
* **doc-lost**: a load that began after any ``save`` returned finds a document.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from blockstore.document import SlottedDocument
from blockstore.errors import BlockStoreError, LeaseError

from .clients import Sim, Spec, _labelled
from .invariants import Violation
from .scenarios import KNOWN_RACES, OPEN_FINDINGS, Mix, no_lost_record_replies
from .scheduler import Faults

__all__ = ["document_mix"]

KIND = b"BPSM"
SLOTS = 3
KEY = b"sim-document-key"


class DocState:
    """What savers did to one lease's document, per run."""

    def __init__(self) -> None:
        self.attempted: set[str] = set()  # the canonical payload of every save begun
        self.returned = 0  # the highest generation a save returned


def _state(sim: Sim, lease: str) -> DocState:
    docs = sim.__dict__.setdefault("documents", {})
    return docs.setdefault(lease, DocState())


def _doc(lease_or_reader: Any) -> SlottedDocument:
    return SlottedDocument(lease_or_reader, kind=KIND, version=1, slots=SLOTS, key=KEY)


def saver(lease: str, *, saves: int = 3, steal: bool = False, ttl: float = 20.0,
          tries: int = 20, release_after_error: bool = True) -> Callable[[Sim, str], Any]:
    """Hold ``lease`` and save ``saves`` documents, then release (or, after a failed save
    and ``release_after_error=False``, abandon the lease: a release would publish the
    failed save's writes)."""
    def run(sim: Sim, name: str) -> str:
        st, ds = sim.open(name), _state(sim, lease)
        _, h = sim.retry(name, lambda: st.acquire(lease, holder=name, ttl=ttl,
                                                  num_blocks=SLOTS, steal=steal), tries)
        if h is None:
            return "never acquired"
        doc = _doc(h)
        done = 0
        for k in range(saves):
            if k:
                try:
                    h.renew()
                except LeaseError:
                    return f"fenced after {done} saves"
                except BlockStoreError:
                    pass
            body = {"writer": name, "epoch": h.epoch, "seq": k, "pad": "x" * (300 * k)}
            ds.attempted.add(doc.encode(body).decode())
            try:
                g = doc.save(body)
            except LeaseError as exc:
                return f"{type(exc).__name__} after {done} saves"
            except BlockStoreError:
                continue
            ds.returned = max(ds.returned, g)
            done += 1
        if done < saves and not release_after_error:
            return f"saved {done}, abandoned"
        h.release()
        return f"saved {done}"
    return _labelled(f"saver({lease}{',steal' if steal else ''})", run)


def loader(lease: str, *, rounds: int = 3) -> Callable[[Sim, str], Any]:
    """Load the document ``rounds`` times, a pause before each."""
    def run(sim: Sim, name: str) -> str:
        st, ds = sim.open(name), _state(sim, lease)
        seen = []
        for _ in range(rounds):
            floor = ds.returned
            for _ in range(3):  # let the savers get on
                sim.world.pause(name)
            try:
                got = _doc(st.open_reader(lease)).load()
            except BlockStoreError:
                continue
            if got.document is None:
                if floor:
                    _fail(sim, "doc-lost", f"{name} found no document in {lease!r} after a "
                                           f"save returned generation {floor}: {got.skipped}")
                continue
            if _canonical(got.document) not in ds.attempted:
                _fail(sim, "doc-unknown", f"{name} loaded generation {got.generation} "
                                          f"{got.document!r}, which no saver saved")
            if got.generation is not None and got.generation < floor:
                _fail(sim, "doc-rollback", f"{name} loaded generation {got.generation} after "
                                           f"a save returned generation {floor}")
            seen.append(got.generation)
        return f"loaded {seen}"
    return _labelled(f"loader({lease})", run)


def _canonical(document: dict[str, Any]) -> str:
    from blockstore.canonical import canonical_json
    return canonical_json(document).decode()


def _fail(sim: Sim, kind: str, message: str) -> None:
    v = Violation(kind, message)
    sim.checker.violations.append(v)
    raise v


def document_mix(seed: int, known: frozenset[str] = KNOWN_RACES | OPEN_FINDINGS) -> Mix:
    """Two or three savers (waiting, stealing, expiring) and two loaders on one document;
    what a known race needs is left out (see scenarios.KNOWN_RACES)."""
    rng = random.Random(f"docmix-{seed}")
    specs = [Spec(f"s{k}", saver("doc", saves=rng.randint(1, 3), steal=rng.random() < 0.25,
                                 ttl=rng.choice([5.0, 60.0, 60.0]),
                                 release_after_error="release_vs_next_holder" not in known))
             for k in range(1, rng.randint(2, 3) + 1)]
    specs += [Spec("ld1", loader("doc", rounds=6)), Spec("ld2", loader("doc", rounds=4))]
    fault_ok = no_lost_record_replies if "flush_lost_reply_takeover" in known else None
    return Mix("document", specs, Faults(), fault_ok=fault_ok)
