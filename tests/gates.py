"""A gate that holds a checkpoint flush open, for tests of what happens mid-flush.

A :class:`Gate` in a stage's state blocks the checkpoint's serialization (its pickling)
while a file exists, at most ``limit`` seconds: the test creates the file, starts a
checkpoint, acts while the flush is open (the stage carries ``CHECKPOINT_IN_PROGRESS``),
then removes the file to let the flush finish. Test modules that put a Gate into a stage
ship this module to workers by value (``ray.cloudpickle.register_pickle_by_value``).
"""

from __future__ import annotations

import os
import time
from typing import Any


class Gate:
    """Pickling blocks while ``path`` exists (at most ``limit`` s): holds a flush open.

    It pickles as its path string, so restored state holds a ``str`` - all tests need.
    """

    def __init__(self, path: str, limit: float = 30.0) -> None:
        self.path = path
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        end = time.time() + self.limit
        while os.path.exists(self.path) and time.time() < end:
            time.sleep(0.01)
        return (str, (self.path,))
