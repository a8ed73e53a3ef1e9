"""A call with a request id that raises leaves nothing, in every policy (review 19, F8).

Review 19 (second round) attacked the rollback from three sides, each test below failing on
the code before its fix:

* R1/R1b: a *synchronous* method of an async actor, called while a coroutine call that runs
  alone (a request id outside ``every_calls=1``; any coroutine call in it) was suspended
  mid-method, ran beside it - and the coroutine's rollback undid it (policy), or its commit
  carried the coroutine's half (``every_calls=1``). A sync method runs on the event loop and
  cannot wait: it is now refused (``SyncCallRefused``, nothing applied), in process and on Ray;
* R9: a call that committed a checkpoint half-way (``self.checkpoint()``) and then raised
  was put back in memory only; after a crash the lease's half plus the resend = twice;
* R15: a call that raised after another call ran beside it (past ``HOLD_S``) is not rolled
  back; its resend applied its half a second time - it is now refused (``ResultNotKept``).

Before, only ``every_calls=1`` rolled a raising call back; with ``every_calls=N``,
``every_seconds`` or manual checkpoints the half it had changed stayed, unrecorded, and a
resend under the same id applied that half a second time (stock 10 - 3 - 3 = 4, not 7).
Without Ray: the decorated class runs in this process on a real file store, as in
``tests/test_checkpointed_exact.py``; the coroutine path too, with another call arriving
while the failing one is suspended mid-method.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from typing import Any

import pytest
import ray
import ray.cloudpickle

from stages import ResultNotKept, SyncCallRefused, checkpointed
from stages.actors.durability import ActorDurability

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Shop:
    """Takes the stock first, then calls a payment service that may time out."""

    def __init__(self) -> None:
        self.state = {"stock": 10, "orders": [], "restocked": 0}
        self.fail_next = 0          # not state: the payment service's mood

    def order(self, k: int) -> int:
        self.state["stock"] -= k                        # half of the change...
        self.state["orders"].append(k)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("payment service timed out")  # ...then a transient failure
        return self.state["stock"]

    async def order_async(self, k: int, gate: Any = None, go: Any = None) -> int:
        self.state["stock"] -= k
        self.state["orders"].append(k)
        if gate is not None:
            gate.set()                                  # inside its method, suspending
        if go is not None:
            await go.wait()                             # suspended mid-method until told
        else:
            await asyncio.sleep(0.01)                   # suspended mid-method
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("payment service timed out")
        return self.state["stock"]

    async def restock_async(self, k: int) -> int:
        self.state["stock"] += k
        self.state["restocked"] += k
        return self.state["stock"]


def _start(store: str, key: str, **kw: Any) -> Any:
    cls = checkpointed(store=store, key=key, **kw)(Shop)
    obj = object.__new__(cls)
    Shop.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, key, handle=None, node_id=None)
    return obj


POLICIES = [{"every_calls": 1}, {"every_calls": 5}, {"every_calls": None, "every_seconds": 3600},
            {"every_calls": None}]


@pytest.mark.parametrize("policy", POLICIES, ids=["exact", "every5", "seconds", "manual"])
def test_a_raising_call_with_a_request_id_leaves_nothing(tmp_path: Any,
                                                         policy: dict[str, Any]) -> None:
    store = str(tmp_path / "store")
    shop = _start(store, "shop", **policy)
    assert shop.order(1, request_id="o-0") == 9
    shop.fail_next = 1
    with pytest.raises(ConnectionError):
        shop.order(3, request_id="o-1")
    assert shop.state == {"stock": 9, "orders": [1], "restocked": 0}   # nothing of it left
    assert shop.order(3, request_id="o-1") == 6                         # the resend applies once
    assert shop.order(3, request_id="o-1") == 6                         # and is then answered
    assert shop.state == {"stock": 6, "orders": [1, 3], "restocked": 0}
    asyncio.run(shop.checkpoint())          # Shop has async methods: checkpoint() is a coroutine
    again = _start(store, "shop", **policy)
    assert again.state == {"stock": 6, "orders": [1, 3], "restocked": 0}
    assert again.order(3, request_id="o-1") == 6


@pytest.mark.parametrize("policy", POLICIES[1:], ids=["every5", "seconds", "manual"])
def test_a_raising_coroutine_call_is_rolled_back_not_the_call_beside_it(
        tmp_path: Any, policy: dict[str, Any]) -> None:
    """The failing call runs alone: a call that arrives while it is suspended mid-method
    waits, so putting the state back undoes nothing of that call."""
    shop = _start(str(tmp_path / "store"), "shop", **policy)

    async def scenario() -> tuple[Any, int]:
        gate, go = asyncio.Event(), asyncio.Event()
        shop.fail_next = 1
        failing = asyncio.ensure_future(shop.order_async(3, gate, go, request_id="o-1"))
        await gate.wait()                   # the order is inside its method now, suspended
        beside = asyncio.ensure_future(shop.restock_async(5))
        await asyncio.sleep(0)              # one loop turn: the call beside arrives first
        assert shop.state["restocked"] == 0  # ... and is held at the door: it waits
        go.set()
        got = await asyncio.gather(failing, return_exceptions=True)
        return got[0], await beside

    failed, restocked = asyncio.run(scenario())
    assert isinstance(failed, ConnectionError)
    assert restocked == 15                  # ran after the rollback, on the whole state
    assert shop.state == {"stock": 15, "orders": [], "restocked": 5}
    assert asyncio.run(shop.order_async(3, request_id="o-1")) == 12
    assert shop.state == {"stock": 12, "orders": [3], "restocked": 5}


def test_a_raising_call_without_a_request_id_is_not_rolled_back_in_policy_mode(
        tmp_path: Any) -> None:
    """What the docstring says it costs nothing for: without an id no snapshot is taken."""
    shop = _start(str(tmp_path / "store"), "shop", every_calls=5)
    shop.fail_next = 1
    with pytest.raises(ConnectionError):
        shop.order(3)
    assert shop.state["stock"] == 7


class Bank:
    """A sync deposit and a coroutine transfer that is suspended until it is let go."""

    def __init__(self) -> None:
        self.state = {"balance": 100, "log": []}
        self.fail = False           # not state: the payment network's mood
        self.inside = False         # not state: the transfer is mid-method
        self.go = False             # not state: the transfer may finish

    def deposit(self, k: int) -> int:
        self.state["balance"] += k
        self.state["log"].append(("deposit", k))
        return self.state["balance"]

    async def transfer_out(self, k: int) -> int:
        self.state["balance"] -= k
        self.state["log"].append(("transfer", k))
        self.inside = True
        while not self.go:                      # suspended mid-method (a network call)
            await asyncio.sleep(0.005)
        self.inside = False
        if self.fail:
            raise ConnectionError("network timed out")
        return self.state["balance"]

    @checkpointed.readonly
    def arm(self) -> None:
        self.fail = True

    @checkpointed.readonly
    def release(self) -> None:
        self.go = True

    @checkpointed.readonly
    def peek(self) -> dict[str, Any]:
        return {"state": self.state, "inside": self.inside}


def _bank(store: str, every_calls: int) -> Any:
    cls = checkpointed(store=store, key="bank", every_calls=every_calls)(Bank)
    obj = object.__new__(cls)
    Bank.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "bank", handle=None, node_id=None)
    return obj


@pytest.mark.parametrize("every_calls", [5, 1], ids=["every5", "exact"])
@pytest.mark.parametrize("deposit_rid", [None, "d-1"], ids=["no-id", "with-id"])
def test_a_sync_call_beside_a_call_that_runs_alone_is_refused_not_undone(
        tmp_path: Any, deposit_rid: str | None, every_calls: int) -> None:
    """repro/r1_*, r1b_* of review 19: before, the deposit returned 120 and was then undone
    by the transfer's rollback (every5: balance 100, the deposit gone - and with an id its
    resend answered 120 without applying it), or its commit took the transfer's half with
    it (exact). Now it is refused while the transfer is mid-method, and applies after."""
    bank = _bank(str(tmp_path / "store"), every_calls)
    kw = {} if deposit_rid is None else {"request_id": deposit_rid}

    async def scenario() -> None:
        bank.fail = True
        t = asyncio.ensure_future(bank.transfer_out(30, request_id="t-1"))
        while not bank.inside:
            await asyncio.sleep(0.005)
        with pytest.raises(SyncCallRefused):
            bank.deposit(50, **kw)              # runs on the loop, as Ray runs it
        bank.go = True
        with pytest.raises(ConnectionError):
            await t

    asyncio.run(scenario())
    assert bank.state == {"balance": 100, "log": []}        # the transfer rolled back
    assert bank.deposit(50, **kw) == 150                   # the refused deposit, resent
    if deposit_rid is not None:
        assert bank.deposit(50, **kw) == 150               # answered, not applied again
    assert bank.state == {"balance": 150, "log": [("deposit", 50)]}
    asyncio.run(bank.checkpoint())
    assert _bank(str(tmp_path / "store"), every_calls).state == bank.state


@pytest.mark.ray
def test_a_sync_call_beside_a_call_that_runs_alone_is_refused_on_ray(ray_local: None,
                                                                    tmp_path: Any) -> None:
    """The same on Ray, where a sync method of an async actor runs on its event loop: the
    refusal reaches the caller as ``SyncCallRefused``, and the deposit resent after the
    transfer is answered once."""
    Remote = ray.remote(concurrency_groups=checkpointed.GROUPS)(
        checkpointed(store=str(tmp_path / "store"), key="bank-ray", every_calls=5)(Bank))
    a = Remote.options(name="bank-ray").remote()
    ray.get(a.arm.remote())
    failing = a.transfer_out.remote(30, request_id="t-1")
    while not ray.get(a.peek.remote())["inside"]:
        pass                                    # polled: each peek is a round trip
    with pytest.raises(SyncCallRefused):
        ray.get(a.deposit.remote(50, request_id="d-1"), timeout=60)
    ray.get(a.release.remote())
    with pytest.raises(ConnectionError):
        ray.get(failing, timeout=120)
    assert ray.get(a.peek.remote())["state"] == {"balance": 100, "log": []}
    assert ray.get(a.deposit.remote(50, request_id="d-1"), timeout=60) == 150
    assert ray.get(a.deposit.remote(50, request_id="d-1"), timeout=60) == 150
    assert ray.get(a.peek.remote())["state"] == {"balance": 150, "log": [("deposit", 50)]}
    ray.kill(a)


class ProgressShop:
    """Commits a checkpoint half-way through its method (saving progress), then may fail."""

    def __init__(self) -> None:
        self.state = {"stock": 10, "orders": []}
        self.fail_next = 0
        self.saved = False

    def order(self, k: int, gate: Any = None) -> int:
        self.state["stock"] -= k
        self.state["orders"].append(k)
        self.checkpoint()
        self.saved = True           # not state: the checkpoint above returned
        if gate is not None:
            gate.wait()             # the slow part; the actor dies here
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("payment service timed out")
        return self.state["stock"]


def _progress_shop(store: str, **kw: Any) -> Any:
    cls = checkpointed(store=store, key="pshop", **kw)(ProgressShop)
    obj = object.__new__(cls)
    ProgressShop.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "pshop", handle=None,
                                      node_id=None)
    return obj


@pytest.mark.parametrize("policy", POLICIES, ids=["exact", "every5", "seconds", "manual"])
def test_a_raising_call_that_checkpointed_half_way_is_not_applied_twice_after_a_crash(
        tmp_path: Any, policy: dict[str, Any]) -> None:
    """repro/r9_* of review 19: memory was put back, the lease kept the half the call had
    committed (without its id); after a crash the resend applied it again (stock 4, not 7).
    Now the rolled-back state is committed too. In exactly-once mode the rollback *reloaded*
    that half (stock 7 in memory at once, 4 after the resend); a checkpoint inside its call
    is now coalesced (the call commits before it returns)."""
    store = str(tmp_path / "store")
    shop = _progress_shop(store, **policy)
    shop.fail_next = 1
    with pytest.raises(ConnectionError):
        shop.order(3, request_id="o-1")
    assert shop.state == {"stock": 10, "orders": []}
    again = _progress_shop(store, **policy)     # the actor crashed: a new incarnation
    assert again.state == {"stock": 10, "orders": []}
    assert again.order(3, request_id="o-1") == 7
    assert again.state == {"stock": 7, "orders": [3]}


@pytest.mark.parametrize("policy", POLICIES[1:], ids=["every5", "seconds", "manual"])
def test_a_call_that_died_after_checkpointing_part_of_itself_is_not_applied_twice(
        tmp_path: Any, policy: dict[str, Any]) -> None:
    """The window R9 leaves: the actor dies inside the call, after its ``self.checkpoint()``
    committed part of it. That checkpoint holds the call's id as in progress, so the resend
    to the new incarnation is refused (``ResultNotKept``), not applied on top of the half."""
    store = str(tmp_path / "store")
    shop = _progress_shop(store, **policy)
    gate = threading.Event()

    def run() -> None:
        with contextlib.suppress(Exception):  # the old incarnation is fenced when it goes on
            shop.order(3, gate, request_id="o-1")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60          # a bound on a bug; the loop ends on the flag
    while not shop.saved and time.monotonic() < deadline:
        time.sleep(0.005)
    again = _progress_shop(store, **policy)    # the actor died: a new incarnation
    assert again.state == {"stock": 7, "orders": [3]}       # the half that was committed
    with pytest.raises(ResultNotKept, match="did not end cleanly"):
        again.order(3, request_id="o-1")
    assert again.state == {"stock": 7, "orders": [3]}
    gate.set()
    t.join()


class SlowShop:
    def __init__(self) -> None:
        self.state = {"stock": 10, "views": 0}
        self.fail_next = 1

    async def order(self, k: int, started: Any = None) -> int:
        self.state["stock"] -= k
        if started is not None:
            started.set()
        while self.state["views"] == 0:         # until the other call ran beside it
            await asyncio.sleep(0.01)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("payment service timed out")
        return self.state["stock"]

    async def view(self) -> int:
        self.state["views"] += 1
        return self.state["views"]


def _slow_shop(store: str) -> Any:
    cls = checkpointed(store=store, key="slow", every_calls=5)(SlowShop)
    shop = object.__new__(cls)
    SlowShop.__init__(shop)
    shop._bp_durable = ActorDurability(shop, cls.__bp_config__, "slow", handle=None,
                                       node_id=None)
    return shop


def test_a_resend_of_a_raise_that_was_not_rolled_back_is_refused(tmp_path: Any) -> None:
    """repro/r15_* of review 19: past HOLD_S another call ran beside the failing one, so it
    is not rolled back (that would undo the other call) - but its resend under the same id
    applied its half a second time (stock 4). Now the id is recorded as not rolled back and
    the resend is refused, in this incarnation and in the next."""
    store = str(tmp_path / "store")
    shop = _slow_shop(store)

    async def scenario() -> None:
        started = asyncio.Event()
        first = asyncio.ensure_future(shop.order(3, started, request_id="o-1"))
        await started.wait()
        await shop.view()                     # held HOLD_S, then runs beside the order
        with pytest.raises(ConnectionError):
            await first
        with pytest.raises(ResultNotKept, match="could not be rolled back"):
            await shop.order(3, request_id="o-1")
        await shop.checkpoint()

    asyncio.run(scenario())
    assert shop.state == {"stock": 7, "views": 1}       # one order's half, the view kept
    again = _slow_shop(store)
    assert again.state == {"stock": 7, "views": 1}
    with pytest.raises(ResultNotKept):
        asyncio.run(again.order(3, request_id="o-1"))
