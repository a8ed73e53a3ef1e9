"""What a stage actor tells about itself: ``info``, ``ping`` and ``registration``.

The control side of :class:`~stages.actors.actor.StageActor` (a mixin: the attributes it
reads are the actor's). :class:`~stages.actors.actor.ControlledStageActor` runs these in the
``control`` concurrency group, so they answer while a checkpoint is flushing; they read the
incarnation's counters and lease and never touch its state.
"""

from __future__ import annotations

from typing import Any

from .hooks import StageRegistration

__all__ = ["StageView"]


class StageView:
    """``info``, ``ping`` and ``registration`` of a stage actor (mixed into ``StageActor``)."""

    spec: Any
    _refused: BaseException | None
    _css: Any
    _inc: Any
    _lease: Any
    _node_id: str | None
    _records_since: int
    _records_total: int
    _pid: int
    _stopped: bool
    _aligned: bool
    _handle: Any

    def info(self) -> dict[str, Any]:
        """A snapshot: stage_id, node_id, epoch, lease_id, generation, step, meta,
        records_since_checkpoint, records_total, restored_from, restored_step,
        restored_skipped (``[(generation, reason)]`` the last restore could not use), pid,
        stopped, aligned, flushing (a checkpoint is being written right now), push_held (the
        most calls this attempt's inbox held at once, ``stages/actors/pushing.py``; ``None``
        off the push data path).

        ``generation``/``step``/``meta`` are those of the last checkpoint written or restored
        by this incarnation (``None`` if neither).

        Raises:
            CheckpointKeyRequired: this stage could never checkpoint (pickle, no key, a
                shared store): a configuration error, raised before any record is sent.
        """
        if self._refused is not None:
            raise self._refused
        last = self._css.last_checkpoint
        return {
            "stage_id": self.spec.stage_id,
            "node_id": self._node_id,
            "epoch": self._lease.epoch,
            "lease_id": self._lease.lease_id,
            "generation": None if last is None else last.generation,
            "step": None if last is None else last.step,
            "meta": None if last is None else dict(last.meta or {}),
            "records_since_checkpoint": self._records_since,
            "records_total": self._records_total,
            "last_checkpoint_at": self._inc.last_checkpoint_at,
            **{k: v for k, v in self._inc.restored_summary().items() if k != "restored_meta"},
            "pid": self._pid,
            "stopped": self._stopped,
            "aligned": self._aligned,
            "flushing": self._css.flushing,
            # the push data path: the most calls its inbox held waiting (backpressure)
            "push_held": None if getattr(self, "_inbox", None) is None else self._inbox.most,
        }

    def ping(self) -> str:
        """Liveness probe; returns the stage id."""
        return self.spec.stage_id

    def registration(self) -> StageRegistration:
        """The record sent to the scheduler."""
        last = self._css.last_checkpoint
        return StageRegistration(
            stage_id=self.spec.stage_id, actor=self._handle, node_id=self._node_id,
            priority=self.spec.priority, lease_id=self._lease.lease_id, epoch=self._lease.epoch,
            resources=dict(self.spec.resources),
            generation=None if last is None else last.generation,
            step=None if last is None else last.step, pid=self._pid, spec=self.spec)
