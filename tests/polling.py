"""Polling for tests that wait on other processes (Ray actors, the scheduler's watcher).

Not a fixture module: test files import it directly (``tests/`` is on ``sys.path`` under
pytest's default import mode). Only the driver uses it; Ray workers never import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_for"]


def wait_for(cond: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Return ``cond()``'s first truthy value, polling every 50 ms; fail after ``timeout``."""
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or cond}")
