"""Races of two store objects on one bucket, ordered request by request (tests/s3hooks.py)
against the real S3 server on loopback: each is a way the object-store protocol once lost
committed data (issue 18), and each test fails on the code before its fix.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from s3hooks import HookedStore, hooked, req
from s3server import MotoServer

from blockstore import CommitUnknownError, ObjectStore, StaleLeaseError, StorageIOError

BS = 4096


def _prefix() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


def _read(url: str, name: str, indices: list[int]) -> list[bytes]:
    with ObjectStore(url) as fresh:
        return [b.rstrip(b"\0") for b in fresh.open_reader(name).read_blocks(indices)]


class Race:
    """A fresh prefix on the S3 server (:attr:`url`) and the stores a race runs between,
    closed after the test."""

    def __init__(self, server: MotoServer) -> None:
        self.url = server.url(_prefix())
        self._opened: list[ObjectStore] = []

    def stores(self) -> tuple[ObjectStore, HookedStore, ObjectStore]:
        """The store whose requests the test orders (and its hooks), and a plain second
        store on the same prefix: the one that races it."""
        ordered, hooks = hooked(self.url)
        other = ObjectStore(self.url)
        self._opened += [ordered, other]
        return ordered, hooks, other

    def tombstone(self, name: str = "s") -> None:
        """Create the store with a lease ``name`` created, released and deleted: what is
        left of it is its tombstone record."""
        with ObjectStore(self.url, block_size=BS) as setup:
            setup.acquire(name, num_blocks=1).release()
            setup.delete_lease(name)

    def close(self) -> None:
        for st in self._opened:
            st.close()


@pytest.fixture
def race(s3_server: MotoServer) -> Iterator[Race]:
    """A :class:`Race` on the session's S3 server; its stores are closed after the test."""
    r = Race(s3_server)
    try:
        yield r
    finally:
        r.close()


# -- gc vs a new lease ---------------------------------------------------------------------
@pytest.mark.parametrize("between", ["leases/", "blocks/", "ids/"])
def test_gc_spares_a_lease_created_and_flushed_during_it(race: Race,
                                                         between: str) -> None:
    """A lease created and flushed while gc runs (right after one of its listings) keeps
    its blocks and its id pointer: gc judged blocks against a record listing taken before
    the lease existed and deleted them."""
    url = race.url
    ObjectStore(url, block_size=BS).close()
    gcs, hs, other = race.stores()
    made: dict[str, str] = {}

    def create_and_flush() -> None:
        lease = other.acquire("new", num_blocks=2)
        lease.write_blocks({0: b"new-0", 1: b"new-1"})
        lease.flush()
        made["id"] = lease.lease_id

    hs.on("after", req("LIST", between), create_and_flush)
    gcs.gc()
    assert made, "the hook ran"
    assert _read(url, "new", [0, 1]) == [b"new-0", b"new-1"]
    assert other._c.get(f"ids/{made['id']}") is not None


@pytest.mark.parametrize("between", ["leases/", "blocks/"])
def test_gc_spares_a_released_lease_reacquired_during_it(race: Race,
                                                         between: str) -> None:
    """A released lease re-acquired (epoch 2) and flushed while gc runs keeps its new
    blocks: gc judged them by the released epoch-1 record ("released: garbage")."""
    url = race.url
    with ObjectStore(url, block_size=BS) as st:
        lease = st.acquire("s", num_blocks=2)
        lease.write_blocks({0: b"e1-0", 1: b"e1-1"})
        lease.release()
    gcs, hs, other = race.stores()

    def reacquire_and_flush() -> None:
        again = other.acquire("s")
        assert again.epoch == 2
        again.write_blocks({0: b"e2-0"})
        again.flush()

    hs.on("after", req("LIST", between), reacquire_and_flush)
    gcs.gc()
    assert _read(url, "s", [0, 1]) == [b"e2-0", b"e1-1"]


# -- release vs the next holder ------------------------------------------------------------
def test_release_spares_the_next_holders_flush(race: Race) -> None:
    """A release collects its lease's garbage after its record put; a holder that acquired
    the released lease (epoch 3) and flushed in that window keeps its blocks (they were
    judged by the released epoch-2 record: 'released, unreferenced: garbage')."""
    url = race.url
    with ObjectStore(url, block_size=BS) as st:
        first = st.acquire("s", num_blocks=2)
        first.write_blocks({0: b"e1-0", 1: b"e1-1"})
        first.release()
    st, hs, other = race.stores()
    lease = st.acquire("s")
    assert lease.epoch == 2  # the first commit of an epoch > 1 collects the lease's garbage
    lease.write_blocks({1: b"e2-1"})
    got: dict[str, int] = {}

    def next_holder_flushes() -> None:
        nxt = other.acquire("s")
        got["epoch"] = nxt.epoch
        nxt.write_blocks({0: b"e3-0"})
        nxt.flush()

    hs.on("after", req("PUT", "leases/"), next_holder_flushes)
    lease.release()
    assert got == {"epoch": 3}
    assert _read(url, "s", [0, 1]) == [b"e3-0", b"e2-1"]


# -- delete vs re-create ---------------------------------------------------------------------
def test_delete_spares_a_lease_recreated_under_its_name(race: Race) -> None:
    """A lease re-created under a deleted lease's name (over its tombstone) before the
    delete finishes keeps its record and its flush: the delete ended with an unconditional
    delete of leases/<name>.json."""
    url = race.url
    with ObjectStore(url, block_size=BS) as setup:
        old = setup.acquire("s", num_blocks=2)
        old.write_blocks({0: b"old"})
        old.release()
    st, hs, other = race.stores()
    made: dict[str, str] = {}

    def recreate_and_flush() -> None:
        new = other.acquire("s", num_blocks=2)
        new.write_blocks({0: b"new-0", 1: b"new-1"})
        new.flush()
        made["id"] = new.lease_id

    hs.on("before", lambda m, k: m == "DELETE", recreate_and_flush)
    st.delete_lease("s")
    assert made and made["id"] != old.lease_id
    assert _read(url, "s", [0, 1]) == [b"new-0", b"new-1"]
    assert other.lease_info(made["id"]).epoch == 1


def test_gc_spares_a_lease_recreated_over_an_old_tombstone(race: Race) -> None:
    """gc removes old tombstones; a lease re-created over one (If-Match on its etag) after
    gc judged it old keeps its record: gc deleted leases/<name>.json unconditionally."""
    url = race.url
    race.tombstone("s")
    gcs, hs, other = race.stores()

    def recreate_and_flush() -> None:
        new = other.acquire("s", num_blocks=1)
        new.write_blocks({0: b"new"})
        new.flush()

    hs.on("before", lambda m, k: m in ("PUT", "DELETE") and "leases/" in k,
          recreate_and_flush)
    gcs.gc(min_age=0.0)
    assert _read(url, "s", [0]) == [b"new"]


def test_creator_waits_while_gc_removes_a_doomed_tombstone(race: Race) -> None:
    """The doom protocol (docs/FORMAT.md 6.4): gc dooms the tombstone by a conditional put,
    then deletes it; a creator that meets the doomed tombstone in between waits for it to
    go and then creates afresh, so the delete never hits the new record."""
    url = race.url
    race.tombstone("s")
    gcs, ghs = hooked(url)
    cs, chs = hooked(url)
    looked = threading.Event()
    made: dict[str, int] = {}

    def create() -> None:
        lease = cs.acquire("s", num_blocks=1)
        lease.write_blocks({0: b"new"})
        lease.flush()
        made["epoch"] = lease.epoch

    creator = threading.Thread(target=create)

    def start_creator() -> None:  # after the doom put, before the delete
        chs.on("after", req("GET", "leases/"), looked.set)
        creator.start()
        assert looked.wait(30), "the creator read the record"

    ghs.on("after", req("PUT", "leases/"), start_creator)
    report = gcs.gc(min_age=0.0)
    creator.join(60)
    assert [i.kind for i in report.removed] == ["lease record"]
    assert made == {"epoch": 1}
    assert _read(url, "s", [0]) == [b"new"]
    gcs.close()
    cs.close()


def test_tombstone_doomed_by_a_crashed_gc_is_reused_after_the_window(
        race: Race, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gc that dies between its doom put and its delete leaves a doomed tombstone: a
    creator waits out DOOM_WINDOW (shortened here), then replaces it conditionally."""
    from blockstore import objectstore

    monkeypatch.setattr(objectstore, "DOOM_WINDOW", 3.0)
    url = race.url
    race.tombstone("s")
    gcs, ghs = hooked(url)

    def crash() -> None:
        raise RuntimeError("gc died after dooming")

    ghs.on("after", req("PUT", "leases/"), crash)
    with pytest.raises(StorageIOError, match="died"):  # the client's error for it
        gcs.gc(min_age=0.0)
    with ObjectStore(url) as st:
        doomed_at = st._get_record("leases/s.json")[0].doomed_at  # type: ignore[index]
        assert doomed_at > 0
        lease = st.acquire("s", num_blocks=1)
        # Waited for the window: the new record was made (store clock, the one the product
        # waits on) no earlier than its end, however slow the steps before the acquire were.
        assert lease.acquired_info.created_at >= doomed_at + objectstore.DOOM_WINDOW
        assert st._c.clock.now() >= doomed_at + objectstore.DOOM_WINDOW
        lease.write_blocks({0: b"after"})
        lease.flush()
    assert _read(url, "s", [0]) == [b"after"]
    gcs.close()


def test_gc_tombstone_delete_with_lost_reply_spares_a_lease_recreated_before_the_retry(
        race: Race) -> None:
    """Sim seed 1915: gc dooms an old tombstone and DELETEs it; the DELETE lands, its reply
    is lost, a creator finds the key free and creates the lease, and the client's retry of
    the DELETE removed the new lease's live record. The tombstone DELETE is now sent once
    (ObjectClient.delete_once): the lost reply is a failure gc ignores, the record stays."""
    url = race.url
    race.tombstone("s")
    gcs, hs, other = race.stores()

    def recreate_and_flush() -> None:
        new = other.acquire("s", num_blocks=1)
        new.write_blocks({0: b"new"})
        new.flush()

    hs.on("lose_reply", req("DELETE", "leases/s.json"), recreate_and_flush)
    gcs.gc(min_age=0.0)
    assert ("DELETE", "leases/s.json") in hs.log, "the tombstone delete was sent"
    assert _read(url, "s", [0]) == [b"new"]


# -- lost reply on a flush, then a takeover ---------------------------------------------------
def _lost_reply_then_takeover(url: str, also_flush: dict[int, bytes] | None) -> tuple[
        Any, ObjectStore, Any]:
    """A holder's flush record put lands, its reply is lost; a takeover (and, if
    ``also_flush``, the new holder's flush of those blocks) happens before the client's
    retry, which then gets 412. Returns (the holder's lease, the taker's store, its lease)."""
    st, hs = hooked(url)
    other = ObjectStore(url)
    lease = st.acquire("s", num_blocks=2, ttl=60)
    lease.write_blocks({0: b"v1-0", 1: b"v1-1"})
    lease.flush()
    lease.write_blocks({0: b"v2-0", 1: b"v2-1"})
    taken: dict[str, Any] = {}

    def takeover() -> None:
        taken["lease"] = other.acquire("s", steal=True, ttl=60)
        if also_flush:
            taken["lease"].write_blocks(also_flush)
            taken["lease"].flush()

    hs.on("lose_reply", req("PUT", "leases/"), takeover)
    return lease, other, taken


def test_flush_with_lost_reply_then_takeover_keeps_what_it_published(
        s3_server: MotoServer) -> None:
    """The landed put published v2; the new holder's record names it. The flush must not
    call it 'not committed' and delete it: it sees its generation in the record (committed)."""
    url = s3_server.url(_prefix())
    lease, other, taken = _lost_reply_then_takeover(url, None)
    try:
        lease.flush()  # committed: the record the takeover derived from names this flush
        outcome = "committed"
    except StaleLeaseError as exc:
        outcome = repr(exc)
    assert taken["lease"].epoch == 2
    assert _read(url, "s", [0, 1]) == [b"v2-0", b"v2-1"]  # what the landed put published
    assert outcome == "committed"
    assert [b.rstrip(b"\0") for b in taken["lease"].read_blocks([0, 1])] == [b"v2-0", b"v2-1"]
    other.close()


def test_flush_with_lost_reply_then_takeover_and_flush_is_commit_unknown(
        s3_server: MotoServer) -> None:
    """When the new holder has flushed over every block before the re-read, the record
    cannot tell whether the put landed: CommitUnknownError (a StaleLeaseError callers can
    tell apart), never a plain "not committed"."""
    url = s3_server.url(_prefix())
    lease, other, taken = _lost_reply_then_takeover(url, {0: b"v3-0", 1: b"v3-1"})
    with pytest.raises(CommitUnknownError) as err:
        lease.flush()
    assert isinstance(err.value, StaleLeaseError) and err.value.current_epoch == 2
    assert _read(url, "s", [0, 1]) == [b"v3-0", b"v3-1"]
    other.close()


def test_flush_after_a_failed_landed_flush_then_takeover_is_not_success(
        s3_server: MotoServer) -> None:
    """Sim seeds 1081/1108: a flush's record put lands naming block 0, its answer is an I/O
    error (the writes stay pending, same generation); block 1 is written, and a takeover
    comes before the next flush's put, which gets 412. The re-read record names the
    generation (for block 0 only): the flush took that for "my put landed" and returned
    success for block 1, which no record names. It must be CommitUnknownError."""
    url = s3_server.url(_prefix())
    st, hs = hooked(url)
    other = ObjectStore(url)
    lease = st.acquire("s", num_blocks=2, ttl=60)
    lease.write_blocks({0: b"v1-0"})

    def answer_lost() -> None:
        raise ConnectionResetError("reply lost (test)")

    hs.on("after", req("PUT", "leases/"), answer_lost)
    with pytest.raises(StorageIOError):
        lease.flush()  # landed; the holder cannot know
    lease.write_blocks({1: b"v1-1"})
    taken: dict[str, Any] = {}
    hs.on("before", req("PUT", "leases/"),
          lambda: taken.setdefault("lease", other.acquire("s", steal=True, ttl=60)))
    with pytest.raises(CommitUnknownError) as err:
        lease.flush()  # block 1 is named by no record: never a success
    assert err.value.current_epoch == 2 and taken["lease"].epoch == 2
    assert _read(url, "s", [0]) == [b"v1-0"]  # what the landed put published stays
    other.close()


def test_rewrite_after_a_failed_landed_flush_does_not_change_published_bytes(
        s3_server: MotoServer) -> None:
    """A flush's record put lands naming generation G, its answer is an I/O error (the
    writes stay pending); rewriting block 0 overwrote the object G/0 that the landed record
    names, so readers saw bytes no flush committed. The rewrite now goes to a fresh
    generation (the other pending blocks copied there); the next flush publishes it."""
    url = s3_server.url(_prefix())
    st, hs = hooked(url)
    lease = st.acquire("s", num_blocks=2, ttl=60)
    lease.write_blocks({0: b"v1-0", 1: b"v1-1"})

    def answer_lost() -> None:
        raise ConnectionResetError("reply lost (test)")

    hs.on("after", req("PUT", "leases/"), answer_lost)
    with pytest.raises(StorageIOError):
        lease.flush()  # landed; the holder cannot know
    assert _read(url, "s", [0, 1]) == [b"v1-0", b"v1-1"]
    lease.write_blocks({0: b"v2-0"})
    assert _read(url, "s", [0, 1]) == [b"v1-0", b"v1-1"]  # not flushed: not visible
    assert [b.rstrip(b"\0") for b in lease.read_blocks([0, 1])] == [b"v2-0", b"v1-1"]
    lease.flush()
    assert _read(url, "s", [0, 1]) == [b"v2-0", b"v1-1"]
    st.close()


# -- missing block objects ---------------------------------------------------------------------
def test_restore_falls_back_when_a_generations_block_objects_are_missing(
        s3_server: MotoServer) -> None:
    """The objects of generation 2's data blocks are gone (deleted by hand here, as by an
    operator or a bug): restore treats generation 2 as corrupt and returns generation 1,
    instead of raising StoreCorruptError (a stage that cannot start)."""
    from stages import CheckpointedStageState

    url = s3_server.url(_prefix())
    key = b"races-key"
    with ObjectStore(url, block_size=64 * 1024) as st:
        lease = st.acquire("stage", ttl=60)
        css = CheckpointedStageState({"gen": 1, "x": list(range(20_000))}, lease, key=key)
        css.checkpoint(step=1)
        first = dict(st._current_record(lease.lease_id).blocks)  # type: ignore[union-attr]
        css.state = {"gen": 2, "x": list(range(20_000, 40_000))}
        css.checkpoint(step=2)
        second = dict(st._current_record(lease.lease_id).blocks)  # type: ignore[union-attr]
        header_slots = {0, 1}
        gone = [f"blocks/{lease.lease_id}/{g}/{i}" for i, g in second.items()
                if first.get(i) != g and i not in header_slots]
        assert gone
        st._c.delete(gone)
    with ObjectStore(url) as reader_store:
        back = CheckpointedStageState.restore(reader_store.open_reader("stage"), key=key)
        assert back.state["gen"] == 1 and back.restored.generation == 1
        assert [g for g, _ in back.restored.skipped] == [2]
        assert "missing" in back.restored.skipped[0][1]
