"""The exactly-once questions of ``every_calls=1`` actors (issue 18 item 2), and request ids.

Without Ray first: the decorated class runs in this process on a real file store wrapped in
``blockstore.faults.FaultyStore``, which fails a chosen write or flush the way a broken disk
does. Two questions, one test each:

* a commit whose outcome is unknown (the store raised after the generation may have landed)
  whose generation *did* land holds the call's id: the call returns its recorded result,
  and nothing is applied twice; one whose generation did not land raises and leaves
  nothing of the call behind;
* a call that raises after partly mutating the state is rolled back to the last committed
  state, so the next call's checkpoint cannot commit half of it.

Then request ids (issue 19 item 1, ``stages/actors/calls.py``): without Ray, and on a
local Ray with the actor process killed between the commit and the reply. The same on a
3-node cluster with the node removed mid-call: ``tests/test_checkpointed_cluster.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import sys
from typing import Any

import pytest
import ray
import ray.cloudpickle
from aftercommit import AfterCommitOnce
from polling import wait_for

from blockstore import FileStore
from blockstore.faults import FaultyStore
from stages import (
    CallNotAnswered,
    CheckpointCommitUnknown,
    CheckpointedConfigError,
    RequestIdError,
    call_once,
    checkpointed,
)
from stages.actors.durability import ActorDurability

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Account:
    """A balance and a log of what was applied; ``spend`` changes both, then may fail."""

    def __init__(self) -> None:
        self.state = {"balance": 100, "log": []}

    def deposit(self, k: int) -> int:
        self.state["balance"] += k
        self.state["log"].append(k)
        return self.state["balance"]

    def spend_then_fail(self, k: int) -> None:
        self.state["balance"] -= k                      # half of the change...
        raise ValueError("card declined")               # ...and the method raises

    async def spend_then_fail_async(self, k: int) -> None:
        self.state["balance"] -= k
        await asyncio.sleep(0)
        raise ValueError("card declined")

    @checkpointed.readonly
    def balance(self) -> int:
        return self.state["balance"]


class DisarmOnFailure:
    """A flush observer that disarms the store's injected fault once a flush failed: the
    next flush (the one that confirms a commit of unknown outcome) succeeds."""

    def __init__(self, faulty: FaultyStore) -> None:
        self.faulty = faulty

    def on_flush_start(self, lease_id: str) -> None:
        pass

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        if not ok:
            self.faulty.fail_io("flush", None)
            self.faulty.fail_io("write", None)


def _start(store: Any, key: str, **kw: Any) -> Any:
    """An incarnation of the decorated ``Account`` on ``store`` (a URL or an open store,
    possibly faulty), as the decorator starts it inside an actor."""
    kw.setdefault("every_calls", 1)
    cls = checkpointed(store="unused", key=key, **kw)(Account)
    config = dataclasses.replace(cls.__bp_config__, store=store)
    obj = object.__new__(cls)
    Account.__init__(obj)
    obj._bp_durable = ActorDurability(obj, config, key, handle=None, node_id=None)
    return obj


def _faulty(tmp_path: Any) -> FaultyStore:
    return FaultyStore(FileStore(tmp_path / "store", 4096))


def _writes_and_flushes_of_one_call(obj: Any, faulty: FaultyStore) -> tuple[int, int]:
    w, f = faulty.write_calls, faulty.flushes
    obj.deposit(0)
    return faulty.write_calls - w, faulty.flushes - f


def test_commit_unknown_that_landed_returns_the_recorded_result(tmp_path: Any) -> None:
    faulty = _faulty(tmp_path)
    obj = _start(faulty, "landed", observer=DisarmOnFailure(faulty))
    _, flushes = _writes_and_flushes_of_one_call(obj, faulty)
    # The last flush of a checkpoint follows its header write: failing it leaves the
    # commit unknown, with the new generation in place.
    faulty.fail_io("flush", errno.EIO, at=flushes - 1)
    assert obj.deposit(7) == 107          # committed after all: answered, not raised
    assert obj.balance() == 107 and obj.state["log"] == [0, 7]
    info = obj.checkpoint_info()
    assert info["failed_checkpoints"] == 1 and info["deduplicated"] == 0
    assert obj.deposit(1) == 108          # and it goes on from there
    faulty.close()
    again = _start(FileStore(tmp_path / "store"), "landed")
    assert again.state == {"balance": 108, "log": [0, 7, 1]}   # applied exactly once


def test_commit_unknown_that_did_not_land_raises_and_leaves_nothing(tmp_path: Any) -> None:
    faulty = _faulty(tmp_path)
    obj = _start(faulty, "lost", observer=DisarmOnFailure(faulty))
    writes, _ = _writes_and_flushes_of_one_call(obj, faulty)
    faulty.fail_io("write", errno.EIO, at=writes - 1)     # the header write itself fails
    with pytest.raises(CheckpointCommitUnknown):
        obj.deposit(7)
    assert obj.balance() == 100 and obj.state["log"] == [0]   # memory = what is durable
    assert obj.deposit(1) == 101
    faulty.close()
    assert _start(FileStore(tmp_path / "store"), "lost").state == {"balance": 101,
                                                                   "log": [0, 1]}


def test_a_call_that_raises_is_rolled_back_before_the_next_commit(tmp_path: Any) -> None:
    """Rolled back to the last committed state: the lease's newest generation, or - before
    the first commit - the constructor's state."""
    store = str(tmp_path / "store")
    obj = _start(store, "partial")
    with pytest.raises(ValueError, match="declined"):
        obj.spend_then_fail(30)               # before any commit: back to __init__'s state
    assert obj.balance() == 100
    assert obj.deposit(5) == 105
    with pytest.raises(ValueError, match="declined"):
        obj.spend_then_fail(50)
    assert obj.balance() == 105
    with pytest.raises(ValueError, match="declined"):
        asyncio.run(obj.spend_then_fail_async(20))   # the coroutine path, the same rule
    assert obj.balance() == 105
    assert obj.deposit(1) == 106              # this commit holds no half of the failures
    assert _start(store, "partial").state == {"balance": 106, "log": [5, 1]}


# -- request ids (issue 19 item 1) -----------------------------------------------------------
def test_request_ids_without_ray(tmp_path: Any) -> None:
    """The keyword is stripped and checked; a recorded id is answered from the record, in
    either mode and from a new incarnation that restored it; no method may take it."""
    store = str(tmp_path / "store")
    obj = _start(store, "ids")
    assert obj.deposit(5, request_id="order-1") == 105
    assert obj.deposit(5, request_id="order-1") == 105          # a resend: not applied again
    assert obj.checkpoint_info()["deduplicated"] == 1
    with pytest.raises(RequestIdError, match="non-empty str"):
        obj.deposit(1, request_id="")
    with pytest.raises(RequestIdError, match="at most 256"):
        obj.deposit(1, request_id="x" * 257)
    assert _start(store, "ids").deposit(5, request_id="order-1") == 105   # after a restart
    policy = _start(str(tmp_path / "p"), "policy", every_calls=None)
    assert [policy.deposit(2, request_id="r") for _ in range(3)] == [102, 102, 102]
    asyncio.run(policy.checkpoint())          # Account has an async method: a coroutine
    back = _start(str(tmp_path / "p"), "policy", every_calls=None)
    assert back.deposit(2, request_id="r") == 102 and back.state["log"] == [2]
    assert back.checkpoint_info()["deduplicated"] == 1          # answered from the record

    class Clash(Account):
        def pay(self, k: int, request_id: str) -> None: ...
    with pytest.raises(CheckpointedConfigError, match="reserves"):
        checkpointed(store=store, key="c")(Clash)


class KillAfterCommitOnce(AfterCommitOnce):
    """Kills the actor process right after a commit (before the call's reply leaves), once:
    the first incarnation to remove the trigger file does it."""

    def act(self) -> None:
        os._exit(1)


@pytest.mark.ray
def test_resend_after_a_kill_between_commit_and_reply(ray_local: None, tmp_path: Any) -> None:
    """Ray restarts the actor but does not retry the call (``max_task_retries=0``, as for
    an actor the scheduler re-creates): the caller sees the actor die although the call
    committed. A resend under the same request id returns the recorded result; without
    one it is a new call, applied a second time. ``call_once`` does the resending."""
    trigger = tmp_path / "kill"
    cls = ray.remote(max_restarts=-1, max_task_retries=0,
                     concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=str(tmp_path / "store"), every_calls=1,
                     observer=KillAfterCommitOnce(str(trigger)))(Account))
    h = cls.options(name="account").remote()

    def answers() -> bool:
        """Whether the restarted actor takes calls again: until then Ray refuses them with
        ``ActorUnavailableError`` ("the actor is restarting"), a resend the test must not
        count as sent. ``balance`` only reads, so asking it changes nothing."""
        try:
            ray.get(h.balance.remote())
        except ray.exceptions.RayActorError:
            return False
        return True

    assert ray.get(h.deposit.remote(1, request_id="a")) == 101
    trigger.touch()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(h.deposit.remote(10, request_id="b"))           # committed, never answered
    wait_for(answers, what="the actor restarted")
    assert ray.get(h.deposit.remote(10, request_id="b")) == 111  # the recorded result
    assert ray.get(h.balance.remote()) == 111
    trigger.touch()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(h.deposit.remote(5))
    wait_for(answers, what="the actor restarted")
    assert ray.get(h.deposit.remote(5)) == 121                   # no id: applied twice
    trigger.touch()
    assert call_once("account", "deposit", 100, request_id="c", timeout=60) == 221
    assert call_once(h, "deposit", 100, request_id="c") == 221   # asked again: recorded
    assert ray.get(h.balance.remote()) == 221
    assert not trigger.exists()                                  # it really was killed
    with pytest.raises(RequestIdError):
        ray.get(h.deposit.remote(1, request_id=7))
    with pytest.raises(CallNotAnswered) as late:
        call_once("no-such-actor", "deposit", 1, request_id="d", timeout=0.5)
    assert late.value.request_id == "d" and late.value.attempts == 0
    ray.kill(h)
