"""What a request id promises, attacked (review 19): it names one call, its answer is the
one given, and call_once resends whatever left the outcome unknown.

Without Ray first (the decorated class runs in this process on a real file store, as in
``tests/test_checkpointed_exact.py``):

* a recorded id reused by another call (other arguments, other method) is refused with
  ``RequestIdConflict`` - before, it was answered with the first call's result and its own
  effect silently dropped; the refusal holds in a new incarnation (the fingerprints are
  checkpointed), and a true resend whose set argument iterates in another order (another
  process, another hash seed) is still answered;
* the recorded result is the answer the first attempt gave, even when the method returned
  an object that aliases the state and later calls changed.

Then on a local Ray: exactly-once calls of an async actor in two concurrency groups (two
event loops) apply one at a time and none fails; ``call_once`` resends after
``CheckpointCommitUnknown`` and refuses an empty or non-``str`` request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages import (
    CheckpointCommitUnknown,
    RequestIdConflict,
    RequestIdError,
    call_once,
    checkpointed,
)
from stages.actors.durability import ActorDurability

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Bank:
    def __init__(self) -> None:
        self.state = {"balance": 100, "log": []}

    def deposit(self, k: int, tags: Any = None) -> int:
        self.state["balance"] += k
        self.state["log"].append(k)
        return self.state["balance"]

    def withdraw(self, k: int) -> int:
        self.state["balance"] -= k
        self.state["log"].append(-k)
        return self.state["balance"]

    def history(self) -> list[int]:
        self.state["log"].append(0)
        return self.state["log"]            # the state's own list, not a copy


def _start(store: str, key: str, **kw: Any) -> Any:
    kw.setdefault("every_calls", 1)
    cls = checkpointed(store=store, key=key, **kw)(Bank)
    obj = object.__new__(cls)
    Bank.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, key, handle=None, node_id=None)
    return obj


class Maker:
    def __init__(self) -> None:
        self.state = {"n": 0}

    def make(self) -> Any:
        self.state["n"] += 1
        return lambda x: x + 1          # Ray's cloudpickle sends it; a checkpoint cannot keep it


def test_an_unpicklable_result_is_named_not_the_state(tmp_path: Any) -> None:
    """Review 19, F7: with ``every_calls=1`` the call's answer is recorded in the commit; when
    it cannot be pickled the error says so (it read like an unpicklable *state*), nothing is
    committed and the state is rolled back."""
    from stages import CheckpointEncodeError

    cls = checkpointed(store=str(tmp_path / "store"), key="maker", every_calls=1)(Maker)
    obj = object.__new__(cls)
    Maker.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "maker", handle=None, node_id=None)
    with pytest.raises(CheckpointEncodeError) as err:
        obj.make()
    message = str(err.value)
    assert "the call's result cannot be recorded" in message, message
    assert "function objects cannot be pickled" in message, message
    assert obj.state == {"n": 0}


@pytest.mark.parametrize("every_calls", [1, None])
def test_a_request_id_names_one_call(tmp_path: Any, every_calls: int | None) -> None:
    store = str(tmp_path / "store")
    bank = _start(store, "bank", every_calls=every_calls)
    tags = {"gamma", "alpha", "beta", "delta", "epsilon"}
    assert bank.deposit(5, tags=tags, request_id="user-42") == 105
    with pytest.raises(RequestIdConflict, match="other arguments") as other:
        bank.deposit(500, tags=tags, request_id="user-42")
    assert other.value.request_id == "user-42" and other.value.method == "deposit"
    with pytest.raises(RequestIdConflict, match="withdraw") as method:
        bank.withdraw(50, request_id="user-42")
    assert method.value.recorded == "deposit" and isinstance(method.value, RequestIdError)
    assert bank.state == {"balance": 105, "log": [5]}              # nothing of either applied
    assert bank.deposit(5, tags=set(sorted(tags)), request_id="user-42") == 105   # a resend
    if every_calls is None:
        bank.checkpoint()
    again = _start(store, "bank", every_calls=every_calls)        # a new incarnation
    with pytest.raises(RequestIdConflict):
        again.withdraw(50, request_id="user-42")
    assert again.state == {"balance": 105, "log": [5]}
    # A resend from another process, where the set iterates in another order.
    code = (f"import sys; sys.path.insert(0, {HERE!r}); "
            "import test_checkpointed_request_ids as t; "
            f"b = t._start({store!r}, 'bank', every_calls={every_calls!r}); "
            f"print(b.deposit(5, tags=set({sorted(tags)!r}), request_id='user-42'), "
            "b.state['log'])")
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed,
                                  "PYTHONPATH": ROOT}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["105", "[5]"], out.stdout


@pytest.mark.parametrize("every_calls", [1, None])
def test_the_recorded_result_is_the_answer_given(tmp_path: Any,
                                                 every_calls: int | None) -> None:
    store = str(tmp_path / "store")
    bank = _start(store, "hist", every_calls=every_calls)
    first = list(bank.history(request_id="h-1"))
    bank.deposit(7, request_id="d-1")
    assert bank.history(request_id="h-1") == first == [0]       # not today's log
    if every_calls is None:
        bank.checkpoint()
    again = _start(store, "hist", every_calls=every_calls)
    assert again.history(request_id="h-1") == [0]
    assert again.state["log"] == [0, 7]


# -- on Ray ------------------------------------------------------------------------------------
@pytest.mark.ray
def test_async_exactly_once_calls_in_two_concurrency_groups(ray_local: None,
                                                            tmp_path: Any) -> None:
    """Two groups run on two event loops; exactly-once mode still takes one call at a time
    (before: the second loop's calls raised 'bound to a different event loop')."""

    @ray.remote(concurrency_groups={**checkpointed.GROUPS, "io": 2})
    @checkpointed(store=str(tmp_path / "store"), key="two-loops", every_calls=1,
                  concurrency_groups={"io": 2})
    class Acc:
        def __init__(self) -> None:
            self.state = {"n": 0, "inside": 0, "overlaps": 0}

        async def add(self, k: int) -> int:
            self.state["inside"] += 1
            self.state["overlaps"] += self.state["inside"] > 1
            await asyncio.sleep(0.01)
            self.state["n"] += k
            self.state["inside"] -= 1
            return self.state["n"]

        @ray.method(concurrency_group="io")
        async def add_io(self, k: int) -> int:
            return await self.add(k)

        @checkpointed.readonly
        async def get(self) -> dict[str, int]:
            return dict(self.state)

    a = Acc.remote()
    refs = [m.remote(1) for _ in range(8) for m in (a.add, a.add_io)]
    assert sorted(ray.get(refs, timeout=120)) == list(range(1, 17))
    assert ray.get(a.get.remote()) == {"n": 16, "inside": 0, "overlaps": 0}
    ray.kill(a)


@pytest.mark.ray
def test_call_once_resends_after_a_commit_of_unknown_outcome(ray_local: None,
                                                             tmp_path: Any) -> None:
    trigger = tmp_path / "unknown"
    trigger.touch()

    @ray.remote(concurrency_groups=checkpointed.GROUPS)
    @checkpointed(store=str(tmp_path / "store"), every_calls=1)
    class Acc:
        def __init__(self, trigger: str) -> None:
            self.trigger = trigger
            self.state = {"n": 0}

        def add(self, k: int) -> int:
            if os.path.exists(self.trigger):   # a commit that timed out, once
                os.unlink(self.trigger)
                raise CheckpointCommitUnknown("commit of 'unknown' timed out", lease_id="-")
            self.state["n"] += k
            return self.state["n"]

    a = Acc.options(name="unknown-outcome").remote(str(trigger))
    assert call_once("unknown-outcome", "add", 5, request_id="r1", timeout=60) == 5
    assert not trigger.exists()
    assert call_once(a, "add", 5, request_id="r1") == 5           # answered from the record
    for bad in ("", 0, b"r1"):
        with pytest.raises(RequestIdError):
            call_once(a, "add", 5, request_id=bad)
    assert call_once(a, "add", 1) == 6                           # None: a fresh id
    ray.kill(a)
