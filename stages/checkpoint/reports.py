"""What a checkpoint and a restore report: :class:`CheckpointInfo`, :class:`RestoreReport`.

Frozen values describing one committed generation (from its header) and one restore
(which generation came back, and which newer ones were skipped and why). They cross Ray
(``StageActor.checkpoint`` returns ``CheckpointInfo.to_dict()``) and are shown by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadMagicError, CheckpointCorrupt, TornHeaderError, UnsupportedFormatError
from .format import Header
from .incremental import WriteStats

__all__ = ["CheckpointInfo", "RestoreReport", "restore_failure"]


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One committed checkpoint generation, as its header describes it.

    Attributes:
        lease_id: the lease holding it.
        name: the lease's name (the stage id).
        generation: increases by one per checkpoint attempt on the lease (first is 1).
        step: the caller's step number (e.g. the pipeline-level checkpoint step).
        data_length: bytes of the serialized payload (before compression).
        stored_bytes: bytes the payload occupies on the lease after compression.
        blocks: physical blocks the generation occupies (data + spilled map blocks).
        codec: "pickle" or "msgpack".
        compression: "none", "zstd" or "auto" (the setting it was written with).
        created_at: wall-clock time the checkpoint started.
        duration_s: seconds from start to the header write (serialize + data + flush).
        meta: the small JSON dict given to ``checkpoint(meta=...)``.
        depth: incremental depth: 0 for a full checkpoint, else the incrementals since it.
        chunks_written: chunks this commit wrote (``None`` when not reported by a commit).
        chunks_reused: chunks it shares with an older generation (not rewritten).
        chunks_visited: chunks whose bytes the commit read (to hash, compare or encode);
            keyed state's clean groups are reused without being visited.
        bytes_written: bytes the commit handed to the store (blocks of data, spilled map,
            erased slots and the header).
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
    depth: int = 0
    # How the commit went, not what the generation is: not compared.
    chunks_written: int | None = field(default=None, compare=False)
    chunks_reused: int | None = field(default=None, compare=False)
    bytes_written: int | None = field(default=None, compare=False)
    chunks_visited: int | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["meta"] = dict(self.meta)
        return d

    @classmethod
    def from_header(cls, h: Header, lease_id: str, name: str, blocks: int,
                    stats: WriteStats | None = None) -> CheckpointInfo:
        """From a header; ``stats`` (the commit's own counts) only right after a commit."""
        return cls(lease_id=lease_id, name=name, generation=h.generation, step=h.step,
                   data_length=h.data_length, stored_bytes=h.stored_bytes, blocks=blocks,
                   codec=h.codec, compression=h.compression, created_at=h.created_at,
                   duration_s=h.duration_s, meta=dict(h.meta), depth=h.depth,
                   chunks_written=None if stats is None else stats.chunks_written,
                   chunks_reused=None if stats is None else stats.chunks_reused,
                   chunks_visited=None if stats is None else stats.chunks_visited,
                   bytes_written=None if stats is None else stats.bytes_written)


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What ``restore`` restored and what it had to skip.

    Attributes:
        generation: the generation restored.
        step: its step.
        meta: its metadata.
        info: its full description.
        skipped: ``((generation, reason), ...)`` of every generation that failed verification
            (newest first), and of unreadable header slots (generation None).
    """

    generation: int
    step: int
    meta: Mapping[str, Any]
    info: CheckpointInfo
    skipped: tuple[tuple[int | None, str], ...] = ()


def restore_failure(where: str, newest_failed: CheckpointCorrupt | None,
                    slot_errors: Sequence[CheckpointCorrupt],
                    skipped: tuple[tuple[int | None, str], ...]) -> CheckpointCorrupt:
    """The error ``restore`` raises when no generation verifies: the most informative one.

    In order (``docs/FORMAT.md`` 2.7, step 5): a header of a newer format version (the
    lease is not damaged, it needs a newer blockpoint - whatever else failed); else the
    newest candidate generation that failed; else the first slot, in slot order, that
    failed for damage; a slot that is not a header (bad magic) only after those, and a torn
    header (an interrupted commit, no data lost) last. Its type and context are the chosen
    error's; ``skipped`` lists every failure.
    """
    def rank(e: CheckpointCorrupt) -> int:
        return 2 if isinstance(e, TornHeaderError) else 1 if isinstance(e, BadMagicError) else 0

    newer = [e for e in slot_errors if isinstance(e, UnsupportedFormatError)]
    if newer:
        err = newer[0]
    elif newest_failed is not None:
        err = newest_failed
    else:
        err = min(slot_errors, key=rank)  # min keeps slot order among equals
    kw: dict[str, Any] = {"lease_id": err.lease_id, "name": err.name,
                          "generation": err.generation, "block": err.block, "slot": err.slot}
    version = getattr(err, "version", None)
    if version is not None:
        kw["version"] = version
    out = type(err)(f"no checkpoint generation of {where} verifies; "
                    f"{'a newer format' if newer else 'newest failure'}: {err}", **kw,
                    skipped=skipped)
    out.__cause__ = err  # as ``raise out from err``
    return out
