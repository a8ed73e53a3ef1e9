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

__all__ = ["check_current", "check_free", "next_acquire", "renewed", "released"]


def check_free(info: LeaseInfo, *, now: float | None = None, margin: float = 0.0,
               hint: str = "pass steal=True to take it over") -> None:
    """Raise ``LeaseHeldError`` unless ``info`` may be taken by someone else without ``steal``.

    Free means released, or expired for more than ``margin`` seconds: the expiry was written
    from the holder's clock, so a lease that expired less than ``margin`` ago on this clock
    may still be live on a holder whose clock is behind (docs/OPERATIONS.md, "Clocks").
    """
    now = time.time() if now is None else now
    if info.holder is None or info.expires_at + margin <= now:
        return
    if info.expires_at > now:
        why = f"for another {info.expires_at - now:.1f}s"
    else:
        why = (f"expired {now - info.expires_at:.1f}s ago, within the clock margin of "
               f"{margin:.1f}s")
    raise LeaseHeldError(
        f"lease {info.name!r} is held by {info.holder!r} {why} (epoch {info.epoch}); {hint}",
        holder=info.holder, expires_at=info.expires_at,
        lease_id=info.lease_id, name=info.name, epoch=info.epoch)


def next_acquire(existing: LeaseInfo | None, *, lease_id: str, name: str, holder: str,
                 ttl: float, num_blocks: int, steal: bool, block_size: int,
                 now: float | None = None, margin: float = 0.0) -> LeaseInfo:
    """The record after ``holder`` acquires ``name``.

    New lease: epoch 1. Released, expired for more than ``margin`` seconds, or ``steal``:
    same id and blocks, epoch + 1. Otherwise (held by anyone, the same holder included):
    refused with ``LeaseHeldError``.
    """
    now = time.time() if now is None else now
    if existing is None:
        return LeaseInfo(lease_id=lease_id, name=name, holder=holder, epoch=1,
                         expires_at=now + ttl, num_blocks=num_blocks, block_size=block_size,
                         created_at=now)
    if not steal:
        check_free(existing, now=now, margin=margin)
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
