"""Errors of the ``blockpoint`` command (the packages below have their own trees).

::

    CommandError                 the command cannot do what was asked; nothing was changed
    └── DemoSetupError           ``blockpoint demo`` refused its setup (store, cluster, key)

The CLI prints such an error as one line and exits with status 2.
"""

from __future__ import annotations

__all__ = ["CommandError", "DemoSetupError"]


class CommandError(Exception):
    """The root of the command's own errors."""


class DemoSetupError(CommandError, ValueError):
    """The demo cannot run as configured: a store no stage can reach, a cluster address that
    is not one, a checkpoint key missing where the store is shared or not reaching a node.

    Attributes:
        what: the setting at fault (``"store"``, ``"address"``, ``"key"``).
    """

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what
