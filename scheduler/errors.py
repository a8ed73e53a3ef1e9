"""Exceptions raised by the scheduler package.

One root, :class:`SchedulerError`, so callers (the scheduler actor, the CLI) can catch
everything this package raises with one clause. Each subclass names exactly one cause and
also inherits the builtin it is a kind of, so code that only knows the builtins
(``except KeyError``) keeps working::

    SchedulerError(Exception)
    ├── UnknownStageError(SchedulerError, KeyError)       stage id not registered
    ├── StageExistsError(SchedulerError, ValueError)      stage id registered twice
    ├── InvalidStageError(SchedulerError, ValueError)     bad stage field or work report
    ├── StaleCheckpointError(SchedulerError, ValueError)  checkpoint generation went backwards
    ├── InvalidRequestError(SchedulerError, ValueError)   malformed preemption request
    ├── SnapshotError(SchedulerError, ValueError)         registry snapshot cannot be loaded
    ├── RegistryError(SchedulerError, RuntimeError)       persisted registry unreadable/unwritable
    ├── RayUnsupportedError(SchedulerError, RuntimeError) Ray lacks an internal API we wrap
    ├── DrainRejectedError(SchedulerError, RuntimeError)  Ray refused a drain request
    ├── NoNodeAvailableError(SchedulerError, RuntimeError) no live node can take a stage
    ├── RestoreError(SchedulerError, RuntimeError)        a stage could not be recreated
    └── SchedulerUnavailableError(SchedulerError, ConnectionError)  no scheduler actor found

Every error carries its context as attributes (``stage_id``, ``generation``...), so the
actor can log or translate it without parsing the message.
"""

from __future__ import annotations

from blockstore.errors import reduce_error

__all__ = [
    "DrainRejectedError",
    "InvalidRequestError",
    "InvalidStageError",
    "NoNodeAvailableError",
    "RayUnsupportedError",
    "RegistryError",
    "RegistryKeyRequired",
    "RestoreError",
    "SchedulerError",
    "SchedulerUnavailableError",
    "SnapshotError",
    "StageExistsError",
    "StaleCheckpointError",
    "UnknownStageError",
]


class SchedulerError(Exception):
    """Root of every exception raised by :mod:`scheduler`. Picklable with its attributes
    (the actor's errors reach callers through Ray, which pickles them)."""

    __reduce__ = reduce_error


class UnknownStageError(SchedulerError, KeyError):
    """The stage id is not registered with the manager.

    Attributes:
        stage_id: The id that was looked up.
    """

    def __init__(self, stage_id: str) -> None:
        super().__init__(stage_id)
        self.stage_id = stage_id

    def __str__(self) -> str:
        # KeyError.__str__ would print only the repr of the key.
        return f"unknown stage {self.stage_id!r}"


class StageExistsError(SchedulerError, ValueError):
    """A stage with this id is already registered.

    Attributes:
        stage_id: The id that was registered twice.
    """

    def __init__(self, stage_id: str) -> None:
        super().__init__(f"stage {stage_id!r} is already registered")
        self.stage_id = stage_id


class InvalidStageError(SchedulerError, ValueError):
    """A stage field or a work report is out of range (empty id, negative amount...).

    Attributes:
        stage_id: The stage concerned (may be empty when the id itself is invalid).
        field: The name of the offending field or argument.
    """

    def __init__(self, stage_id: str, field: str, message: str) -> None:
        super().__init__(f"stage {stage_id!r}: {field}: {message}")
        self.stage_id = stage_id
        self.field = field


class StaleCheckpointError(SchedulerError, ValueError):
    """A reported checkpoint generation is not newer than the one already recorded.

    Generations only grow within a lease (a takeover keeps the numbering), so an older or
    equal generation is a late or duplicated notification; the recorded state is kept.

    Attributes:
        stage_id: The stage concerned.
        generation: The generation that was reported.
        current: The generation already recorded.
    """

    def __init__(self, stage_id: str, generation: int, current: int) -> None:
        super().__init__(
            f"stage {stage_id!r}: checkpoint generation {generation} is not newer than "
            f"the recorded generation {current}"
        )
        self.stage_id = stage_id
        self.generation = generation
        self.current = current


class InvalidRequestError(SchedulerError, ValueError):
    """A preemption request is malformed (asks for nothing, negative amount, bad count).

    Attributes:
        field: The name of the offending request field.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"preemption request: {field}: {message}")
        self.field = field


class SnapshotError(SchedulerError, ValueError):
    """A registry snapshot cannot be loaded (wrong format, version, or field).

    Attributes:
        path: Where in the snapshot the problem is, e.g. ``"stages[3].priority"``.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"registry snapshot: {path}: {message}")
        self.path = path


class RegistryError(SchedulerError, RuntimeError):
    """The scheduler's persisted registry cannot be read or written.

    Attributes:
        name: The registry lease's name.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"scheduler registry {name!r}: {message}")
        self.name = name


class RegistryKeyRequired(RegistryError):
    """Refused: the registry on a shared store without a key.

    The registry holds pickled stage specs and actor handles that the scheduler unpickles
    when it starts; on a store other machines or users can write, an unauthenticated
    registry would run whatever anyone wrote there. On a cluster, give every node a key
    file and set ``BLOCKPOINT_CHECKPOINT_KEY_FILE`` to its path in the environment Ray
    starts with (``cluster.yaml`` does; never a secret in a ``runtime_env``, which Ray shows
    in its job table - docs/OPERATIONS.md, "Keys on a cluster"), or opt out with
    ``allow_unauthenticated=True``. Nothing was read or written.
    """


class RayUnsupportedError(SchedulerError, RuntimeError):
    """The running Ray lacks an internal API the scheduler's adapter wraps.

    Attributes:
        version: The running Ray version.
        api: The missing API, e.g. ``"GcsClient.drain_node"``.
    """

    def __init__(self, version: str, api: str, message: str = "") -> None:
        super().__init__(
            f"Ray {version}: {api} is not available{': ' + message if message else ''} "
            "(blockpoint's scheduler is tested with Ray 2.60)")
        self.version = version
        self.api = api


class DrainRejectedError(SchedulerError, RuntimeError):
    """Ray's GCS refused to drain a node (e.g. an idle-termination drain of a busy node).

    Attributes:
        node_id: The node that was to be drained.
        reason: Ray's rejection message.
    """

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"drain of node {node_id} rejected by Ray: {reason}")
        self.node_id = node_id
        self.reason = reason


class NoNodeAvailableError(SchedulerError, RuntimeError):
    """No live, non-draining, non-excluded node has room for a stage.

    Attributes:
        stage_id: The stage to place.
        excluded: Node ids that were excluded.
    """

    def __init__(self, stage_id: str, excluded: frozenset[str], message: str = "") -> None:
        super().__init__(
            f"no node can take stage {stage_id!r}"
            f"{' (' + message + ')' if message else ''}; excluded: {sorted(excluded)}")
        self.stage_id = stage_id
        self.excluded = excluded


class RestoreError(SchedulerError, RuntimeError):
    """A stage could not be recreated from its spec (no spec, launch or restore failed).

    Attributes:
        stage_id: The stage.
    """

    def __init__(self, stage_id: str, message: str) -> None:
        super().__init__(f"restore of stage {stage_id!r} failed: {message}")
        self.stage_id = stage_id


class SchedulerUnavailableError(SchedulerError, ConnectionError):
    """No scheduler actor of that name runs in that namespace (or Ray is not reachable).

    Attributes:
        name: The scheduler actor's name.
        namespace: The Ray namespace searched.
    """

    def __init__(self, name: str, namespace: str | None, message: str = "") -> None:
        super().__init__(
            f"no scheduler {name!r} in namespace {namespace!r}"
            f"{': ' + message if message else ''}")
        self.name = name
        self.namespace = namespace
