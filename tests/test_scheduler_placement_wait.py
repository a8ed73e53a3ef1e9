"""Placement waits for room while other launches are in flight (the drain placement fix).

Ray's free-resource view lags behind actor creation, so ``Placement.pick_node`` counts the
resources of launches in flight (reservations) as used, and when no node has room only
because of them it keeps looking until they end, instead of giving up after its few
seconds of retries (``scheduler/placement.py``). Deterministic: the retry window is set to
zero, so without a launch in flight the pick fails at once; with one it waits - seen waiting
(``thread_inside``) - and takes the node as soon as that launch ends. Real Ray (its node
table); no actor is started.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from polling import thread_inside, wait_for

import scheduler.placement as placement_mod
from blockstore import open_store
from scheduler.errors import NoNodeAvailableError
from scheduler.placement import Placement
from scheduler.registry import RegistryStore
from scheduler.table import StageTable

pytestmark = pytest.mark.ray


class _Need:
    """The one thing pick_node asks of a spec."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus

    def ray_resources(self) -> dict[str, float]:
        return {"CPU": self.cpus}


@pytest.fixture
def placement(ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[Placement]:
    monkeypatch.setattr(placement_mod, "_PICK_RETRY_S", 0.0)
    store = open_store(str(tmp_path / "s"), block_size=4096)
    reg = RegistryStore(store, "_reg", allow_unauthenticated=True)
    reg.open()
    stop = threading.Event()
    try:
        yield Placement(StageTable(reg, name="t", namespace="ns"), name="t", namespace="ns",
                        ack_timeout=1.0, retry_interval=1.0, stop=stop)
    finally:
        stop.set()
        reg.close()
        store.close()


def test_no_room_and_nothing_in_flight_fails_at_once(placement: Placement) -> None:
    total = ray.cluster_resources()["CPU"]
    with pytest.raises(NoNodeAvailableError):
        placement.pick_node("big", _Need(total + 1), frozenset())


def test_waits_while_another_launch_holds_the_room_then_places(placement: Placement) -> None:
    total = ray.cluster_resources()["CPU"]
    wait_for(lambda: ray.available_resources().get("CPU", 0) >= total, what="all CPUs free")
    node = placement.pick_node("other", _Need(total - 1), frozenset())   # in flight
    picked: list[object] = []

    def pick() -> None:
        try:
            picked.append(placement.pick_node("s", _Need(2), frozenset()))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            picked.append(exc)

    t = threading.Thread(target=pick)
    t.start()
    # Waiting for room (its retry window is zero: only the launch in flight keeps it there).
    wait_for(lambda: thread_inside(t, "wait") and thread_inside(t, "pick_node"),
             what="the pick waiting for the launch in flight")
    placement._unreserve("other")                # that launch ended (place() does this)
    t.join(60)
    assert picked == [node]
    placement._unreserve("s")
