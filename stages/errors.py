"""Errors of the stages package.

One root, :class:`StageError`; each subclass names one cause, also inherits the builtin
that fits, and carries its context as attributes (lease, generation, block)::

    StageError(Exception)
    ├── CheckpointFailed(RuntimeError)     writing a checkpoint failed (fail-closed)
    │   ├── CheckpointCommitUnknown        it failed at the header write or its flush: the
    │   │                                  generation may or may not be committed
    │   ├── CheckpointKeyRequired          a pickle checkpoint on a shared store, no key
    │   ├── CheckpointEncodeError          the state cannot be encoded by its codec
    │   └── CheckpointDowngradeRefused     the lease holds a newer format version's header
    ├── NoCheckpointError(LookupError)     the lease holds no committed generation
    ├── CheckpointTooLarge(ValueError)     a generation declares more state than the restore
    │                                      may allocate (``max_state_bytes``)
    ├── CodecError(TypeError)              state the chosen codec cannot encode
    ├── KeyGroupError(ValueError)          stages.checkpoint.keygroups: a record key without a
    │   │                                  stable hash, or parallelism outside 1..max_parallelism
    │   └── KeyedStateMismatch             stages.checkpoint.keyed: a keyed restore that does not
    │                                      fit the lease (another max_parallelism, not keyed
    │                                      state, a key group held by two leases)
    ├── UntrackedWrite(RuntimeError)       stages.checkpoint.keyed: a key group changed without
    │                                      a tracked write (found by ``check_untracked``)
    ├── MacKeyNotShippable(TypeError)      ``@checkpointed(mac_key=...)`` on a class Ray would
    │                                      pickle by value into its GCS: refused, never sent
    └── CheckpointCorrupt(ValueError)      no generation (or this one) verifies
        ├── BadMagicError                  a header slot does not start with PCHK
        ├── UnsupportedFormatError         written by a newer format version
        ├── TruncatedCheckpointError       a referenced block is beyond the lease
        ├── TornHeaderError                a header write was interrupted (never committed;
        │                                  restore treats the slot as empty)
        └── CheckpointAuthError            MAC missing or wrong while a key is set

Errors of one module stay with it but hang from the same root::

    StageError
    ├── RollbackUnavailable(LookupError)   stages.actors.incarnation: no generation at or before
    │                                      the step
    ├── StageStopped(RuntimeError)         stages.actors.actor: the stage was stopped (preempted)
    ├── CheckpointedConfigError(ValueError) stages.actors.checkpointed: bad @checkpointed arguments
    ├── StateAttributeError(AttributeError) stages.actors.durability: a named state attribute is
    │                                      missing
    ├── StoreUnavailable(ConnectionError)  stages.actors.durability: the actor's store cannot be
    │                                      opened
    ├── ActorFenced(RuntimeError)          stages.actors.durability: a newer incarnation took the
    │                                      lease; this one refuses calls
    ├── RequestIdError(ValueError)         stages.actors.records: a request_id that is not a short str
    │   └── RequestIdConflict              a request_id recorded for another call (method, args)
    ├── CallNotAnswered(TimeoutError)      stages.actors.calls: call_once's deadline passed
    ├── PipelineError(RuntimeError)        the pipeline cannot go on (defined here, since
    │   │                                  stages.pipeline.pipeline and stages.pipeline.recovery both raise it)
    │   ├── StageProcessError              a stage's own code raised (not replayed forever)
    │   ├── SinkCommitError                a sink's commit raised, in the sink writer, an error
    │   │                                  that cannot travel to the driver as itself
    │   ├── MaxParallelismChanged(ValueError) a keyed stage restored with another
    │   │                                  max_parallelism than its run recorded
    │   ├── KeylessRescaleRefused(ValueError) a keyless parallel stage restored at another
    │   │                                  parallelism (its state is per instance)
    │   └── PipelineGraphError(ValueError) the stages' inputs and sinks do not make a DAG
    │                                      whose every output goes somewhere (names the stage)
    ├── SourceError                        a file source cannot replay its input (stages.pipeline
    │   │                                  .files); ``path`` names the file
    │   ├── SourceFileChanged(RuntimeError) the file under a recorded position changed or is
    │   │                                  gone, or files appeared before the position
    │   ├── SourceSchemaMismatch(TypeError) a file's schema differs from the source's
    │   └── SourceFileCorrupt(ValueError)  a file is not readable as its format
    └── RunError                           runs: in stages.pipeline.run_errors (raised by
                                           stages.pipeline.runs, run_driver and sink)
        ├── RunNotFoundError(LookupError), RunStepExistsError(FileExistsError)
        ├── RunClaimConflict, RunNotPausedError, RunClaimLost (RuntimeError)
        │   └── RunActiveError             (a RunClaimConflict) another driver drives the run
        └── RunFencedError(RuntimeError)   this driver was taken over: its commit was refused
            └── SinkFencedError            ... refused by the sink (stages.pipeline.sink)

Warnings (``warnings.warn`` categories, not errors)::

    UserWarning
    └── UnauthenticatedRestoreWarning      a pickle checkpoint restored without a key

Every error pickles with its attributes (Ray returns an actor's exception by pickling it).

``CheckpointCorrupt`` raised by ``restore`` is the error of the newest generation tried; its
``skipped`` attribute lists every generation that was tried and why it failed.
"""

from __future__ import annotations

from blockstore.errors import reduce_error

__all__ = [
    "BadMagicError",
    "CheckpointAuthError",
    "CheckpointCommitUnknown",
    "CheckpointCorrupt",
    "CheckpointDowngradeRefused",
    "CheckpointEncodeError",
    "CheckpointFailed",
    "CheckpointKeyRequired",
    "CheckpointTooLarge",
    "CodecError",
    "KeyGroupError",
    "KeyedStateMismatch",
    "KeylessRescaleRefused",
    "PipelineGraphError",
    "MacKeyNotShippable",
    "MaxParallelismChanged",
    "NoCheckpointError",
    "PipelineError",
    "SinkCommitError",
    "SourceError",
    "SourceFileChanged",
    "SourceFileCorrupt",
    "SourceSchemaMismatch",
    "StageError",
    "StageProcessError",
    "TornHeaderError",
    "TruncatedCheckpointError",
    "UnauthenticatedRestoreWarning",
    "UnsupportedFormatError",
    "UntrackedWrite",
]


class StageError(Exception):
    """Root of every error raised by :mod:`stages`. Picklable with its attributes."""

    def __str__(self) -> str:  # LookupError subclasses would otherwise repr() the message
        return str(self.args[0]) if self.args else self.__class__.__name__

    __reduce__ = reduce_error


class CheckpointFailed(StageError, RuntimeError):
    """A checkpoint could not be written; the state is NOT saved.

    The previous committed generations are intact. The original exception is ``__cause__``.

    Attributes:
        lease_id: the lease written to.
        generation: the generation that was being written (None if not yet chosen).
    """

    def __init__(self, message: str, *, lease_id: str | None = None,
                 generation: int | None = None) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.generation = generation


class CheckpointCommitUnknown(CheckpointFailed):
    """The checkpoint failed after its header write began: it may or may not be committed.

    Raised for an I/O error at the header write, or any error (a takeover included) at the
    flush after it. The state must be treated as NOT saved; a later ``restore`` may still
    return this generation (it is complete if it verifies). Callers that decide what is
    committed elsewhere (a pipeline's run record) roll back to their own commit point.
    """


class CheckpointKeyRequired(CheckpointFailed):
    """Refused: a pickle checkpoint without a key on a store that declares itself shared.

    Anyone who can write a shared store (other machines, other users) could replace an
    unauthenticated pickle checkpoint, and restoring it runs their code. Nothing was
    written. Configure a key (``BLOCKPOINT_CHECKPOINT_KEY``), use ``codec="msgpack"``, or
    opt out with ``allow_unauthenticated=True``.
    """


class CheckpointEncodeError(CheckpointFailed):
    """The state cannot be encoded by its codec (e.g. it holds a lock, a socket or an
    object msgpack refuses); nothing was written.

    The same state fails the same way on every retry and in every incarnation: a code or
    configuration error, so a pipeline fails at once naming the stage instead of replaying.
    ``__cause__`` is the original exception (what pickling raised), or the codec's
    :class:`CodecError` when the codec itself refused.
    """


class CheckpointDowngradeRefused(CheckpointFailed):
    """Refused: a header slot of the lease holds a newer format version than this code's.

    This writer can read neither that generation nor which blocks it uses, so any write -
    into its slot or any other - could destroy the newer writer's checkpoint (a downgrade
    losing data). Nothing was written. Checkpoint this lease with the newer blockpoint.

    Attributes:
        version: the format version found.
        slot: the header slot that holds it.
    """

    def __init__(self, message: str, *, version: int, slot: int | None = None,
                 lease_id: str | None = None, generation: int | None = None) -> None:
        super().__init__(message, lease_id=lease_id, generation=generation)
        self.version = version
        self.slot = slot


class UnauthenticatedRestoreWarning(UserWarning):
    """A pickle checkpoint was restored without a key (warned once per process)."""


class CheckpointTooLarge(StageError, ValueError):
    """A generation declares a state larger than the restore may allocate.

    Its header and map are consistent, but the declared payload (``data_length``) exceeds the
    restore's ``max_state_bytes`` (default for an unauthenticated header:
    :func:`stages.checkpoint.restore.default_max_state_bytes` of the lease; ``docs/FORMAT.md``
    2.7, step 3a). Nothing was allocated or read. Not a corruption
    that restore skips: an older generation would silently roll the stage back. If the state
    is genuine, restore with a larger ``max_state_bytes`` (or a key: an authenticated header
    is trusted); if not, ``max_step=`` picks an older generation.

    Attributes:
        lease_id, name: the lease; generation: the generation refused;
        data_length: the bytes it declares; limit: the bound it exceeds.
    """

    def __init__(self, message: str, *, lease_id: str | None = None, name: str | None = None,
                 generation: int | None = None, data_length: int = 0,
                 limit: int = 0) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.name = name
        self.generation = generation
        self.data_length = data_length
        self.limit = limit


class NoCheckpointError(StageError, LookupError):
    """The lease holds no committed checkpoint generation (never checkpointed, or empty).

    Attributes:
        lease_id: the lease looked at.
        name: its name.
    """

    def __init__(self, message: str, *, lease_id: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.name = name


class CodecError(StageError, TypeError):
    """The state holds something the chosen codec refuses (e.g. an object under msgpack).

    Attributes:
        codec: the codec name.
    """

    def __init__(self, message: str, *, codec: str) -> None:
        super().__init__(message)
        self.codec = codec


class KeyGroupError(StageError, ValueError):
    """A key cannot be placed in a key group (``stages/checkpoint/keygroups.py``): its type
    has no stable hash, or a parallelism / max_parallelism / group is out of range.

    Attributes:
        key_type: the refused key's type name, when a key was refused.
    """

    def __init__(self, message: str, *, key_type: str | None = None) -> None:
        super().__init__(message)
        self.key_type = key_type


class MacKeyNotShippable(StageError, TypeError):
    """``@checkpointed(mac_key=...)`` on a class that is being pickled: refused.

    Ray ships a class defined in a script (or registered by value with cloudpickle) *by
    value*, into its GCS function table, which any client of the cluster can read - the
    configuration and its ``mac_key`` with it, so whoever reads it could forge checkpoints.
    A class imported on the workers by reference runs the decorator there and is never
    pickled. Give such actors their key by ``BLOCKPOINT_CHECKPOINT_KEY_FILE`` on every node
    (docs/OPERATIONS.md, "Keys on a cluster").

    Attributes:
        actor: the decorated class's qualified name.
    """

    def __init__(self, message: str, *, actor: str) -> None:
        super().__init__(message)
        self.actor = actor
class KeyedStateMismatch(KeyGroupError):
    """A keyed restore that does not fit what the lease holds (``stages/checkpoint/keyed.py``):
    the generation was written with another ``max_parallelism`` (its key groups are other
    groups: restoring would misroute every key), it is not keyed state, or two leases given
    to one restore both hold a key group.

    Attributes:
        expected: what the restore asked (e.g. ``"max_parallelism=128"``).
        found: what the lease holds.
    """

    def __init__(self, message: str, *, expected: str | None = None,
                 found: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class UntrackedWrite(StageError, RuntimeError):
    """A key group's state changed without a tracked write (a value read by ``get`` or
    ``[]`` and mutated in place): a checkpoint would have reused its stale segment. Raised
    by ``KeyedState.checkpoint`` only with ``check_untracked=True``; nothing was written.

    Attributes:
        group: the key group.
    """

    def __init__(self, message: str, *, group: int | None = None) -> None:
        super().__init__(message)
        self.group = group


class CheckpointCorrupt(StageError, ValueError):
    """A checkpoint generation fails verification (or, from ``restore``, every one does).

    Attributes:
        lease_id: the lease.
        name: the lease name.
        generation: the generation that failed (None if its header is unreadable).
        block: the physical block that failed (None if not tied to one block).
        slot: the header slot involved (None if unknown).
        skipped: from ``restore``: ``((generation, reason), ...)`` of every generation tried.
    """

    def __init__(self, message: str, *, lease_id: str | None = None, name: str | None = None,
                 generation: int | None = None, block: int | None = None,
                 slot: int | None = None,
                 skipped: tuple[tuple[int | None, str], ...] = ()) -> None:
        super().__init__(message)
        self.lease_id = lease_id
        self.name = name
        self.generation = generation
        self.block = block
        self.slot = slot
        self.skipped = skipped


class BadMagicError(CheckpointCorrupt):
    """A non-empty header slot does not start with the magic ``PCHK``."""


class UnsupportedFormatError(CheckpointCorrupt):
    """The header was written by a newer format version than this code reads.

    Attributes:
        version: the version found.
    """

    def __init__(self, message: str, *, version: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.version = version


class TruncatedCheckpointError(CheckpointCorrupt):
    """A block the generation references lies beyond the end of the lease (lease shrunk)."""


class TornHeaderError(CheckpointCorrupt):
    """A header slot holds the start of a header whose write was cut short (its trailer is
    still zero): an interrupted commit, never a committed generation. ``restore`` treats the
    slot as empty and ``blockpoint verify`` does not count it as corruption."""


class CheckpointAuthError(CheckpointCorrupt):
    """The MAC is missing or wrong while a key is configured; nothing was unpickled."""


class PipelineError(StageError, RuntimeError):
    """The pipeline cannot go on (too many recoveries, or a failure replay cannot fix)."""


class MaxParallelismChanged(PipelineError, ValueError):
    """A run is restored with another ``max_parallelism`` for a keyed stage than the one its
    committed step recorded: the key groups would be other groups (every key misrouted), so
    the run refuses to start (``stages/pipeline/instances.py``).

    Attributes:
        stage_id: the keyed stage.
        recorded: the run's max_parallelism (fixed for the life of the run).
        requested: the spec's.
    """

    def __init__(self, message: str, *, stage_id: str | None = None,
                 recorded: int | None = None, requested: int | None = None) -> None:
        super().__init__(message)
        self.stage_id = stage_id
        self.recorded = recorded
        self.requested = requested


class KeylessRescaleRefused(PipelineError, ValueError):
    """A keyless parallel stage is restored at another parallelism than its committed step
    recorded (or a stage changed between keyed, keyless and plain): its state is per
    instance, with nothing to redistribute by.

    Attributes:
        stage_id: the stage.
        recorded: the layout its run recorded (e.g. ``"parallelism=2"``).
        requested: the spec's.
    """

    def __init__(self, message: str, *, stage_id: str | None = None,
                 recorded: str | None = None, requested: str | None = None) -> None:
        super().__init__(message)
        self.stage_id = stage_id
        self.recorded = recorded
        self.requested = requested


class PipelineGraphError(PipelineError, ValueError):
    """The stages' ``inputs`` and the sinks do not make a pipeline: an input that is no
    stage, a cycle, a stage whose output goes nowhere, a sink of an unknown stage
    (``stages/pipeline/graph.py``). Raised when the pipeline is made, before anything runs;
    the message names the stages."""


class StageProcessError(PipelineError):
    """A stage's ``process`` raised: replaying the same records would raise again.

    Attributes:
        stage_id: the stage, when known.
    """

    def __init__(self, message: str, *, stage_id: str | None = None) -> None:
        super().__init__(message)
        self.stage_id = stage_id


class SourceError(StageError):
    """A file source cannot give the records of a position (``stages/pipeline/files.py``).

    Never silent: a source that cannot replay exactly what it gave before stops the run
    with one of these, naming the file, rather than skipping or re-reading input.

    Attributes:
        path: the file concerned (or the directory, for a listing).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SourceFileChanged(SourceError, RuntimeError):
    """The file a recorded position points into is not the file it was (size or
    modification time differ), or is gone; or the files before the position are not the
    ones the position counted (a file appeared that sorts before it, or one was removed).

    Attributes:
        recorded: what the position recorded (e.g. ``"size=10 mtime_ns=..."``).
        found: what is there now (``None``: the file is gone).
    """

    def __init__(self, message: str, *, path: str | None = None, recorded: str | None = None,
                 found: str | None = None) -> None:
        super().__init__(message, path=path)
        self.recorded = recorded
        self.found = found


class SourceSchemaMismatch(SourceError, TypeError):
    """A file's schema is not the source's (the first file's, or the one given).

    Attributes:
        expected: the source's schema, as text.
        found: the file's schema, as text.
    """

    def __init__(self, message: str, *, path: str | None = None, expected: str | None = None,
                 found: str | None = None) -> None:
        super().__init__(message, path=path)
        self.expected = expected
        self.found = found


class SourceFileCorrupt(SourceError, ValueError):
    """A file cannot be read as its format (not Parquet, a truncated footer, a line that
    is not JSON).

    Attributes:
        offset: where in the file, when known (a byte offset of a JSON-lines file).
    """

    def __init__(self, message: str, *, path: str | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message, path=path)
        self.offset = offset


class SinkCommitError(PipelineError):
    """A sink's ``commit`` raised an error that could not be carried from the pipeline's sink
    writer to the driver as itself (its class cannot be rebuilt from a pickle); the message
    names its class and says what it said."""
