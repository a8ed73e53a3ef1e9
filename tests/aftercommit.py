"""A flush observer that acts once, right after a checkpoint committed and before the call's
reply leaves: the moment a kill or a lost node leaves the caller not knowing that its call
committed (the request-id tests, local and on a cluster).

Once: the first incarnation to remove the trigger file acts, so a test arms it by touching
the file and an incarnation restored afterwards runs on. Shipped to Ray workers by value
(they cannot import tests/).
"""

from __future__ import annotations

import os
import sys

import ray.cloudpickle

__all__ = ["AfterCommitOnce"]

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class AfterCommitOnce:
    """Runs :meth:`act` after the first successful flush that finds ``trigger`` (removing it)."""

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger

    def on_flush_start(self, lease_id: str) -> None:
        pass

    def on_flush_complete(self, lease_id: str, ok: bool) -> None:
        if not ok:
            return
        try:
            os.unlink(self.trigger)
        except FileNotFoundError:
            return
        self.act()

    def act(self) -> None:
        """What happens once, between the commit and the reply."""
        raise NotImplementedError
