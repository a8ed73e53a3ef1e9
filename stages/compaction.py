"""Giving storage back after a commit: shrink the lease's tail, discard dropped blocks.

A lease grows when a checkpoint needs room (``stages/state.py``, step 3 of the commit
protocol) and, without this module, never shrinks: one big state left a lease of hundreds
of blocks for two live ones, and the blocks of dropped generations stayed readable on
disk. So after every commit :class:`~stages.state.CheckpointedStageState` asks
:func:`plan` what to give back, and applies it:

* **shrink** the lease to just past the last block a retained generation references - but
  not below what the *next* checkpoint of the same size would grow it to again (its worst
  case is the uncompressed size), and only when that frees more than an eighth: a state of
  steady size never resizes, a shrunken one resizes once;
* **discard** (``Lease.discard_blocks``: holes on the file store) every block below the new
  end that may hold dropped data and that no retained generation references, so dropped
  state is not readable afterwards.

Safety: only blocks no committed, retained generation references are touched, and only
after the new generation's header is durable, so a crash at any point of this leaves every
retained generation intact (at worst some dropped blocks stay until the next commit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SHRINK_SLACK", "Compaction", "plan"]

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
    discard = tuple(sorted(b for b in set(candidates) if slots <= b < size and b not in refs))
    return Compaction(min(size, num_blocks), discard)
