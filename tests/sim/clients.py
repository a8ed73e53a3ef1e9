"""The clients of a simulated run: each one process with its own ``ObjectStore``.

Each program is the public API a user calls (``acquire``, ``write_blocks``, ``flush``,
``release``, ``delete_lease``, ``gc``, ``open_reader``), with its choices drawn from its own
seeded generator. A program reports what it may rely on to the checker (a flush that
returned; the bytes a read returned) and ends on the first error of the store - every such
error must be a :class:`~blockstore.errors.BlockStoreError`; anything else is reported as a
violation by the run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from blockstore.errors import (
    BlockStoreError,
    LeaseError,
    LeaseHeldError,
    LeaseNotFoundError,
)
from blockstore.objectstore import ObjectStore
from blockstore.urls import parse_store_url

from .invariants import Checker
from .scheduler import World

__all__ = ["URL", "Sim", "Spec", "deleter", "gc", "holder", "reader"]

URL = "s3://simbucket/store"
BLOCK_SIZE = 512
NUM_BLOCKS = 6

T = TypeVar("T")


class Sim:
    """A world, its checker and the store's URL: what the programs need."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.checker = Checker(world).attach()
        self.url = parse_store_url(URL)

    def open(self, name: str, tries: int = 4) -> ObjectStore:
        """The client's store (its metadata read again after a transient failure)."""
        for attempt in range(tries):
            try:
                return ObjectStore(self.url, client=self.world.object_client(name, self.url))
            except BlockStoreError:
                if attempt == tries - 1:
                    raise
                self.world.pause(name)
        raise AssertionError("unreachable")

    def retry(self, name: str, call: Callable[[], T], tries: int) -> tuple[bool, T | None]:
        """Up to ``tries`` calls of ``call`` by client ``name``, pausing after each refusal
        because the lease is held (``LeaseHeldError``) and after each transient store
        failure; any other lease error (fenced, not found, ...) propagates.

        Returns:
            ``(True, result)``, or ``(False, None)`` if every try was refused.
        """
        for _ in range(tries):
            try:
                return True, call()
            except LeaseHeldError:
                self.world.pause(name)
            except LeaseError:
                raise
            except BlockStoreError:
                self.world.pause(name)  # transient: try again
        return False, None

    def setup_store(self) -> None:
        """The store's metadata, written before the run (every client opens the store)."""
        from blockstore.objectlayout import META_KEY, encode_meta
        self.world.bucket.put_direct(META_KEY, encode_meta(BLOCK_SIZE))


@dataclass(frozen=True)
class Spec:
    """One client of a run: a name and a program ``(sim, name) -> result``."""

    name: str
    program: Callable[[Sim, str], Any]

    def describe(self) -> str:
        return f"{self.name}={getattr(self.program, 'label', self.program.__name__)}"


def _labelled(label: str, fn: Callable[[Sim, str], Any]) -> Callable[[Sim, str], Any]:
    fn.label = label  # type: ignore[attr-defined]
    return fn


def holder(lease: str, *, steal: bool = False, cycles: int = 2, end: str = "release",
           ttl: float = 20.0, tries: int = 8, flush: bool = True,
           flush_before_release: bool = False, resume_after_error: bool = True,
           wait_first: int = 0) -> Callable[[Sim, str], Any]:
    """Acquire ``lease`` (after ``wait_first`` pauses; waiting while it is held, or
    ``steal``), then ``cycles`` times write a few blocks and flush (renewing between
    cycles), then ``end``: ``release``, ``delete`` or ``abandon``.

    ``flush=False``: never flush (the release publishes the writes).
    ``flush_before_release``: release only with nothing unflushed and after a flush of this
    epoch published blocks - so the release is never the epoch's first commit (the one that
    collects garbage; race ``release_vs_next_holder``). Otherwise the lease is abandoned."""
    def run(sim: Sim, name: str) -> str:
        rng = sim.world.client_rng(name)
        st = sim.open(name)
        for _ in range(wait_first):  # start later than the others
            sim.world.pause(name)
        _, h = sim.retry(name, lambda: st.acquire(lease, holder=name, ttl=ttl,
                                                  num_blocks=NUM_BLOCKS, steal=steal), tries)
        if h is None:
            return "never acquired"
        unflushed: dict[int, bytes | None] = {}
        since: int | None = None  # the bucket's version at the first flush of unflushed
        published = False  # a flush of this epoch returned having published blocks
        for cycle in range(cycles):
            if cycle and rng.random() < 0.7:
                try:
                    h.renew()
                except LeaseError:
                    return "fenced at renew"
                except BlockStoreError:
                    pass
            free = [i for i in range(NUM_BLOCKS) if i not in unflushed]
            picked = sorted(rng.sample(free, min(len(free), rng.randint(1, 3))))
            items = {i: f"{name}/e{h.epoch}/c{cycle}/b{i}".encode() for i in picked}
            try:
                h.write_blocks(items)
                unflushed.update(items)
            except LeaseError:
                return "fenced at write"
            except BlockStoreError:
                unflushed.update(dict.fromkeys(items))  # some, all or none were written
                if not resume_after_error:
                    return "write failed"
            if not flush:
                continue
            since = sim.world.bucket.version if since is None else since
            try:
                h.flush()
            except LeaseError:
                return "fenced at flush"
            except BlockStoreError:
                if not resume_after_error:
                    return "flush failed"
                continue  # the writes stay pending in this store object
            sim.checker.flushed(name, h.lease_id, h.epoch, since, unflushed)
            published = published or any(v is not None for v in unflushed.values())
            unflushed, since = {}, None
        if end == "release":
            if flush_before_release and (unflushed or not published):
                return "abandoned (no release)"
            h.release()
            return "released"
        if end == "delete":
            try:
                st.delete_lease(lease, lease=h)
            except LeaseNotFoundError:
                return "already deleted"
            return "deleted"
        return "abandoned"
    return _labelled(f"holder({lease}{',steal' if steal else ''},{end})", run)


def deleter(lease: str, *, tries: int = 8) -> Callable[[Sim, str], Any]:
    """Delete ``lease`` once it is released or expired (no handle)."""
    def run(sim: Sim, name: str) -> str:
        st = sim.open(name)
        try:
            deleted, _ = sim.retry(name, lambda: st.delete_lease(lease), tries)
        except LeaseNotFoundError:
            return "not found"
        return "deleted" if deleted else "gave up"
    return _labelled(f"deleter({lease})", run)


def gc(*, rounds: int = 1, min_age: float = 0.0) -> Callable[[Sim, str], Any]:
    """``gc()`` ``rounds`` times (tombstones older than ``min_age`` go too)."""
    def run(sim: Sim, name: str) -> str:
        st = sim.open(name)
        removed = failed = 0
        for _ in range(rounds):
            try:
                removed += len(st.gc(min_age=min_age).removed)
            except BlockStoreError:
                failed += 1  # transient: the next round (or gc) finishes the job
            sim.world.pause(name)
        return f"gc removed {removed}" + (f", {failed} rounds failed" if failed else "")
    return _labelled(f"gc(x{rounds})", run)


def reader(lease: str, *, rounds: int = 2) -> Callable[[Sim, str], Any]:
    """Read every block of ``lease`` ``rounds`` times; each block read must be committed."""
    def run(sim: Sim, name: str) -> str:
        st = sim.open(name)
        got = 0
        for _ in range(rounds):
            try:
                r = st.open_reader(lease)
                blocks = r.read_blocks(range(NUM_BLOCKS))
            except BlockStoreError:  # not created yet, deleted, or transient
                sim.world.pause(name)
                continue
            for i, data in enumerate(blocks):
                sim.checker.read(name, r.lease_id, i, data)
            got += 1
        return f"read {got}"
    return _labelled(f"reader({lease})", run)


def prepare(sim: Sim, lease: str, *, release: bool = True) -> None:
    """Before the run: ``lease`` exists at epoch 1 with blocks 0-2 flushed (and released).
    Runs as a client of its own that nothing interleaves with."""
    def run(name: str) -> None:
        st = sim.open(name)
        h = st.acquire(lease, holder=name, ttl=20.0, num_blocks=NUM_BLOCKS)
        since = sim.world.bucket.version
        items = {i: f"{name}/e1/b{i}".encode() for i in range(3)}
        h.write_blocks(items)
        h.flush()
        sim.checker.flushed(name, h.lease_id, h.epoch, since, dict(items))
        if release:
            h.release()
    sim.world.add_client(f"prep-{lease}", run)
