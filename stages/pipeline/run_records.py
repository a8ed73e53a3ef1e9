"""The values of runs: a stage's part of a committed step, a committed step, a run's status.

They are what :class:`~stages.pipeline.runs.RunStore` writes into its documents and hands back, and
what crosses from the run store to the pipeline driver, the CLI and tests: frozen values with
a ``to_dict`` / ``from_dict`` pair (canonical JSON in the documents, ``docs/FORMAT.md``), kept
apart from the store so that a reader of runs needs none of its machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CLAIMED", "FINISHED", "PAUSED", "RUNNING", "RunStatus", "RunStep", "StageCommit"]

#: The states of a run (``RunStatus.state``).
RUNNING = "running"
PAUSED = "paused"
CLAIMED = "claimed"
FINISHED = "finished"


#: The layout fields of an instance of a parallel stage (absent for a plain stage).
LAYOUT_FIELDS = ("stage", "index", "parallelism", "max_parallelism")


@dataclass(frozen=True, slots=True)
class StageCommit:
    """Where one stage's (or one instance's) part of a committed step lives.

    For an instance of a parallel stage (``StageSpec(parallelism=..., key=...)``),
    ``stage_id`` is the instance's id (its lease's name) and the layout says which:
    ``stage`` (the stage's own id), ``index`` of ``parallelism`` instances and, for a keyed
    stage, ``max_parallelism`` (so the instance held key groups
    ``key_group_range(index, parallelism, max_parallelism)`` at this step). A plain stage
    leaves them ``None`` and its record has no such keys (``docs/FORMAT.md`` 5.3).
    """

    stage_id: str
    lease_id: str | None = None
    epoch: int | None = None
    generation: int | None = None
    node_id: str | None = None
    stage: str | None = None
    index: int | None = None
    parallelism: int | None = None
    max_parallelism: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in LAYOUT_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageCommit:
        return cls(stage_id=str(d["stage_id"]), lease_id=d.get("lease_id"),
                   epoch=d.get("epoch"), generation=d.get("generation"),
                   node_id=d.get("node_id"), stage=d.get("stage"), index=d.get("index"),
                   parallelism=d.get("parallelism"), max_parallelism=d.get("max_parallelism"))


@dataclass(frozen=True, slots=True)
class RunStep:
    """One committed step of a run.

    Attributes:
        run_id, step: identity.
        committed_at: wall-clock time of the commit.
        source_position: JSON-able source position to replay from after this step.
        stages: per stage, where its checkpoint of this step is.
        in_flight: JSON-able items accepted but not yet reflected in any stage's state.
        meta: free JSON-able metadata (e.g. output counts).
        epoch: epoch of the run's control lease held by the driver that saved the step
            (``stages/pipeline/run_driver.py``); ``None`` for a step saved without a hold.
    """

    run_id: str
    step: int
    committed_at: float
    source_position: Any
    stages: tuple[StageCommit, ...] = ()
    in_flight: tuple[Any, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [s.to_dict() for s in self.stages]
        d["in_flight"] = list(self.in_flight)
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStep:
        return cls(run_id=str(d["run_id"]), step=int(d["step"]),
                   committed_at=float(d["committed_at"]), source_position=d["source_position"],
                   stages=tuple(StageCommit.from_dict(s) for s in d.get("stages", ())),
                   in_flight=tuple(d.get("in_flight", ())), meta=dict(d.get("meta", {})),
                   epoch=d.get("epoch"))

    def stage(self, stage_id: str) -> StageCommit | None:
        for s in self.stages:
            if s.stage_id == stage_id:
                return s
        return None


@dataclass(frozen=True, slots=True)
class RunStatus:
    """The control record of a run.

    Attributes:
        run_id: the run.
        state: ``running``, ``paused``, ``claimed`` or ``finished``.
        step: the step a pause refers to (the savepoint), else the last known step.
        driver: who last changed the status.
        claim_epoch: epoch of the control lease of the last claim (None if never claimed).
        resumes: how many claims completed.
        orphans_recovered: how many claims were re-armed by ``recover_orphaned``.
        updated_at: wall-clock time of the change.
        seq: write sequence number of the slot it was read from.
        meta: free metadata.
        committed_step: the run's last committed step, written by the driving driver under
            its control lease (``stages/pipeline/run_driver.py``): step records after it are not
            committed. ``None``: the run was never driven under a hold; every readable step
            record counts.
        driver_epoch: epoch of the control lease of the driver that drives (or last drove)
            the run.
    """

    run_id: str
    state: str
    step: int | None = None
    driver: str | None = None
    claim_epoch: int | None = None
    resumes: int = 0
    orphans_recovered: int = 0
    updated_at: float = 0.0
    seq: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    committed_step: int | None = None
    driver_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStatus:
        return cls(run_id=str(d["run_id"]), state=str(d["state"]), step=d.get("step"),
                   driver=d.get("driver"), claim_epoch=d.get("claim_epoch"),
                   resumes=int(d.get("resumes", 0)),
                   orphans_recovered=int(d.get("orphans_recovered", 0)),
                   updated_at=float(d.get("updated_at", 0.0)), seq=int(d.get("seq", 0)),
                   meta=dict(d.get("meta", {})), committed_step=d.get("committed_step"),
                   driver_epoch=d.get("driver_epoch"))
