"""A pipeline's parallel stages: their instances, the layout each step records, where a
keyed instance restores from.

``StageSpec(parallelism=N, key=...)`` runs as N instance actors (``StageSpec.instances()``,
``stages/actors/instance.py``; records routed as ``stages/actors/routing.py`` says). The
driver (``stages/pipeline/pipeline.py``) treats every instance as a stage of its own -
barriers go to every instance, a step commits only when every instance of every stage
checkpointed it, a lost instance is relaunched and every other rolls back - and this
module adds what is particular to instances:

* **The layout is part of each committed step.** Each instance's ``StageCommit`` in the
  step's run record carries ``stage``, ``index``, ``parallelism`` and, keyed,
  ``max_parallelism`` (:func:`layout_of`; ``docs/FORMAT.md`` 5.3). So the record says which
  lease held which key groups at that step, whatever parallelism the run has now.
* **A keyed instance restores from the leases that held its groups at the step**
  (:func:`sources_for`): those whose recorded range meets its own. At the same parallelism
  that is its own lease; at another (a run resumed with another ``parallelism``: a rescale)
  it is one or more leases of the old layout, read at the step (``max_step``), never the
  newer generations a driver wrote after it. The same rule serves start-up, a rollback, a
  lost instance's restore and a fallback to an older step (whose own record is used).
* **What may not change** (:func:`check_layout`, before any stage starts): a keyed stage's
  ``max_parallelism`` (``MaxParallelismChanged``: its key groups would be other groups);
  a keyless parallel stage's parallelism, and a stage's kind (plain, keyless, keyed)
  (``KeylessRescaleRefused``: per-instance state has nothing to redistribute by).

Old leases of a layout no longer used are not removed (``blockpoint gc`` does not know
them yet); a rescale leaves them as they were at the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..actors.actor import StageSpec
from ..checkpoint.keygroups import key_group_range
from ..errors import KeylessRescaleRefused, MaxParallelismChanged, PipelineError
from .run_records import RunStep, StageCommit

__all__ = ["check_layout", "expand", "layout_of", "sources_for"]


def expand(specs: Sequence[StageSpec]) -> list[StageSpec]:
    """Every instance spec of ``specs``, stage by stage (a plain stage is its own)."""
    out: list[StageSpec] = []
    for spec in specs:
        out.extend(spec.instances())
    return out


def layout_of(spec: StageSpec) -> dict[str, Any]:
    """The layout fields of an instance's ``StageCommit`` (empty for a plain stage)."""
    if spec.index is None:
        return {}
    return {"stage": spec.base_id, "index": spec.index, "parallelism": spec.parallelism,
            "max_parallelism": spec.max_parallelism if spec.key is not None else None}


def _entries(step: RunStep, stage_id: str) -> list[StageCommit]:
    return [c for c in step.stages
            if c.stage == stage_id or (c.stage is None and c.stage_id == stage_id)]


def _kind(c: StageCommit) -> str:
    if c.index is None:
        return "plain"
    return "keyed" if c.max_parallelism is not None else "keyless"


def _spec_kind(spec: StageSpec) -> str:
    if not spec.parallel:
        return "plain"
    return "keyed" if spec.key is not None else "keyless"


def check_layout(step: RunStep | None, specs: Sequence[StageSpec]) -> None:
    """Refuse to restore ``specs`` at ``step`` (the run's committed step, or ``None``)
    where a layout rule would be broken (see the module docstring)."""
    if step is None:
        return
    for spec in specs:
        entries = _entries(step, spec.stage_id)
        if not entries:
            continue
        kinds = {_kind(c) for c in entries}
        want = _spec_kind(spec)
        if kinds != {want}:
            raise KeylessRescaleRefused(
                f"stage {spec.stage_id!r} was {'/'.join(sorted(kinds))} at step {step.step} "
                f"and is {want} now: a stage's state cannot change kind within a run",
                stage_id=spec.stage_id, recorded="/".join(sorted(kinds)), requested=want)
        if want == "keyed":
            recorded = {c.max_parallelism for c in entries}
            if recorded != {spec.max_parallelism}:
                m = min(recorded)  # type: ignore[type-var]
                raise MaxParallelismChanged(
                    f"stage {spec.stage_id!r} has max_parallelism {spec.max_parallelism}, but "
                    f"its run recorded {m} at step {step.step}: max_parallelism is fixed for "
                    "the life of a run (its key groups would be other groups)",
                    stage_id=spec.stage_id, recorded=m, requested=spec.max_parallelism)
        elif want == "keyless":
            recorded_p = {c.parallelism for c in entries}
            if recorded_p != {spec.parallelism}:
                raise KeylessRescaleRefused(
                    f"keyless stage {spec.stage_id!r} ran at parallelism "
                    f"{sorted(recorded_p)} at step {step.step}, asked {spec.parallelism}: a "
                    "keyless stage's state is per instance and cannot be redistributed",
                    stage_id=spec.stage_id, recorded=f"parallelism={min(recorded_p)}",
                    requested=f"parallelism={spec.parallelism}")


def sources_for(spec: StageSpec, step: RunStep | None) -> list[str] | None:
    """The leases a keyed instance restores its key groups from at ``step``: those whose
    recorded range meets the instance's own (``None``: no committed step, start empty)."""
    if step is None:
        return None
    assert spec.index is not None and spec.key is not None
    m = spec.max_parallelism
    own = key_group_range(spec.index, spec.parallelism, m)
    out = []
    for c in _entries(step, spec.base_id):
        assert c.index is not None and c.parallelism is not None
        held = key_group_range(c.index, c.parallelism, m)
        if held.start < own.stop and own.start < held.stop:
            out.append(c.stage_id)
    if not out:
        raise PipelineError(f"keyed stage {spec.base_id!r} has no instance in the record of "
                            f"step {step.step}: it did not run at that step")
    return out


def split_source(graph: Any, records: list[Any], position: Any) -> list[Any]:
    """The source's batch split into one share per instance of its keyed reader
    (``graph.splits[SOURCE]``). A record without its key, or a key function that raises, is
    the reader's ``StageProcessError`` naming the batch's position (replaying fails again)."""
    from ..actors.routing import split
    from ..errors import KeyGroupError, StageProcessError
    from .graph import SOURCE

    reader = next(sid for sid in graph.order if SOURCE in graph.inputs[sid])
    try:
        return split(records, graph.splits[SOURCE])
    except KeyGroupError as exc:
        raise StageProcessError(
            f"stage {reader} (its key, for the source's batch at position {position!r}): "
            f"{exc}", stage_id=reader) from exc
    except Exception as exc:  # the stage's key function raised, as in an instance
        raise StageProcessError(
            f"stage {reader} raised (its key, for the source's batch at position "
            f"{position!r}): {type(exc).__name__}: {exc}", stage_id=reader) from exc
