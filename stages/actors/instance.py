"""One instance of a parallel stage: its share of the records, its key groups, its own lease.

A stage with ``StageSpec(parallelism=N, key=...)`` runs as N :class:`~stages.actors.actor.StageActor`
instances, each from an instance spec (``StageSpec.instances()``: ``stage_id`` is
``<stage>@<i>of<N>``, the name of the instance's own lease, and ``index`` is ``i``). What
differs from a plain stage actor is here, so the actor stays one class:

* **Keyed instances** (``key`` set) own the key groups ``key_group_range(i, N, m)`` and keep
  them in a :class:`~stages.checkpoint.keyed.KeyedState` on their lease
  (:class:`KeyedIncarnation`): a record's ``process(state, record)`` gets the plain dict of
  the record's key group (it starts empty; ``initial_state()`` is not used), which counts as
  written, so a checkpoint re-serialises only the groups that saw records since the last
  one and reuses the stored chunks of the others.
* **Where a keyed instance restores from** is the pipeline's decision, not the lease's: the
  committed step's run record says which instance leases held which key groups at that step
  (``docs/FORMAT.md`` 5.3), and the driver passes the leases whose ranges meet this
  instance's (``rollback(step, sources=...)``). Its own lease alone (same layout) restores
  incrementally; leases of another layout (a rescale: a run resumed at another parallelism)
  are read, only the owned groups unpickled, and written whole to the instance's own lease
  at its first checkpoint. An instance starts empty and is always rolled back by its
  pipeline before its first record (``restored_step`` is ``None`` until then).
* **Keyless instances** keep ``{"seen": n, "state": <the stage's state>}`` on their lease
  (a plain checkpointed state): ``seen`` counts the records of the stage's input, so record
  ``j`` goes to instance ``j % N`` on every replay (``stages/actors/routing.py``).

Keyed stages are record stages with pickled, synchronous checkpoints (``StageSpec`` refuses
the rest).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from blockstore import BlockStore

from ..checkpoint.incremental import DEFAULT_FULL_EVERY
from ..checkpoint.keyed import KeyedState
from ..checkpoint.keygroups import key_group, key_group_range
from ..checkpoint.reports import CheckpointInfo
from ..checkpoint.state import CheckpointedStageState
from ..errors import CheckpointFailed, KeyGroupError, NoCheckpointError
from .batches import batch_format_of, to_records
from .incarnation import Incarnation, RollbackUnavailable
from .routing import Part, Share, merge_parts, record_key

__all__ = ["InstanceWork", "KeyedIncarnation"]


class KeyedIncarnation(Incarnation):
    """An :class:`~stages.actors.incarnation.Incarnation` whose state is the
    :class:`KeyedState` of the key groups ``groups`` of ``max_parallelism``.

    ``bind(step, sources)`` restores them from the named leases (see the module docstring);
    ``sources=None`` binds an empty state (start-up, or a rollback to step 0).
    """

    def __init__(self, store: str | BlockStore, name: str, *, groups: range,
                 max_parallelism: int, **kwargs: Any) -> None:
        self.groups = groups
        self.max_parallelism = max_parallelism
        self.ks: KeyedState | None = None
        self._reports: tuple[Any, ...] = ()
        super().__init__(store, name, dict, **kwargs)

    def _keyed_options(self) -> dict[str, Any]:
        o = self._options
        return {"retention": o.get("retention", 2), "compression": o.get("compression", "auto"),
                "allow_unauthenticated": o.get("allow_unauthenticated", False),
                "full_every": o.get("full_every", DEFAULT_FULL_EVERY),
                "observer": self._observer, "lease_id": self.lease.lease_id}

    def bind(self, max_step: int | None = None,
             sources: Sequence[str] | None = None) -> CheckpointedStageState[Any]:
        opts = self._keyed_options()
        common = {"groups": self.groups, "max_parallelism": self.max_parallelism}
        bound = {"max_step": max_step, "max_state_bytes": self._options.get("max_state_bytes")}
        try:
            if sources is None:
                ks = KeyedState(self.lease, **common, **opts)
            elif list(sources) == [self.lease.name]:
                ks = KeyedState.restore(self.lease, **common, **bound, **opts)
            else:
                readers = [self._store.open_reader(n) for n in sources]
                ks = KeyedState.restore(readers, lease=self.lease, **common, **bound, **opts)
        except NoCheckpointError:
            if max_step is not None and max_step > 0:
                raise RollbackUnavailable(
                    f"stage {self.name!r}: no checkpoint at or before step {max_step} on "
                    f"{list(sources or [])}", stage_id=self.name, step=max_step) from None
            ks = KeyedState(self.lease, **common, **opts)
        self.ks = ks
        self._reports = ks.restored_reports
        self.restored = ks.restored if len(self._reports) <= 1 else None
        self.css = ks.checkpointed
        return self.css

    def restored_summary(self) -> dict[str, Any]:
        """As :meth:`Incarnation.restored_summary`; after a restore from several leases,
        ``restored_step`` is the oldest step any of them gave (a source that fell back to an
        older generation makes the pipeline fall back with it) and ``restored_from`` is
        ``None``."""
        reports = self._reports
        if not reports:
            return {"restored_from": None, "restored_step": None, "restored_meta": None,
                    "restored_skipped": []}
        return {
            "restored_from": reports[0].generation if len(reports) == 1 else None,
            "restored_step": min(int(r.step) for r in reports),
            "restored_meta": dict(reports[0].meta or {}),
            "restored_skipped": [(g, why[:200]) for r in reports for g, why in r.skipped],
        }

    @property
    def state(self) -> Any:
        """Every key of the owned groups, as a plain dict (a shallow copy)."""
        assert self.ks is not None
        return self.ks.to_dict()

    def checkpoint(self, step: int = 0, meta: Mapping[str, Any] | None = None) -> CheckpointInfo:
        assert self.ks is not None
        with self._noting_fence():
            info = self.ks.checkpoint(step=step, meta=dict(meta or {}))
        self.last_checkpoint_at = time.time()
        return info

    def checkpoint_async(self, step: int = 0, meta: Mapping[str, Any] | None = None) -> Any:
        raise CheckpointFailed(f"stage {self.name!r}: keyed state has no asynchronous "
                               "checkpoints", lease_id=self.lease.lease_id)


class InstanceWork:
    """What an instance does with a batch: keep its records, process them, answer a Part.

    Args:
        spec: the instance spec (``index`` set; ``parallelism``, ``key``,
            ``max_parallelism`` those of its stage).
    """

    def __init__(self, spec: Any) -> None:
        self.index: int = spec.index
        self.parallelism: int = spec.parallelism
        self.key = spec.key
        self.max_parallelism: int = spec.max_parallelism
        self.groups = (key_group_range(spec.index, spec.parallelism, spec.max_parallelism)
                       if spec.key is not None else None)

    def check(self, stage: Any) -> None:
        """Refuse a batch stage (``ValueError``): instances route records one by one."""
        if batch_format_of(stage) is not None:
            raise ValueError(f"{type(stage).__name__} is a batch stage: a parallel or keyed "
                             "stage must be a record stage (process(state, record))")

    def incarnation(self, store: BlockStore, spec: Any, **kwargs: Any) -> Incarnation:
        """The instance's hold on its lease (keyed: :class:`KeyedIncarnation`)."""
        if self.groups is not None:
            opts = {k: v for k, v in kwargs.items() if k not in ("codec", "incremental")}
            opts.pop("max_step", None)  # restored by the pipeline's rollback (see above)
            return KeyedIncarnation(store, spec.stage_id, groups=self.groups,
                                    max_parallelism=self.max_parallelism, **opts)
        factory = spec.factory
        return Incarnation(store, spec.stage_id,
                           lambda: {"seen": 0, "state": factory().initial_state()}, **kwargs)

    def process(self, stage: Any, inc: Incarnation, parts: Sequence[Any]) -> tuple[Part, int]:
        """This instance's :class:`Part` of the batch ``parts`` make, and how many records
        it processed. If the stage raises, the state may hold part of the batch (the
        pipeline rolls back)."""
        process = stage.process
        if len(parts) == 1 and isinstance(parts[0], Share):
            return self._process_share(process, inc, parts[0])
        records = to_records(merge_parts(parts))
        indices: list[int] = []
        outputs: list[list[Any]] = []
        if self.groups is not None:
            ks = inc.ks  # type: ignore[attr-defined]
            lo, hi, m, key = self.groups.start, self.groups.stop, self.max_parallelism, self.key
            for j, record in enumerate(records):
                k = record_key(key, record)
                if lo <= key_group(k, m) < hi:
                    indices.append(j)
                    outputs.append(list(process(ks.group_for_write(k), record)))
        else:
            wrapper = inc.state
            seen, p, mine, state = wrapper["seen"], self.parallelism, self.index, wrapper["state"]
            for j, record in enumerate(records):
                if (seen + j) % p == mine:
                    indices.append(j)
                    outputs.append(list(process(state, record)))
            wrapper["seen"] = seen + len(records)
        return Part(len(records), tuple(indices), tuple(outputs)), len(indices)

    def _process_share(self, process: Any, inc: Incarnation, share: Share) -> tuple[Part, int]:
        """A keyed instance's own records, split by the producer (``routing.split``): each
        comes with its key group, so it is not hashed again; a share for another instance,
        or a group this instance does not own, is :class:`KeyGroupError` (a routing bug)."""
        if self.groups is None or share.index != self.index:
            raise KeyGroupError(f"a share of instance {share.index} reached instance "
                                f"{self.index} of {self.parallelism} (keyed: "
                                f"{self.groups is not None}): a routing bug")
        ks = inc.ks  # type: ignore[attr-defined]
        outputs = tuple(list(process(ks.group_at(g), record))
                        for g, record in zip(share.groups, share.records))
        return Part(share.n, share.indices, outputs), len(share.records)
