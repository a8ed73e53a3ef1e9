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
    └── SnapshotError(SchedulerError, ValueError)         registry snapshot cannot be loaded

Every error carries its context as attributes (``stage_id``, ``generation``...), so the
actor can log or translate it without parsing the message.
"""

from __future__ import annotations

__all__ = [
    "InvalidRequestError",
    "InvalidStageError",
    "SchedulerError",
    "SnapshotError",
    "StageExistsError",
    "StaleCheckpointError",
    "UnknownStageError",
]


class SchedulerError(Exception):
    """Root of every exception raised by :mod:`scheduler`."""


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
