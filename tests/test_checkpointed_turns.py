"""When a coroutine call with a request id gets to run alone (review 19, second round: R8).

In policy mode such a call runs alone (``stages/actors/turns.py``): it waits for no call to
be inside, holding new calls meanwhile. The hold gave way after ``HOLD_S`` and was not
renewed, so under a steady stream of calls that each last longer than ``HOLD_S`` the calls
kept overlapping and the request-id call ran only once the stream stopped. Now the hold is
renewed, twice as long each time, for the calls that arrive after it gave way. Here: calls
of 1.5 s sent every 0.3 s; the request-id call, sent early, completes before 30 calls sent
after it do (fails on the code before the fix: it starved for the whole stream). Without
Ray: the decorated class in this process on a real file store.

The same hold served a policy snapshot that became due while calls were inside, with the
same flaw (found while fixing R8): under that stream ``every_calls=3`` took no checkpoint
for as long as the stream lasted (30 calls in 10 s, none saved). It is renewed the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stages import checkpointed
from stages.actors.durability import ActorDurability


class Svc:
    def __init__(self) -> None:
        self.state = {"n": 0}

    async def slow(self) -> int:
        await asyncio.sleep(1.5)            # a model or network call longer than HOLD_S
        self.state["n"] += 1
        return self.state["n"]

    async def pay(self) -> int:
        self.state["n"] += 100
        return self.state["n"]


def _start(store: str, every_calls: int = 1000) -> Any:
    cls = checkpointed(store=store, key="svc", every_calls=every_calls)(Svc)
    obj = object.__new__(cls)
    Svc.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "svc", handle=None, node_id=None)
    return obj


def test_a_request_id_call_runs_under_a_stream_of_long_calls(tmp_path: Any) -> None:
    s = _start(str(tmp_path / "store"))

    async def scenario() -> tuple[bool, int, int]:
        before = [asyncio.ensure_future(s.slow()) for _ in range(3)]
        await asyncio.sleep(0.3)
        pay = asyncio.ensure_future(s.pay(request_id="pay-1"))
        after: list[asyncio.Future[int]] = []
        while not pay.done() and sum(t.done() for t in after) < 30:
            after.append(asyncio.ensure_future(s.slow()))
            await asyncio.sleep(0.3)
        starved = not pay.done()
        await asyncio.gather(pay, *before, *after)
        return starved, len(after), s.state["n"]

    starved, sent, n = asyncio.run(scenario())
    assert not starved, f"30 calls sent after pay(request_id=...) completed before it ({sent} sent)"
    assert n == 100 + 3 + sent                  # every call applied once


def test_a_due_snapshot_is_taken_under_a_stream_of_long_calls(tmp_path: Any) -> None:
    s = _start(str(tmp_path / "store"), every_calls=3)
    durable = s._bp_durable

    async def scenario() -> tuple[int, int]:
        sent: list[asyncio.Future[int]] = []
        while durable.commits == 0 and sum(t.done() for t in sent) < 30:
            sent.append(asyncio.ensure_future(s.slow()))
            await asyncio.sleep(0.3)
        commits = durable.commits
        await asyncio.gather(*sent)
        return commits, len(sent)

    commits, sent = asyncio.run(scenario())
    assert commits >= 1, f"no checkpoint while {sent} calls ran (every_calls=3)"


def test_a_sync_method_in_another_group_of_an_async_actor_is_refused(tmp_path: Any) -> None:
    """attack19 F6/F9: a sync method in another concurrency group runs on another thread,
    outside the calls' turns; refused at decoration, naming the method and the group."""
    import pytest
    import ray

    from stages import CheckpointedConfigError

    class Mixed:
        def __init__(self) -> None:
            self.state = {"n": 0}

        @ray.method(concurrency_group="io")
        def deposit(self) -> int:
            return 0

        async def pay(self) -> int:
            return 1

    with pytest.raises(CheckpointedConfigError, match=r"'deposit'.*'io'.*async def"):
        checkpointed(store=str(tmp_path / "s"), key="m", concurrency_groups={"io": 1})(Mixed)

    class Same:
        def __init__(self) -> None:
            self.state = {"n": 0}

        @ray.method(concurrency_group="io")
        def deposit(self) -> int:
            return 0

        @ray.method(concurrency_group="io")
        async def pay(self) -> int:
            return 1

    checkpointed(store=str(tmp_path / "t"), key="s", concurrency_groups={"io": 1})(Same)


def test_a_held_call_sleeps_while_nobody_is_inside() -> None:
    """The root of a loaded run's starvation of ``pay(request_id=...)`` above: a call held
    for a call waiting to run alone, arriving when nobody was inside, looped without
    awaiting (``due()``, then again) on the loop's one thread until its hold ran out (1 s),
    then went in first - the call it was held for never got to look. Now it sleeps, and the
    waiting call goes in first."""
    import threading

    from stages.actors.turns import CallTurns

    turns = CallTurns(threading.RLock())
    order: list[str] = []

    async def scenario() -> None:
        await turns.enter(lambda: None)                 # a call inside
        alone = asyncio.ensure_future(turns.enter_alone(lambda: None))
        while turns._sole_since is None:                 # the alone call is waiting
            await asyncio.sleep(0)
        turns.leave()                                   # nobody inside now

        async def held() -> None:
            await turns.enter(lambda: None)
            order.append("held")
            turns.leave()

        later = asyncio.ensure_future(held())
        await alone
        order.append("alone")
        turns.leave_alone()
        await later

    asyncio.run(scenario())
    assert order == ["alone", "held"], order
