"""The fencing rules, in one place, applied by every backend under its own atomicity.

Each backend evaluates these pure functions while it holds whatever makes the decision
atomic with the change (a lock for memory and files, a conditional write for object stores),
so the rules are identical everywhere and tested once.
"""

from __future__ import annotations

import dataclasses
import time

from .errors import (
    LeaseExpiredError,
    LeaseHeldError,
    LeaseReleasedError,
    StaleLeaseError,
)
from .lease import LeaseInfo

__all__ = ["check_current", "next_acquire", "renewed", "released"]


def next_acquire(existing: LeaseInfo | None, *, lease_id: str, name: str, holder: str,
                 ttl: float, num_blocks: int, steal: bool, block_size: int,
                 now: float | None = None) -> LeaseInfo:
    """The record after ``holder`` acquires ``name``.

    New lease: epoch 1. Released, expired, or ``steal``: same id and blocks, epoch + 1.
    Held by anyone (the same holder included) and unexpired without ``steal``: refused.
    """
    now = time.time() if now is None else now
    if existing is None:
        return LeaseInfo(lease_id=lease_id, name=name, holder=holder, epoch=1,
                         expires_at=now + ttl, num_blocks=num_blocks, block_size=block_size,
                         created_at=now)
    if existing.is_held(now) and not steal:
        raise LeaseHeldError(
            f"lease {name!r} is held by {existing.holder!r} for another "
            f"{existing.expires_at - now:.1f}s (epoch {existing.epoch}); pass steal=True to "
            "take it over",
            holder=existing.holder, expires_at=existing.expires_at,
            lease_id=existing.lease_id, name=name, epoch=existing.epoch)
    return dataclasses.replace(existing, holder=holder, epoch=existing.epoch + 1,
                               expires_at=now + ttl)


def check_current(info: LeaseInfo, epoch: int, *, now: float | None = None,
                  allow_expired: bool = False) -> None:
    """Raise unless ``epoch`` is the current, held, unexpired epoch of ``info``."""
    if epoch != info.epoch:
        raise StaleLeaseError(
            f"lease {info.name!r} ({info.lease_id}): epoch {epoch} is stale, current epoch is "
            f"{info.epoch} (held by {info.holder!r}); the write was refused",
            current_epoch=info.epoch, lease_id=info.lease_id, name=info.name, epoch=epoch)
    if info.holder is None:
        raise LeaseReleasedError(f"lease {info.name!r} ({info.lease_id}) epoch {epoch} was "
                                 "released", lease_id=info.lease_id, name=info.name, epoch=epoch)
    now = time.time() if now is None else now
    if not allow_expired and info.expires_at <= now:
        raise LeaseExpiredError(
            f"lease {info.name!r} ({info.lease_id}) epoch {epoch} expired "
            f"{now - info.expires_at:.1f}s ago; renew it before writing",
            lease_id=info.lease_id, name=info.name, epoch=epoch)


def renewed(info: LeaseInfo, epoch: int, ttl: float, now: float | None = None) -> LeaseInfo:
    """The record after the holder of ``epoch`` renews for ``ttl``.

    An expired lease may be renewed while nobody has taken it over: its epoch is still
    current, so no other writer can exist.
    """
    now = time.time() if now is None else now
    check_current(info, epoch, now=now, allow_expired=True)
    return dataclasses.replace(info, expires_at=now + ttl)


def released(info: LeaseInfo, epoch: int) -> LeaseInfo:
    """The record after the holder of ``epoch`` releases it."""
    check_current(info, epoch, allow_expired=True)
    return dataclasses.replace(info, holder=None, expires_at=0.0)
