"""The flush-mark table (``scheduler/marks.py``): the acknowledgement's own path, atomic with
preemption plans, and the registration refusal under the table's lock. No Ray: the table and
the manager are plain Python, the registry on a file store in ``tmp_path``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import thread_inside, wait_for

from blockstore import open_store
from scheduler.plans import PreemptionRequest
from scheduler.reasons import NonPreemptibleReason
from scheduler.registry import RegistryStore
from scheduler.table import StageTable

_CIP = NonPreemptibleReason.CHECKPOINT_IN_PROGRESS


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StageTable]:
    store = open_store(str(tmp_path / "s"), block_size=4096)
    reg = RegistryStore(store, "_reg", allow_unauthenticated=True)
    reg.open()
    try:
        yield StageTable(reg, name="t", namespace="ns")
    finally:
        reg.close()
        store.close()


def _register(table: StageTable, sid: str, *, epoch: int = 1, dead: str | None = None
              ) -> dict:
    status, _ = table.register({"stage_id": sid, "node_id": "n1", "epoch": epoch,
                                "lease_id": f"lease-{sid}", "priority": 0}, None, {},
                               dead=dead)
    return status


def test_a_flush_start_never_takes_the_table_lock(table: StageTable) -> None:
    """An acknowledgement while another thread holds the table's lock (a save, a pass)."""
    _register(table, "a")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with table.lock:
            holding.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(60)
        assert table.flush_started("a", "lease-a", 5)
        assert table.manager.reasons("a") == {_CIP}
        # ...and by lease id alone (an observer that only knows its lease)
        assert table.flush_completed("unknown-id", "lease-a", True, 5)
        assert table.manager.reasons("a") == frozenset()
    finally:
        release.set()
        t.join()


def test_sequence_numbers_order_late_calls(table: StageTable) -> None:
    _register(table, "a")
    assert table.flush_started("a", "lease-a", 10)
    assert not table.flush_completed("a", "lease-a", True, 9)     # older than the start
    assert table.manager.reasons("a") == {_CIP}
    assert table.flush_completed("a", "lease-a", True, 10)
    assert not table.flush_started("a", "lease-a", 10)           # not newer than the end
    assert table.manager.reasons("a") == frozenset()
    assert not table.flush_started("nope", "no-lease", 11)       # unknown stage


def test_marks_are_cleared_by_a_new_epoch_a_park_and_a_forget(table: StageTable) -> None:
    _register(table, "a")
    assert table.flush_started("a", "lease-a", 1)
    _register(table, "a", epoch=2)                               # a new incarnation
    assert table.manager.reasons("a") == frozenset()
    assert table.marks.view("a").since is None
    assert table.flush_started("a", "lease-a", 2)
    with table.lock:
        table.park_locked(table.entries["a"])
    assert table.marks.view("a").since is None
    assert not table.flush_started("a", "lease-a", 3)            # parked: no candidate
    table.forget("a")
    assert table.marks.view("a") is None


def test_a_marked_stage_is_never_a_victim(table: StageTable) -> None:
    for sid in ("a", "b"):
        _register(table, sid)
    assert table.flush_started("a", "lease-a", 1)
    plan = table.manager.select_victims(PreemptionRequest(count=2, deadline=0.0, reason="t"))
    assert "a" not in plan.victims and "b" in plan.victims


def test_a_fenced_stage_is_not_acknowledged_until_unfenced(table: StageTable) -> None:
    """The kill path: from the last "not flushing" check to the kill, a flush start waits,
    and is answered without a mark."""
    _register(table, "a")
    assert table.marks.fence("a", deadline=0.0)
    answers: list[bool] = []
    t = threading.Thread(target=lambda: answers.append(table.flush_started("a", "lease-a", 1)))
    t.start()
    wait_for(lambda: thread_inside(t, "wait"), what="the start waiting on the fence")
    table.marks.unfence("a")
    t.join(60)
    assert answers == [False]
    assert table.manager.reasons("a") == frozenset()
    assert table.flush_started("a", "lease-a", 2)                # the fence is gone


def test_fence_waits_for_a_flush_in_progress(table: StageTable) -> None:
    _register(table, "a")
    assert table.flush_started("a", "lease-a", 1)
    assert not table.marks.fence("a", deadline=0.0)              # flushing at the deadline
    fenced: list[bool] = []
    t = threading.Thread(target=lambda: fenced.append(table.marks.fence("a", 1e12)))
    t.start()
    wait_for(lambda: thread_inside(t, "wait"), what="the fence waiting for the flush")
    table.flush_completed("a", "lease-a", True, 1)
    t.join(60)
    assert fenced == [True]
    table.marks.unfence("a")


def test_a_lease_expiry_clears_only_the_mark_it_judged(table: StageTable) -> None:
    _register(table, "a")
    assert table.flush_started("a", "lease-a", 1)
    judged = table.marks.view("a").since
    table.flush_completed("a", "lease-a", True, 1)
    assert table.flush_started("a", "lease-a", 2)                # a newer flush
    if table.marks.view("a").since != judged:
        assert not table.marks.clear("a", since=judged)
        assert table.manager.reasons("a") == {_CIP}
    assert table.marks.clear("a")
    assert table.manager.reasons("a") == frozenset()


def test_a_dead_registration_is_refused_in_one_step_with_the_update(table: StageTable) -> None:
    """Unknown stage + dead actor: refused, nothing shows; known stage: updated as before."""
    status = _register(table, "gone", dead="actor is already dead")
    assert status["status"] == "ignored"
    assert "gone" not in table.entries and "gone" not in table.manager
    _register(table, "known")
    status = _register(table, "known", epoch=2, dead="actor is already dead")
    assert status["status"] == "running" and table.entries["known"].epoch == 2
    # a forget, then the late registration: still refused (the check is the update's)
    table.forget("known")
    assert _register(table, "known", epoch=3, dead="dead")["status"] == "ignored"
    assert "known" not in table.entries
