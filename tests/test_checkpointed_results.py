"""Recorded results of calls with a request id (review 19, second round: R7, R13).

Without Ray: the decorated class runs in this process on a real file store, as in
``tests/test_checkpointed_exact.py``. Each test fails on the code before its fix:

* R7: a result that does not pickle was recorded as it was, with size 0 (never dropped by
  ``dedupe_bytes``), and every later policy checkpoint failed on it until ``dedupe_window``
  calls pushed its id out - the actor kept applying calls it could no longer save. Now the
  call is refused at once (``CheckpointEncodeError``) and undone, as ``every_calls=1`` does;
* R13: the ``dedupe_bytes`` budget counted a ``str`` by its characters and every ``int`` as
  16 bytes, so the results every checkpoint carries exceeded it several times over (20
  non-ASCII strings of 100,000 characters: 6 MB carried for a 256 KiB budget). Now every
  result counts its pickled size.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest

from stages import CheckpointEncodeError, checkpointed
from stages.actors.durability import ActorDurability
from stages.actors.records import AppliedCalls


class Svc:
    def __init__(self) -> None:
        self.state = {"n": 0}

    def add(self, k: int) -> int:
        self.state["n"] += k
        return self.state["n"]

    def handle(self) -> Any:
        self.state["n"] += 100
        return threading.Lock()          # a result that does not pickle

    async def handle_async(self) -> Any:
        self.state["n"] += 100
        return threading.Lock()


def _start(store: str, every_calls: int | None) -> Any:
    cls = checkpointed(store=store, key="svc", every_calls=every_calls, dedupe_window=8)(Svc)
    obj = object.__new__(cls)
    Svc.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "svc", handle=None, node_id=None)
    return obj


@pytest.mark.parametrize("coroutine", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("every_calls", [2, 1], ids=["every2", "exact"])
def test_an_unpicklable_result_is_refused_and_later_checkpoints_go_on(
        tmp_path: Any, every_calls: int, coroutine: bool) -> None:
    import asyncio

    store = str(tmp_path / "store")
    s = _start(store, every_calls)
    with pytest.raises(CheckpointEncodeError, match="result cannot be recorded"):
        if coroutine:
            asyncio.run(s.handle_async(request_id="h-1"))
        else:
            s.handle(request_id="h-1")
    assert s.state == {"n": 0}                  # undone: nothing of it kept
    for i in range(4):                          # two checkpoints become due (every2)
        s.add(1, request_id=f"a-{i}")
    assert _start(store, every_calls).state == {"n": 4}


RESULTS: list[Callable[[int], Any]] = [
    lambda i: "\N{EURO SIGN}" * 100_000 + str(i),       # 3 bytes a character in UTF-8
    lambda i: 10 ** 200_000 + i,                        # ~83 KB pickled, not 16 B
    lambda i: b"x" * 50_000 + bytes([i]),
]


@pytest.mark.parametrize("make", RESULTS, ids=["non-ascii-str", "big-int", "bytes"])
def test_the_result_budget_counts_what_a_checkpoint_carries(make: Callable[[int], Any]) -> None:
    calls = AppliedCalls(window=100, actor="T", max_bytes=256 * 1024)
    for i in range(20):
        calls.record(f"req:{i}", make(i))
    p = calls.payload()
    kept = [v for k, v in p["applied"] if k not in p["dropped"]]
    carried = sum(len(pickle.dumps(v, protocol=5)) for v in kept)
    newest = len(pickle.dumps(kept[-1], protocol=5))
    assert carried <= calls.max_bytes + newest, (carried, calls.max_bytes, len(kept))
    assert calls.kept_bytes == carried          # what is counted is what is carried


def test_results_restored_without_sizes_are_measured_in_the_actors_codec() -> None:
    """A payload without ``sizes`` (an older version's) is measured on restore: under
    msgpack by its msgpack size, as it was recorded, not by its pickle (which differs)."""
    from stages.checkpoint.codec import msgpack_copy

    value = {"items": list(range(300)), "name": "x" * 40}
    recorded = AppliedCalls(window=10, actor="T", max_bytes=1 << 20, codec="msgpack")
    recorded.record("req:1", value)
    payload = {k: v for k, v in recorded.payload().items() if k != "sizes"}
    back = AppliedCalls(window=10, actor="T", max_bytes=1 << 20, codec="msgpack")
    back.adopt(payload)
    assert back.kept_bytes == recorded.kept_bytes == msgpack_copy(value)[1]
    assert back.kept_bytes != len(pickle.dumps(recorded.results["req:1"], protocol=5))
