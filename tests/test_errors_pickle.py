"""Every public error of every package survives pickling with its type, message and context.

Ray hands an actor's exception to the caller by pickling it; an error that does not survive
arrives as ``UnserializableException`` and callers can no longer tell a stale lease from a
missing node.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

import blockstore
import scheduler
import stages


def _errors() -> list[type[BaseException]]:
    out = []
    for pkg in (blockstore, stages, scheduler):
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                out.append(obj)
    return out


_VALUES: dict[str, Any] = {"nodes": ["n1"], "skipped": (), "stages": {"s1"}, "version": 9,
                           "supported": 1, "generation": 4, "current": 5, "epoch": 3,
                           "current_epoch": 4, "index": 7, "step": 2, "block": 1, "slot": 0}


def _build(cls: type[BaseException]) -> BaseException:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = _VALUES.get(p.name, f"{p.name}-value")
        if p.default is not inspect.Parameter.empty and p.name not in _VALUES:
            continue
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


@pytest.mark.parametrize("cls", _errors(), ids=lambda c: c.__name__)
def test_error_round_trips_through_pickle(cls: type[BaseException]) -> None:
    err = _build(cls)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err)
    assert back.args == err.args
    assert vars(back) == vars(err)


def test_there_are_errors_to_check() -> None:
    names = {c.__name__ for c in _errors()}
    assert {"StaleLeaseError", "CheckpointCorrupt", "NoNodeAvailableError"} <= names
