"""CheckpointedStageState: a stage's state with crash-atomic, verified checkpoints on a lease.

SKELETON: the API is final (see /tmp/api_stages.md); bodies are being filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from blockstore import Lease, LeaseReader

from .observer import CheckpointFlushObserver

__all__ = ["CheckpointInfo", "CheckpointedStageState", "RestoreReport"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One committed checkpoint generation, as its header describes it.

    Attributes:
        lease_id: the lease holding it.
        name: the lease's name (the stage id).
        generation: monotonically increasing per lease (first checkpoint is 1).
        step: the caller's step number (e.g. the pipeline-level checkpoint step).
        data_length: bytes of the serialized payload (before compression).
        stored_bytes: bytes the payload occupies on the lease after compression.
        blocks: physical blocks the generation occupies (data + spilled map blocks).
        codec: "pickle" or "msgpack".
        compression: "none", "zstd" or "auto" (the setting it was written with).
        created_at: wall-clock time the checkpoint started.
        duration_s: seconds from start to commit (header written and flushed).
        meta: the small JSON dict given to ``checkpoint(meta=...)``.
    """

    lease_id: str
    name: str
    generation: int
    step: int
    data_length: int
    stored_bytes: int
    blocks: int
    codec: str
    compression: str
    created_at: float
    duration_s: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meta"] = dict(self.meta)
        return d


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What ``restore`` restored and what it had to skip.

    Attributes:
        generation: the generation restored.
        step: its step.
        meta: its metadata.
        info: its full description.
        skipped: ``((generation, reason), ...)`` of newer generations (or unreadable slots,
            generation None) that failed verification, newest first.
    """

    generation: int
    step: int
    meta: Mapping[str, Any]
    info: CheckpointInfo
    skipped: tuple[tuple[int | None, str], ...] = ()


class CheckpointedStageState(Generic[T]):
    """A stage's state bound to a lease; ``checkpoint()`` commits it crash-atomically."""

    def __init__(self, state: T, lease: Lease | LeaseReader, *, retention: int = 2,
                 codec: str = "pickle", compression: str = "auto", level: int = 3,
                 key: bytes | None = None, observer: CheckpointFlushObserver | None = None,
                 lease_id: str | None = None) -> None:
        self._state = state
        self._lease = lease
        self.restored: RestoreReport | None = None

    @classmethod
    def with_observer(cls, state: T, lease: Lease | LeaseReader, lease_id: str,
                      observer: CheckpointFlushObserver | None,
                      **options: Any) -> CheckpointedStageState[T]:
        return cls(state, lease, observer=observer, lease_id=lease_id, **options)

    @property
    def state(self) -> T:
        return self._state

    @state.setter
    def state(self, value: T) -> None:
        self._state = value

    def checkpoint(self, *, step: int = 0,
                   meta: Mapping[str, Any] | None = None) -> CheckpointInfo:
        raise NotImplementedError

    @classmethod
    def restore(cls, lease_or_reader: Lease | LeaseReader, *, key: bytes | None = None,
                observer: CheckpointFlushObserver | None = None, lease_id: str | None = None,
                **options: Any) -> CheckpointedStageState[Any]:
        raise NotImplementedError

    def generations(self) -> list[CheckpointInfo]:
        raise NotImplementedError

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        raise NotImplementedError

    def into_block_lease(self) -> Lease | LeaseReader:
        return self._lease
