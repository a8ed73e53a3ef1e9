"""Polling for tests that wait on other processes (Ray actors, the scheduler's watcher).

Not a fixture module: test files import it directly (``tests/`` is on ``sys.path`` under
pytest's default import mode). Only the driver uses it; Ray workers never import it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["thread_inside", "wait_for"]


def wait_for(cond: Callable[[], Any], *, timeout: float = 60.0, what: str = "") -> Any:
    """Return ``cond()``'s first truthy value, polling every 50 ms; fail after ``timeout``.

    The default is generous on purpose: the suite runs on a 2-core machine with one core
    busy with other work, where a Ray round trip, a watcher pass or a restore can take
    seconds. A condition that holds returns at once, so a long deadline costs nothing but
    the time a failing test takes to fail.
    """
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")


def thread_inside(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is running inside a function named ``function`` right now.

    The handshake for "it is waiting there" when the code under test has no other way to
    say so (a lock wait, a drain): poll it with :func:`wait_for`, never guess it by a delay.
    """
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False
