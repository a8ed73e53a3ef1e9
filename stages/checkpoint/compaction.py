"""Giving storage back after a commit: shrink the lease's tail, discard dropped blocks.

A lease grows when a checkpoint needs room (``stages/checkpoint/state.py``, step 3 of the commit
protocol) and, without this module, never shrinks: one big state left a lease of hundreds
of blocks for two live ones, and the blocks of dropped generations stayed readable on
disk. So after every commit :class:`~stages.checkpoint.state.CheckpointedStageState` calls
:func:`give_back`, which asks :func:`plan` (a pure function) what to give back and applies it:

* **shrink** the lease to just past the last block a retained generation references - but
  not below what the *next* checkpoint of the same size would grow it to again (its worst
  case is the uncompressed size), and only when that frees more than an eighth: a state of
  steady size never resizes, a shrunken one resizes once;
* **discard** (``Lease.discard_blocks(reuse=True)``: zeroed in place on the file store, as
  the next checkpoints write there again) every block below the new end that may hold
  dropped data and that no retained generation references, so dropped state is not
  readable afterwards.

Safety: only blocks no committed, retained generation references are touched, and only
after the new generation's header is durable, so a crash at any point of this leaves every
retained generation intact (at worst some dropped blocks stay until the next commit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from blockstore import Lease

from .writer import SlotState, target_slot

__all__ = ["SHRINK_SLACK", "Compaction", "give_back", "plan"]

log = logging.getLogger(__name__)

#: Shrink only when it frees more than this fraction of the new size.
SHRINK_SLACK = 1 / 8


@dataclass(frozen=True, slots=True)
class Compaction:
    """What to give back: the new lease length and the blocks below it to discard."""

    num_blocks: int
    discard: tuple[int, ...]


def plan(*, num_blocks: int, slots: int, referenced: Iterable[int], next_need: int,
         next_protected: int, maybe_dropped: Iterable[int] | None) -> Compaction:
    """What to give back after a commit.

    Args:
        num_blocks: the lease's length now.
        slots: K, the header slots (blocks ``0 .. K-1``, never discarded).
        referenced: every block a retained generation references (data and map blocks).
        next_need: blocks the next checkpoint grows the lease for (this one's worst case).
        next_protected: blocks the next checkpoint may not reuse (the newest K-1
            generations' blocks at or beyond K).
        maybe_dropped: blocks that may hold dropped data; ``None`` when unknown (then every
            unreferenced block below the new length is discarded).

    Returns:
        The new length (``num_blocks`` when no shrink pays) and the blocks to discard.
    """
    refs = set(referenced)
    tail = max(max(refs, default=-1) + 1, slots)
    keep = max(tail, slots + next_protected + next_need)
    size = keep if num_blocks - keep > keep * SHRINK_SLACK else num_blocks
    candidates = range(slots, size) if maybe_dropped is None else maybe_dropped
    # Set operations in C first: the Python loop sees only the blocks given back.
    discard = tuple(sorted(b for b in set(candidates).difference(refs) if slots <= b < size))
    return Compaction(min(size, num_blocks), discard)


def give_back(lease: Lease, slots: list[SlotState], retention: int, num_blocks: int,
              need: int, dropped: frozenset[int],
              maybe_dropped: set[int] | None) -> tuple[set[int] | None, int | None]:
    """Right after a commit: shrink ``lease`` and discard dropped blocks, as :func:`plan` says.

    ``slots`` is the writer's view with the new generation committed, ``dropped`` the blocks
    of the generation it replaced, ``maybe_dropped`` what may still hold dropped data from
    before (``None``: unknown). Never raises - the generation is committed already; a
    failure is logged.

    Returns:
        What may hold dropped data afterwards: an empty set, or ``None`` (unknown) after a
        failure, so that the next commit sweeps every unreferenced block; and the lease's
        size afterwards (``None``: unknown, after a failure).
    """
    if maybe_dropped is not None:
        maybe_dropped = maybe_dropped | dropped
    committed = [i for i, s in enumerate(slots) if s.committed]
    nxt = target_slot(slots)
    next_protected = set().union(*(slots[i].blocks for i in committed if i != nxt))
    todo = plan(num_blocks=num_blocks, slots=retention,
                referenced=set().union(*(slots[i].blocks for i in committed)), next_need=need,
                next_protected=len(next_protected) - len(next_protected.intersection(
                    range(retention))),
                maybe_dropped=maybe_dropped)
    try:
        if todo.num_blocks < num_blocks:
            lease.resize(todo.num_blocks)
        if todo.discard:
            # Below the kept length: room the next checkpoints write again (zeroed in place).
            lease.discard_blocks(todo.discard, reuse=True)
    except Exception as exc:  # committed already: report, and sweep at the next commit
        log.warning("lease %r: giving back unused blocks failed (%s: %s); retried at the next "
                    "checkpoint", lease.name, type(exc).__name__, exc)
        return None, None
    return set(), min(todo.num_blocks, num_blocks)
