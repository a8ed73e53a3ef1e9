"""Recovery of a pipeline's stages: relaunch the lost ones, roll every one back consistently.

(And the end of their life: :func:`stop_stages`, the one way the driver stops them.)

The pipeline driver (``stages/pipeline/pipeline.py``) calls this after a stage failure and when it
starts on an existing run. Two things happen here, each with one rule:

* **Relaunch.** A lost stage gets a new incarnation from its spec: through the pipeline's
  ``on_stage_lost`` hook (:data:`~stages.actors.hooks.StageLostHook`, e.g. the scheduler's restore)
  or, by default, :func:`~stages.actors.actor.launch_stage` on the node :func:`relaunch_node`
  chooses with the one node picker (``stages/actors/placement.py``).
* **Roll back to one step, the same on every stage.** Every stage is asked for the newest
  generation at or before the committed step ``c``. A stage whose generation of ``c`` does
  not verify restores an older one (``stages/checkpoint/state.py`` falls back to the newest generation
  that verifies), so :func:`roll_back_all` compares what each stage *reports it restored*:
  if one came back at step ``t < c``, every stage is rolled back to ``t``, and again until all
  agree. The target only decreases, so this ends - with every stage on the same step, or
  with an error (``RollbackUnavailable``, ``CheckpointCorrupt``) when no step is left that
  every stage can restore. Never a mix: the driver replays from the agreed step's source
  position (``Pipeline._fall_back`` re-opens the steps after it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from ..actors.actor import StageSpec, StageStopped
from ..actors.batches import raised_in
from ..actors.placement import NodeCapacity, pick_node
from ..errors import (
    CheckpointEncodeError,
    CheckpointFailed,
    CheckpointKeyRequired,
    PipelineError,
    StageError,
    StageProcessError,
)
from .run_driver import RunDriver
from .sink import Sink

__all__ = ["StageFailure", "alive", "discard", "get_sorted", "relaunch_node", "reopen_after",
           "restored_step", "roll_back_all", "stop_stages"]

log = logging.getLogger(__name__)

#: ``(object ref, stage id) -> result``: the pipeline's ``ray.get`` that sorts failures.
Getter = Callable[[Any, str], Any]


class StageFailure(Exception):
    """A stage call failed in a way rollback and replay can fix (the driver's own signal;
    never leaves ``Pipeline.run``).

    Attributes:
        stages: the stages suspected lost (may be empty: unknown).
        cause: what failed.
    """

    def __init__(self, stages: set[str], cause: BaseException) -> None:
        super().__init__(f"stages {sorted(stages) or '?'}: {type(cause).__name__}: {cause}")
        self.stages = stages
        self.cause = cause


def get_sorted(ref: Any, sid: str | None, *, timeout: float | None,
               actor_ids: Mapping[str, str]) -> Any:
    """``ray.get`` with a failure sorted: replayable (:class:`StageFailure`: the stage is
    lost, fenced, stopped or too slow - replace it and replay) or not (``PipelineError``: a
    stage error replay cannot fix, e.g. ``RollbackUnavailable``; ``StageProcessError``: the
    stage's own code raised, and would again; ``CheckpointKeyRequired``: the stage is
    configured so that no checkpoint of it can be written; ``CheckpointEncodeError``: its
    state cannot be encoded, and the replayed records would build the same state).

    ``actor_ids`` maps an actor id (hex) to its stage id, to name the stage an actor death
    belongs to when the call that saw it was another stage's.
    """
    try:
        return ray.get(ref, timeout=timeout)
    except (CheckpointKeyRequired, CheckpointEncodeError) as exc:  # every incarnation again
        raise _not_replayable(exc, sid) from exc
    except (CheckpointFailed, StageStopped) as exc:  # fenced, I/O, preempted: replace it
        who = getattr(exc, "stage_id", None) or sid
        raise StageFailure({who} if who else set(), exc) from exc
    except RayActorError as exc:
        who = actor_ids.get(getattr(exc, "actor_id", None) or "")
        raise StageFailure({s for s in (who or sid,) if s}, exc) from exc
    except GetTimeoutError as exc:
        raise StageFailure({sid} if sid else set(), exc) from exc
    except RayTaskError as exc:
        if isinstance(exc.cause, (CheckpointKeyRequired, CheckpointEncodeError)):
            raise _not_replayable(exc.cause, sid) from exc
        # Ray's own failure inside a call (an argument lost with its node or its owner, an
        # actor that died): replayable, not the stage's code (review 37)
        if isinstance(exc.cause, (RayActorError, CheckpointFailed, StageStopped)) or (
                isinstance(exc.cause, RayError) and not isinstance(exc.cause, RayTaskError)):
            raise StageFailure({sid} if sid else set(), exc) from exc
        if isinstance(exc.cause, StageError):  # e.g. RollbackUnavailable, CheckpointCorrupt
            raise PipelineError(f"stage {sid or '?'} cannot recover: "
                                f"{type(exc.cause).__name__}: {exc.cause}") from exc
        who = raised_in(exc.cause) or sid  # the stage that raised, named by its actor
        raise StageProcessError(f"stage {who or '?'} raised: {exc}", stage_id=who) from exc
    except RayError as exc:  # object lost with its node, owner died, ...
        raise StageFailure({sid} if sid else set(), exc) from exc


def _not_replayable(exc: CheckpointFailed, sid: str | None) -> CheckpointFailed:
    """The error itself (same class), naming the stage: not replayed, as no relaunch or
    rollback would give the stage a key or make its state encodable."""
    message = exc.args[0] if exc.args else str(exc)  # without Ray's traceback
    cls = CheckpointKeyRequired if isinstance(exc, CheckpointKeyRequired) else CheckpointEncodeError
    return cls(f"stage {sid or '?'!r}: {message}", lease_id=exc.lease_id)  # not Ray's class


def restored_step(info: Mapping[str, Any]) -> int:
    """The step a stage's state is at after a restore or rollback (``info()`` of the stage):
    that of the generation it restored, 0 for the initial state."""
    step = info.get("restored_step")
    return 0 if step is None else int(step)


def roll_back_all(handles: Mapping[str, Any], step: int, get: Getter, *,
                  first: Mapping[str, Mapping[str, Any]] | None = None,
                  options: Callable[[str, int], Mapping[str, Any]] | None = None
                  ) -> tuple[int, dict[str, Mapping[str, Any]]]:
    """Bring every stage to the same step ``<= step``: ``step`` itself when every stage can
    restore it, else the newest older step that every stage restores.

    Args:
        handles: the current incarnation of each stage.
        step: the committed step wanted.
        get: how to wait for one stage call (raises on a failed stage).
        first: ``info()`` of stages just launched at ``step`` (driver start-up): used
            instead of their first ``rollback`` call (the others are rolled back).
        options: ``(stage id, target step) -> keyword arguments`` of that stage's
            ``rollback`` call (a keyed instance's source leases); none if ``None``.

    Returns:
        ``(target, infos)``: the step every stage is now at, and each stage's ``info()``.
        ``target < step`` means a consistent fallback; the caller must replay from
        ``target``'s source position.
    """
    target = step
    infos: dict[str, Mapping[str, Any]] = dict(first or {})
    while True:
        missing = [sid for sid in handles if sid not in infos]
        if missing:
            refs = {sid: handles[sid].rollback.remote(
                target, **(options(sid, target) if options is not None else {}))
                for sid in missing}
            infos.update({sid: get(ref, sid) for sid, ref in refs.items()})
        lowest = min(restored_step(i) for i in infos.values())
        if lowest >= target:
            return target, infos
        behind = {sid: restored_step(i) for sid, i in infos.items() if restored_step(i) < target}
        log.warning("rollback to step %d: stages %s restored older steps; rolling every stage "
                    "back to step %d", target, behind, lowest)
        target = lowest
        infos = {}


def reopen_after(hold: RunDriver, sink: Sink, target: int, initial_position: Any) -> Any:
    """Forget every committed step after ``target`` (the stages fell back to it); return
    ``target``'s source position (``initial_position`` for step 0).

    Order matters for a crash in the middle: ``target``'s record is read first (a missing
    one raises ``RunNotFoundError`` and nothing is touched); then the driver's hold
    un-commits the steps after it (``RunDriver.forget_after``: the fenced status write,
    then their records, newest first), so what is left is always a prefix of committed
    steps; then the sink's output after ``target`` is discarded under the driver's token (a
    restarted driver's ``fence`` discards it too, as no record commits it any more). A
    fenced driver gets ``RunFencedError`` at the status write and changes nothing.
    """
    runs = hold.runs
    position = (runs.load_step(hold.run_id, target).source_position if target
                else initial_position)
    hold.forget_after(target)
    sink.discard_after(target, token=hold.token)
    return position


def relaunch_node(spec: StageSpec, exclude: Sequence[str],
                  placed: Mapping[str, str | None], specs: Mapping[str, StageSpec]) -> str | None:
    """Where the pipeline relaunches ``spec`` itself (no ``on_stage_lost`` hook).

    Ray's live nodes with their total resources less what the pipeline's other stages take
    on them (``placed``: stage id -> node), so the stage goes where it fits and fewest of
    ours already run; ``exclude`` (the node the stage was lost on) only when nothing else
    fits. ``None``: no node fits; the caller lets Ray choose.
    """
    reserved: dict[str, dict[str, float]] = {}
    for sid, node in placed.items():
        if node and sid != spec.stage_id and sid in specs:
            slot = reserved.setdefault(node, {})
            for name, amount in specs[sid].ray_resources().items():
                slot[name] = slot.get(name, 0.0) + amount
    views = [NodeCapacity(str(n.get("NodeID", "")), alive=bool(n.get("Alive")),
                          free={k: float(v) for k, v in (n.get("Resources") or {}).items()
                                if not k.startswith("node:")})
             for n in ray.nodes()]
    return pick_node(views, spec.ray_resources(), avoid=exclude, reserved=reserved)


def stop_stages(specs: Sequence[StageSpec], handles: Mapping[str, Any], *, timeout: float,
                unregister: bool = True) -> None:
    """Stop the pipeline's stage actors on purpose (the driver returns or fails).

    Stages stopped on purpose must not look lost: the scheduler they registered with forgets
    them first (``unregister``), or its watcher would restore them after the pipeline ended.
    A fenced driver passes ``unregister=False``: the stage ids are the new driver's now.
    Then each stage is asked to stop (at most 10 s) and killed.
    """
    for spec in specs:
        if unregister and spec.registrar is not None and spec.stage_id in handles:
            try:
                spec.registrar.unregister(spec.stage_id, timeout=timeout)
            except Exception:  # noqa: BLE001 - unknown to it already, or it is gone
                continue
    refs = []
    for h in handles.values():
        try:
            refs.append(h.stop.remote())
        except Exception:  # noqa: BLE001 - already gone
            continue
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=10)
    for h in handles.values():
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            continue


def alive(handle: Any, timeout: float) -> bool:
    """The incarnation answers its liveness probe within ``timeout`` seconds."""
    try:
        ray.get(handle.ping.remote(), timeout=timeout)
        return True
    except (RayError, GetTimeoutError):
        return False


def discard(refs: Sequence[Any]) -> None:
    """Retrieve (and ignore) results of abandoned calls that are done, so that Ray does not
    report their errors as unhandled; by the time the rollbacks returned, they ran."""
    if not refs:
        return
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - abandoned on purpose
            pass
