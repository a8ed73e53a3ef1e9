"""A call with a request id that raises leaves nothing, in every policy (review 19, F8).

Before, only ``every_calls=1`` rolled a raising call back; with ``every_calls=N``,
``every_seconds`` or manual checkpoints the half it had changed stayed, unrecorded, and a
resend under the same id applied that half a second time (stock 10 - 3 - 3 = 4, not 7).
Without Ray: the decorated class runs in this process on a real file store, as in
``tests/test_checkpointed_exact.py``; the coroutine path too, with another call arriving
while the failing one is suspended mid-method.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stages import checkpointed
from stages.actors.durability import ActorDurability


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

    async def order_async(self, k: int, gate: Any = None) -> int:
        self.state["stock"] -= k
        self.state["orders"].append(k)
        await asyncio.sleep(0.01)                       # suspended mid-method
        if gate is not None:
            gate.set()
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
        gate = asyncio.Event()
        shop.fail_next = 1
        failing = asyncio.ensure_future(shop.order_async(3, gate, request_id="o-1"))
        await asyncio.sleep(0.005)          # the order is inside its method now
        beside = asyncio.ensure_future(shop.restock_async(5))
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
