"""The conformance suite every block store backend must pass.

Why a suite shipped in the package: the rules of a store (fencing, expiry, padding, refusals
that change nothing) are the contract the checkpoint layer relies on, and they must hold
identically for every backend. A backend's test module is a short subclass::

    from blockstore.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, block_size):
            return MyStore(..., block_size=block_size)

``make_store`` may use ``self.tmp_path`` (a fresh directory per test). Every test opens a new
store through it, so tests never share state. The suite needs ``pytest`` (a test
dependency); importing it from production code is a mistake.

Expiry is exercised with real, short TTLs: a test waits until the wall clock has passed the
record's ``expires_at`` (no clock is mocked), so the waits are a few tens of milliseconds.

The suite is split by rule (one mixin per module, all on ``_base.ConformanceBase``), and
:class:`StoreConformance` is their sum:

| module        | rules |
|---------------|-------|
| `_base.py`    | the ``make_store`` hook, the ``store`` fixture, shared helpers, ``wait_expired`` |
| `leases.py`   | acquisition, epochs and takeover, renew, release, expiry, delete, list, stats, races |
| `blocks.py`   | vectorised writes and reads, padding, zeros, grow and shrink, a closed store |
| `refusals.py` | bad input raises a specific error and changes nothing |
"""

from __future__ import annotations

from ._base import SHORT_TTL, block_pattern, wait_expired
from .blocks import BlockConformance
from .leases import LeaseConformance
from .refusals import RefusalConformance

__all__ = ["SHORT_TTL", "StoreConformance", "block_pattern", "wait_expired"]


class StoreConformance(LeaseConformance, BlockConformance, RefusalConformance):
    """Tests every operation and rule of :class:`~blockstore.base.BlockStore`.

    Subclasses implement :meth:`make_store`; they may override ``block_size`` (bytes per block
    for the stores the suite creates, default 4096).
    """

