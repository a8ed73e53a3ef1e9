"""Why a stage must not be preempted right now.

A stage carries a *set* of reasons, not a flag: a stage can be pinned by an operator and
flushing a checkpoint at the same time, and clearing one reason must not clear the other.
The preemption manager treats any reason as a veto. Only reasons listed in
:data:`WAITABLE_REASONS` are transient enough that a preemption may wait for them to end
(a checkpoint flush ends on its own, within bounded time); the others (an operator pin, a
restore in progress) are skipped and never waited for.

The enum is extensible: add a member here (and, if it ends on its own in bounded time, to
:data:`WAITABLE_REASONS`). Values are stable strings because they are persisted in registry
snapshots and shown by the CLI.
"""

from __future__ import annotations

import enum

__all__ = ["NonPreemptibleReason", "WAITABLE_REASONS"]


class NonPreemptibleReason(str, enum.Enum):
    """A reason that forbids preempting a stage while it is set."""

    #: The stage is flushing a checkpoint; preempting it would waste the flush (and the
    #: stage's work since its last commit). Set by the flush observer's start call,
    #: cleared by its completion (or by the scheduler when the stage dies).
    CHECKPOINT_IN_PROGRESS = "checkpoint_in_progress"
    #: The stage is being restored from its checkpoint on a new node.
    RESTORING = "restoring"
    #: An operator or the pipeline pinned the stage.
    PINNED = "pinned"

    @property
    def label(self) -> str:
        """Human-readable form for plans, logs and the CLI (``"checkpoint in progress"``)."""
        return self.value.replace("_", " ")

    @property
    def waitable(self) -> bool:
        """Whether a preemption may wait for this reason to clear (see module docstring)."""
        return self in WAITABLE_REASONS

    def __str__(self) -> str:
        return self.value


#: Reasons that end on their own in bounded time, so a preemption may wait for them.
WAITABLE_REASONS: frozenset[NonPreemptibleReason] = frozenset(
    {NonPreemptibleReason.CHECKPOINT_IN_PROGRESS}
)
