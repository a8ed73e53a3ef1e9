"""The checked arguments of ``@checkpointed``: one frozen value that travels with the
decorated class to every worker.

Its own module because three others read it - the decorator that builds it
(``stages/actors/checkpointed.py``), the runtime that obeys it (``durability.py``) and the
recipe that re-creates the actor from it (``recipe.py``) - and none of them may import
another only for the type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..checkpoint.incremental import DEFAULT_FULL_EVERY
from ..checkpoint.restore import check_max_state_bytes
from .records import DEFAULT_RESULT_BYTES

if TYPE_CHECKING:
    from ..checkpoint.observer import CheckpointFlushObserver
    from .hooks import StageRegistrar

__all__ = ["CheckpointedConfig"]


@dataclass(frozen=True, slots=True)
class CheckpointedConfig:
    """The decorator's arguments, checked; travels with the class to every worker."""

    actor: str
    store: str
    attrs: tuple[str, ...]
    state_arg: str | tuple[str, ...]
    key: str | None
    every_calls: int | None
    every_seconds: float | None
    retention: int
    codec: str
    compression: str
    level: int
    mac_key: bytes | str | None = field(repr=False)  # never shown; never in a recipe
    registrar: StageRegistrar | None
    observer: CheckpointFlushObserver | None
    lease_ttl: float
    block_size: int | None
    priority: int
    dedupe_window: int
    checkpoint_on_exit: bool
    concurrency_groups: Mapping[str, int]
    async_checkpoint: bool = False
    incremental: bool = False
    full_every: int = DEFAULT_FULL_EVERY
    dedupe_bytes: int = DEFAULT_RESULT_BYTES
    #: The restore's bound on a generation's declared state (``None``: the default bound).
    max_state_bytes: int | None = None

    def __post_init__(self) -> None:
        check_max_state_bytes(self.max_state_bytes)  # ValueError at decoration, not at start

    def __reduce__(self) -> Any:
        """Pickled only without a key: a configuration travels by pickle only when Ray ships
        the decorated class by value (into its GCS) or a recipe is written (``recipe.py``
        drops the key first), and no key may go either way."""
        if self.mac_key is not None:
            from ..errors import MacKeyNotShippable

            raise MacKeyNotShippable(
                f"@checkpointed(mac_key=...) of actor class {self.actor!r}: Ray is pickling "
                "the class by value (it is defined in a script, or its module is registered "
                "by value), which would write the key into Ray's GCS, readable by every "
                "client of the cluster. Put the key in a 0600 file on every node and set "
                "BLOCKPOINT_CHECKPOINT_KEY_FILE to its path (docs/OPERATIONS.md, 'Keys on a "
                "cluster'), or define the class in a module the workers import",
                actor=self.actor)
        return (_rebuild, (tuple(getattr(self, f) for f in self.__dataclass_fields__),))

    def without_key(self) -> CheckpointedConfig:
        """This configuration with ``mac_key=None`` (what a relaunch recipe carries: the
        incarnation it starts reads its key from its environment, ``recipe.py``)."""
        return replace(self, mac_key=None)

    def state_options(self) -> dict[str, Any]:
        """Keyword options for the incarnation's state (``CheckpointedStageState``'s, and the
        restore's ``max_state_bytes``: :func:`~stages.actors.incarnation.restore_or_initial`)."""
        return {"retention": self.retention, "codec": self.codec,
                "compression": self.compression, "level": self.level, "key": self.mac_key,
                "incremental": self.incremental, "full_every": self.full_every,
                "max_state_bytes": self.max_state_bytes}


def _rebuild(values: tuple[Any, ...]) -> CheckpointedConfig:
    """The reconstructor of a pickled (keyless) configuration."""
    return CheckpointedConfig(*values)
