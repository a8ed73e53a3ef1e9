"""A gate that holds a checkpoint flush open, for tests of what happens mid-flush.

A :class:`Gate` in a stage's state blocks the checkpoint's serialization (its pickling)
while a file exists, at most ``limit`` seconds: the test holds the gate (:func:`hold`),
starts a checkpoint, waits until the flush reached the gate (:func:`entered`: the gate
writes ``<path>.entered`` when a pickling finds it closed), acts while the flush is open
(the stage carries ``CHECKPOINT_IN_PROGRESS``), then opens it (:func:`release`) to let the
flush finish. Waiting for :func:`entered` is the handshake that replaces "it has probably
started by now": the flush-start report to the scheduler is sent before anything is
serialized, so once the gate is entered the flush has begun. Test modules that put a Gate
into a stage ship this module to workers by value
(``ray.cloudpickle.register_pickle_by_value``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["Gate", "entered", "hold", "release"]

#: Seconds a held gate blocks at most (a safety net for a test that fails while holding it).
#: Longer than any test's pytest timeout (300 s), so a gate never opens by itself while a
#: test still relies on it, however loaded the machine; a hung test ends by that timeout.
DEFAULT_LIMIT_S = 600.0


def _marker(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".entered"


def hold(path: str | os.PathLike[str]) -> Path:
    """Close the gate at ``path`` (and forget an earlier entry); return the path."""
    p = Path(path)
    Path(_marker(p)).unlink(missing_ok=True)
    p.touch()
    return p


def entered(path: str | os.PathLike[str]) -> bool:
    """Whether a pickling has reached the closed gate since :func:`hold`."""
    return os.path.exists(_marker(path))


def release(path: str | os.PathLike[str]) -> None:
    """Open the gate: a pickling blocked at it goes on."""
    Path(path).unlink(missing_ok=True)


class Gate:
    """Pickling blocks while ``path`` exists (at most ``limit`` s): holds a flush open.

    It pickles as its path string, so restored state holds a ``str`` - all tests need.
    """

    def __init__(self, path: str, limit: float = DEFAULT_LIMIT_S) -> None:
        self.path = path
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        if os.path.exists(self.path):
            with open(_marker(self.path), "w"):
                pass
        end = time.time() + self.limit
        while os.path.exists(self.path) and time.time() < end:
            time.sleep(0.01)
        return (str, (self.path,))
