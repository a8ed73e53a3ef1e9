"""The checkpoint room: one state's crash-atomic, verified checkpoints on one lease.

The bottom room of ``stages``: it imports ``blockstore`` and ``stages.errors`` only, never
``stages.actors`` or ``stages.pipeline`` (``tests/test_public_api.py`` checks it). The bytes
it writes are specified in ``docs/FORMAT.md``.

| module          | owns |
|-----------------|------|
| `state.py`      | `CheckpointedStageState[T]`: `checkpoint()`, `restore()`, the commit protocol |
| `commit.py`     | one commit in the protocol's order: room, erase, data, map, header, give back |
| `writer.py`     | the write path: chunks, encoding in the pool, block allocation, the block map |
| `restore.py`    | the restore path: the newest generation that verifies, read and decoded |
| `reader.py`     | the read path: slots, the map, the verified payload |
| `chunkchecks.py`| the pool tasks of a payload read: CRCs, zstd, the MAC fed by the readers |
| `verify.py`     | `verify_lease`: every slot of a lease checked, nothing decoded (`blockpoint verify`) |
| `format.py`     | header, block map and slot layout (pack / unpack) |
| `codec.py`      | pickle (protocol 5, out-of-band buffers) and msgpack codecs |
| `compress.py`   | per-chunk zstandard, skipped where it does not pay |
| `mac.py`        | payload and header MACs, header authentication, key resolution |
| `incremental.py`| content hashes, which generation a commit may reuse, `full_every` |
| `compaction.py` | after a commit: shrink the tail, discard blocks no generation uses |
| `background.py` | asynchronous checkpoints: the snapshot and the background flush |
| `reports.py`    | `CheckpointInfo`, `RestoreReport` |
| `observer.py`   | the flush observer protocol and `flush_guard` |
| `policy.py`     | when to checkpoint: `CheckpointManager` and its policies |
| `keygroups.py` | key groups: the stable hash of a record key, the groups an instance owns |
| `keyed.py`      | `KeyedState`: per-key state that tracks writes; checkpoints only written key groups |
| `table.py`      | the keyed payload: one block-aligned segment per key group, the manifest |
"""

from __future__ import annotations

from .observer import CheckpointFlushObserver, flush_guard
from .keyed import KeyedState
from .policy import CheckpointManager, CheckpointPolicy, CheckpointRequest, PolicyCounters
from .reports import CheckpointInfo, RestoreReport
from .state import CheckpointedStageState
from .verify import GenerationReport, verify_lease

__all__ = [
    "CheckpointFlushObserver",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointPolicy",
    "CheckpointRequest",
    "CheckpointedStageState",
    "GenerationReport",
    "KeyedState",
    "PolicyCounters",
    "RestoreReport",
    "flush_guard",
    "verify_lease",
]
