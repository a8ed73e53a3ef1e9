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
import collections
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
    CheckpointEncodeError,
    CheckpointedConfigError,
    RequestIdConflict,
    RequestIdError,
    ResultNotKept,
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

    cls = checkpointed(store=str(tmp_path / "store"), key="maker", every_calls=1)(Maker)
    obj = object.__new__(cls)
    Maker.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "maker", handle=None, node_id=None)
    with pytest.raises(CheckpointEncodeError) as err:
        obj.make()
    message = str(err.value)
    assert "the call's result cannot be recorded" in message, message
    assert "function objects cannot be encoded by the pickle codec" in message, message
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
    assert bank.deposit(5, tags=set(tags), request_id="user-42") == 105   # a resend
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
        out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                             text=True,
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


class Reporter:
    """A one-int state whose method returns 32 KiB: the recorded results are the bulk of
    every checkpoint (review 19, F6)."""

    def __init__(self) -> None:
        self.state = {"n": 0}

    def report(self, i: int) -> bytes:
        self.state["n"] += 1
        return i.to_bytes(4, "big") * (8 * 1024)


def _reporter(store: str, **kw: Any) -> Any:
    cls = checkpointed(store=store, key="rep", every_calls=1, **kw)(Reporter)
    obj = object.__new__(cls)
    Reporter.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "rep", handle=None, node_id=None)
    return obj


def test_recorded_results_are_bounded_in_bytes_and_a_dropped_one_is_refused(
        tmp_path: Any) -> None:
    """Past ``dedupe_bytes`` the oldest results are dropped, not their ids: a resend whose
    result is kept is answered, one whose result was dropped is refused with
    ``ResultNotKept`` - in this incarnation and the next - and never applied again. Before,
    every checkpoint carried all ``dedupe_window`` results (here 40 x 32 KiB)."""
    import pickle

    store = str(tmp_path / "store")
    rep = _reporter(store, dedupe_bytes=100_000)
    for i in range(1, 41):
        rep.report(i, request_id=f"r{i}")
    durable = rep._bp_durable
    assert len(durable.applied) == 40                       # every id is kept...
    assert durable.applied.kept_bytes <= 100_000            # ...the results within the budget
    assert len(pickle.dumps(durable._payload())) < 100_000 + 16_384
    assert rep.report(40, request_id="r40") == (40).to_bytes(4, "big") * (8 * 1024)
    for again in (rep, _reporter(store, dedupe_bytes=100_000)):  # and after a restart
        with pytest.raises(ResultNotKept, match="no longer kept") as err:
            again.report(1, request_id="r1")
        assert err.value.request_id == "r1"
        assert again.state == {"n": 40}                     # not applied again
        assert again.report(39, request_id="r39")[:4] == (39).to_bytes(4, "big")
    # The newest result is kept whatever its size (its call commits with it).
    tiny = _reporter(str(tmp_path / "tiny"), dedupe_bytes=0)
    tiny.report(1, request_id="a")
    tiny.report(2, request_id="b")
    assert tiny.report(2, request_id="b")[:4] == (2).to_bytes(4, "big")
    with pytest.raises(ResultNotKept):
        tiny.report(1, request_id="a")
    assert tiny.state == {"n": 2}
    with pytest.raises(CheckpointedConfigError, match="dedupe_bytes"):
        checkpointed(store=store, key="x", dedupe_bytes=-1)(Reporter)


@dataclasses.dataclass
class Order:
    """An argument class of this module, which Ray's cloudpickle sends by value (the
    module is registered so at the top): it does not pickle by reference in the actor."""

    amount: int
    tags: set[str] = dataclasses.field(default_factory=set)


Tagged = collections.namedtuple("Tagged", "amount tags")
TAGS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def _nested_values() -> list[Any]:
    """Sets inside objects other than a plain list/tuple/dict/set (review 19, F3)."""
    return [Order(5, set(TAGS)), Tagged(5, set(TAGS)), collections.Counter(TAGS),
            collections.OrderedDict([("tags", frozenset(TAGS))]), [Order(1, {t}) for t in TAGS]]


def test_a_set_inside_any_object_has_one_fingerprint_in_every_process(tmp_path: Any) -> None:
    """Review 19, F3: a true resend whose argument holds a set inside a dataclass, a
    namedtuple, a Counter or an OrderedDict has the same fingerprint under another hash seed
    (it was pickled in hash order and refused as a conflict after a restart), and is
    answered from the record by a new incarnation in another process."""
    code = (f"import sys; sys.path.insert(0, {HERE!r}); "
            "import test_checkpointed_request_ids as t; "
            "from stages.actors.records import fingerprint; "
            "print([fingerprint('deposit', (v,), {}) for v in t._nested_values()])")
    prints = set()
    for seed in ("0", "1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                             text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed,
                                  "PYTHONPATH": ROOT}, timeout=120)
        assert out.returncode == 0, out.stderr
        prints.add(out.stdout)
    assert len(prints) == 1, prints
    assert "|'" not in prints.pop()                   # every value compared, none "method only"
    store = str(tmp_path / "store")
    bank = _start(store, "bank")
    assert bank.deposit(5, tags=Order(5, set(TAGS)), request_id="o-1") == 105
    resend = (f"import sys; sys.path.insert(0, {HERE!r}); "
              "import test_checkpointed_request_ids as t; "
              f"b = t._start({store!r}, 'bank'); "
              "print(b.deposit(5, tags=t.Order(5, set(t.TAGS)), request_id='o-1'), "
              "b.state['log'])")
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", resend], check=False, capture_output=True,
                             text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed,
                                  "PYTHONPATH": ROOT}, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["105", "[5]"], out.stdout


def test_a_respelled_resend_is_answered_from_the_record(tmp_path: Any) -> None:
    """Review 19, F7: the same call spelled another way (a keyword for a position, a
    default given explicitly) is a resend, not a conflict, in this incarnation and the next;
    other values still are a conflict."""
    store = str(tmp_path / "store")
    bank = _start(store, "bank")
    assert bank.deposit(5, request_id="o-7") == 105
    assert bank.deposit(k=5, request_id="o-7") == 105
    assert bank.deposit(5, tags=None, request_id="o-7") == 105
    assert bank.deposit(5, None, request_id="o-7") == 105
    again = _start(store, "bank")
    assert again.deposit(tags=None, k=5, request_id="o-7") == 105
    with pytest.raises(RequestIdConflict, match="other arguments"):
        again.deposit(k=6, request_id="o-7")
    assert again.state == {"balance": 105, "log": [5]}


def test_a_driver_class_argument_is_compared_on_ray(ray_local: None, tmp_path: Any) -> None:
    """Review 19, F4: an argument whose class Ray sends by value (a dataclass of the
    driver's script or of this module) does not pickle in the actor; its fingerprint fell
    back to the method only, and a request id reused with other arguments was answered
    with the first call's result, its own effect dropped. Now it is refused."""

    @ray.remote(concurrency_groups=checkpointed.GROUPS)
    @checkpointed(store=str(tmp_path / "store"), every_calls=1)
    class Till:
        def __init__(self) -> None:
            self.state = {"n": 0}

        def pay(self, order: Order) -> int:
            self.state["n"] += order.amount
            return self.state["n"]

    t = Till.options(name="till-f4").remote()
    assert ray.get(t.pay.remote(Order(5, set(TAGS)), request_id="p-1")) == 5
    assert ray.get(t.pay.remote(Order(5, set(TAGS)), request_id="p-1")) == 5   # a resend
    with pytest.raises(RequestIdConflict, match="other arguments"):
        ray.get(t.pay.remote(Order(500), request_id="p-1"))
    assert ray.get(t.pay.remote(Order(1), request_id="p-2")) == 6
    ray.kill(t)


def test_an_uncomparable_argument_is_said_and_an_old_fingerprint_compares_the_method() -> None:
    """An argument that does not reduce keeps the method-only comparison, with one warning
    naming method and type; a fingerprint recorded by the older version (no ``v2:`` tag)
    is compared by method only, so a resend after the upgrade is answered, not refused."""
    import logging
    import threading

    from stages.actors.fingerprints import fingerprint
    from stages.actors.records import REQUEST_PREFIX, AppliedCalls

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("stages.actors.fingerprints")
    handler = Keep()
    logger.addHandler(handler)
    try:
        assert fingerprint("lockstep", (threading.Lock(),), {}) == "lockstep|"
        assert fingerprint("lockstep", (threading.Lock(),), {}) == "lockstep|"
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1, records
    assert "lockstep()" in records[0].getMessage() and "lock" in records[0].getMessage()
    assert fingerprint("deposit", (5,), {}).startswith("deposit|v2:")
    applied = AppliedCalls(8, "Bank")
    key = REQUEST_PREFIX + "old"
    applied.adopt({"applied": [[key, 105]], "fingerprints": [[key, "deposit|0123abcd"]]})
    assert applied.lookup(key, fingerprint("deposit", (5,), {})) == (True, 105)
    with pytest.raises(RequestIdConflict):
        applied.lookup(key, fingerprint("withdraw", (5,), {}))


def test_call_once_resends_when_the_reply_was_lost() -> None:
    """A reply lost with the actor's node (its object lost, its owner dead, not
    reconstructable) or the node's death: the call may have been applied, exactly the case
    a request id is for - call_once resends it."""
    from stages.actors.calls import _retryable

    lost = [ray.exceptions.ObjectLostError("ab" * 14, None, ""),
            ray.exceptions.OwnerDiedError("ab" * 14, None, ""),
            ray.exceptions.ObjectReconstructionFailedError("ab" * 14),
            ray.exceptions.NodeDiedError("node died")]
    assert [_retryable(e) for e in lost] == [True] * 4
    assert not _retryable(ValueError("an answer"))


def test_a_defaultdict_argument_is_compared_with_its_factory() -> None:
    """Two defaultdicts with equal items but other factories are other calls (the factory
    decides what the method sees for a missing key); equal ones are one call."""
    from stages.actors.fingerprints import fingerprint

    def call(factory: Any) -> str:
        return fingerprint("tally", (collections.defaultdict(factory, {"a": 1}),), {})

    assert call(int) == call(int)
    assert call(int) != call(list)
    assert call(int) != fingerprint("tally", ({"a": 1},), {})


def _op(sign: int) -> Any:
    def op(self: Any, amount: int) -> int:             # both methods' functions are "op"
        self.state["n"] += sign * amount
        return self.state["n"]
    return op


def _logged(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:     # no functools.wraps, self in *args
        return fn(*args, **kwargs)
    return wrapper


class Ledger:
    def __init__(self) -> None:
        self.state = {"n": 0}

    deposit = _op(+1)
    withdraw = _op(-1)

    @_logged
    def transfer(self, amount: int, to: str) -> dict[str, Any]:
        self.state["n"] -= amount
        return {"sent": amount, "to": to}


def test_a_request_id_is_recorded_for_the_method_as_called(tmp_path: Any) -> None:
    """Review 19b, F1: methods whose functions share a ``__name__`` (made by a factory,
    wrapped without ``functools.wraps``) shared a fingerprint, so an id reused on the other
    method was answered with the first one's result; F1b: a ``(*args, **kwargs)`` wrapper
    lost every positional argument from the fingerprint. Both are refused now."""
    cls = checkpointed(store=str(tmp_path / "s"), key="l", every_calls=1)(Ledger)
    obj = object.__new__(cls)
    Ledger.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "l", handle=None, node_id=None)
    assert obj.deposit(100, request_id="o-1") == 100
    with pytest.raises(RequestIdConflict, match="withdraw"):
        obj.withdraw(100, request_id="o-1")
    assert obj.transfer(10, "alice", request_id="t-1") == {"sent": 10, "to": "alice"}
    assert obj.transfer(10, "alice", request_id="t-1") == {"sent": 10, "to": "alice"}
    with pytest.raises(RequestIdConflict, match="other arguments"):
        obj.transfer(9999, "mallory", request_id="t-1")
    assert obj.state == {"n": 90}


class _Tax:
    def __init__(self, rate: int) -> None:
        self.rate = rate

    def apply(self, x: int) -> int:
        return x + self.rate


def _rule(extra: int) -> Any:
    return lambda x: x + extra


class _Node:
    def __init__(self, parent: Any = None) -> None:
        self.parent = parent
        self.children: list[Any] = []


def _tree(label: str) -> _Node:
    root = _Node()
    root.label = label                              # type: ignore[attr-defined]
    root.children.append(_Node(root))
    return root


class _Money(dict):
    __slots__ = ("currency",)

    def __init__(self, items: dict[str, int], currency: str) -> None:
        super().__init__(items)
        self.currency = currency


def _seen(k: int, seen: list[int] = []) -> None:  # noqa: B006 - the case under test
    seen.append(k)


def test_arguments_are_compared_by_what_they_are() -> None:
    """Review 19b, F2/F9/F10/F11: closures, lambdas and bound methods compare by their code,
    cells and objects (two of one factory were one call); a value that contains itself, a
    compiled pattern and 40 levels of nesting are compared (they were "method only"); a
    dict subclass's slots count; a default the method mutates does not change its
    resend; an object ref stands as a ref, so a resend that puts its data again under
    another id is the same call. A long bytes or buffer argument stands by its digest."""
    import re

    from stages.actors.fingerprints import fingerprint

    def fp(*args: Any, fn: Any = None) -> str:
        out = fingerprint("m", args, {}, fn)
        assert out.startswith("m|v2:"), out             # compared, not "method only"
        return out

    assert fp(_rule(10)) != fp(_rule(90)) and fp(_rule(10)) == fp(_rule(10))
    assert fp(lambda x: x + 1) != fp(lambda x: x * 2)
    assert fp(_Tax(5).apply) != fp(_Tax(50).apply) and fp(_Tax(5).apply) == fp(_Tax(5).apply)
    assert fp(_tree("a")) != fp(_tree("b")) and fp(_tree("a")) == fp(_tree("a"))
    assert fp(re.compile("a+")) != fp(re.compile("b+"))
    deep_a: Any = "a"
    deep_b: Any = "b"
    for _ in range(40):
        deep_a, deep_b = [deep_a], [deep_b]
    assert fp(deep_a) != fp(deep_b)
    assert fp(_Money({"amt": 5}, "USD")) != fp(_Money({"amt": 5}, "EUR"))
    first = fingerprint("m", (1,), {}, _seen)
    _seen(1)                                             # the method mutated its default
    assert fingerprint("m", (1,), {}, _seen) == first
    assert fp([ray.ObjectRef.from_random(), 1]) == fp([ray.ObjectRef.from_random(), 1])
    assert fp([ray.ObjectRef.from_random(), 1]) != fp([ray.ObjectRef.from_random(), 2])
    big = os.urandom(1 << 20)
    assert fp(big) == fp(bytes(big)) and fp(big) != fp(big[:-1] + bytes([big[-1] ^ 1]))


class Labels:
    def __init__(self) -> None:
        self.state = {"n": 0}

    def add(self, k: int) -> tuple[int, str]:
        self.state["n"] += k
        return (self.state["n"], "ok")

    def labels(self) -> set[str]:
        self.state["n"] += 100
        return {"gold", "eu"}


def test_recorded_results_are_checked_against_the_msgpack_codec(tmp_path: Any) -> None:
    """Review 19b, F8: with ``codec="msgpack"`` a result msgpack cannot encode (a set) was
    recorded, and every later checkpoint failed (59 of 60 calls raised, each applied in
    memory); now it is refused at once, the call undone. A recorded result is answered as
    msgpack gives it back - in this incarnation as after a restore."""
    store = str(tmp_path / "s")

    def start(every: int) -> Any:
        cls = checkpointed(store=store, key=f"m{every}", every_calls=every,
                           codec="msgpack")(Labels)
        obj = object.__new__(cls)
        Labels.__init__(obj)
        obj._bp_durable = ActorDurability(obj, cls.__bp_config__, f"m{every}", handle=None,
                                          node_id=None)
        return obj

    a = start(3)
    with pytest.raises(CheckpointEncodeError, match="set objects cannot be encoded by the "
                                                    "msgpack codec"):
        a.labels(request_id="l1")
    assert a.state == {"n": 0}                                  # undone
    for i in range(6):
        a.add(1, request_id=f"add-{i}")
    assert a.checkpoint_info()["failed_checkpoints"] == 0
    b = start(1)
    assert b.add(5, request_id="o-1") == (5, "ok")              # the first answer, as returned
    assert b.add(5, request_id="o-1") == [5, "ok"]              # the record, as msgpack keeps it
    assert start(1).add(5, request_id="o-1") == [5, "ok"]       # the same after a restore
