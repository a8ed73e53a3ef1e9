"""The scheduler's registry, persisted in the block store through a lease of its own.

The scheduler actor is detached and restartable (``max_restarts``); when Ray restarts it -
after a crash, or on another node when its node is lost - it must know again which stages
exist, where they ran, how to recreate them (their ``StageSpec``) and what it had decided.
So after every change of the registry it saves a *document* (a JSON-able dict: the
``PreemptionManager.snapshot()`` plus per-stage entries holding the pickled spec and actor
handle) here, and it loads the newest one when it starts.

Why a slotted document (``blockstore/document.py``, kind ``BPSR`` version 2) rather than a
``CheckpointedStageState``: the registry is a few kilobytes written often, by one writer,
and must stay readable even while the stage checkpoint format evolves; K header slots, a
checksum and an optional MAC are all it needs. The document's commit protocol makes every
save atomic: a crash leaves the previous registry or the new one, never a mix, and at most
one save is lost. Its byte layout is in ``docs/FORMAT.md``.

Fencing: :meth:`RegistryStore.open` acquires the lease with ``steal=True``, which bumps its
epoch, so a previous incarnation of the scheduler that is still running (a zombie on a
partitioned node) can no longer write: the store refuses its stale epoch.

Authentication: the key is resolved exactly as for stage checkpoints
(:func:`blockstore.keys.resolve_keys`: the ``key`` argument, else
``BLOCKPOINT_CHECKPOINT_KEY`` plus ``BLOCKPOINT_CHECKPOINT_OLD_KEYS``). With a key, every
header carries a MAC (keyed BLAKE3, ``blockstore/macs.py``) under the current key and a record without a MAC valid under
one of the keys is skipped; the scheduler unpickles specs and handles only from an
authenticated (or, without a key, checksummed) document. The scheduler actor reads the
setting from its own environment, so a key set through Ray's runtime environment
(``runtime_env={"env_vars": {...}}``) reaches it as it reaches stage actors. On a store
that declares itself shared (an object store, a ``shared=True`` file store) a registry
without a key is refused (:class:`~scheduler.errors.RegistryKeyRequired`) unless
``allow_unauthenticated=True``: anyone who can write such a store could otherwise plant the
pickles the scheduler loads - the same rule as for stage checkpoints
(``docs/RELIABILITY.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from blockstore import BlockStore, DocumentEncodeError, Lease, SlottedDocument, open_store
from blockstore.errors import BlockStoreError
from blockstore.keys import KeySetting, resolve_keys

from scheduler.errors import RegistryError, RegistryKeyRequired

__all__ = ["REGISTRY_MAGIC", "REGISTRY_VERSION", "RegistryRecord", "RegistryStore"]

log = logging.getLogger(__name__)

#: The registry's document kind (the magic of its first layout) and field version.
REGISTRY_MAGIC = b"BPSR"
REGISTRY_VERSION = 2


@dataclass(frozen=True, slots=True)
class RegistryRecord:
    """A loaded registry document.

    Attributes:
        generation: Its save number (grows by one per save).
        document: The JSON document as saved.
        skipped: ``(slot, reason)`` of header slots that failed verification.
    """

    generation: int
    document: dict[str, Any]
    skipped: tuple[tuple[int, str], ...] = ()


class RegistryStore:
    """Load and save the scheduler's registry document in its own lease.

    Guarantees:
        * :meth:`save` is atomic: a crash at any point leaves the previous document (or the
          new one) loadable, never a mix.
        * :meth:`load` never returns a document that fails its checksum (or, with a key,
          its MAC).
        * Only the holder of the newest epoch can save (see the module docstring).

    Use as a context manager (opens on entry, releases the lease on exit).

    Args:
        store: A store, or a path/URL for :func:`blockstore.open_store`.
        name: The registry lease's name (one per scheduler, e.g. ``"_scheduler/ns"``).
        ttl: The lease's TTL; a keepalive thread renews it while open.
        key: MAC key, ring or keys; default: the configured keys (no MAC if none).
        holder: Holder name recorded in the lease (default: host:pid:random).
        allow_unauthenticated: use a shared store without a key (see the module docstring).

    Raises:
        RegistryKeyRequired: no key, on a shared store, without ``allow_unauthenticated``.
    """

    def __init__(self, store: BlockStore | str, name: str, *, ttl: float = 30.0,
                 key: KeySetting = None, holder: str | None = None,
                 allow_unauthenticated: bool = False) -> None:
        self._own_store = not isinstance(store, BlockStore)
        self._store: BlockStore = open_store(store) if isinstance(store, str) else store
        self.name = name
        self._ttl = ttl
        self._key = resolve_keys(key)
        self._holder = holder
        self._doc: SlottedDocument | None = None
        if self._key is None and not allow_unauthenticated and self._store.capabilities.shared:
            if self._own_store:
                self._store.close()
            raise RegistryKeyRequired(name, (
                f"the store {self._store.url} is shared and no key is configured: set "
                "BLOCKPOINT_CHECKPOINT_KEY (it reaches the scheduler actor through "
                "runtime_env env_vars) or pass allow_unauthenticated=True"))

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> BlockStore:
        """The block store holding the registry lease."""
        return self._store

    @property
    def lease(self) -> Lease | None:
        """The held lease while open, else ``None``."""
        return None if self._doc is None else self._doc.lease  # type: ignore[return-value]

    @property
    def _newest(self) -> tuple[int] | None:
        """``(slot,)`` of the newest verified document in the open lease (for tests)."""
        slot = None if self._doc is None else self._doc.load().slot
        return None if slot is None else (slot,)

    def _document(self, lease: Any) -> SlottedDocument:
        return SlottedDocument(lease, kind=REGISTRY_MAGIC, version=REGISTRY_VERSION,
                               key=self._key)

    def open(self) -> RegistryRecord | None:
        """Take the registry lease (fencing any previous holder) and load the newest document.

        Returns:
            The newest valid document, or ``None`` if the registry is empty.

        Raises:
            RegistryError: the store refused, or headers exist but none verifies.
        """
        if self._doc is None:
            try:
                lease = self._store.acquire(self.name, holder=self._holder, ttl=self._ttl,
                                            steal=True, keepalive=True)
            except BlockStoreError as exc:
                raise RegistryError(self.name, f"cannot acquire the registry lease: {exc}") from exc
            self._doc = self._document(lease)
        return self.load()

    def close(self) -> None:
        """Release the lease (the documents stay). Closing twice is harmless."""
        doc, self._doc = self._doc, None
        if doc is not None:
            doc.close()
        if self._own_store:
            self._store.close()

    def __enter__(self) -> RegistryStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read

    def load(self) -> RegistryRecord | None:
        """Return the newest document that verifies, or ``None`` if none was ever saved.

        Works without holding the lease (reads need no epoch), e.g. from the CLI.

        Raises:
            RegistryError: headers were written but no record verifies.
        """
        try:
            if self._doc is not None:
                doc = self._doc
            else:
                info = self._store.find(self.name)
                if info is None:
                    return None
                doc = self._document(self._store.open_reader(info.lease_id))
            found = doc.load()
        except BlockStoreError as exc:
            raise RegistryError(self.name, f"cannot read the registry lease: {exc}") from exc
        skipped = tuple((s.slot, s.reason if s.generation is None
                         else f"generation {s.generation}: {s.reason}") for s in found.skipped)
        if found.document is None:
            if skipped:
                raise RegistryError(self.name, f"no registry record verifies: {list(skipped)}")
            return None
        if skipped:
            log.warning("registry %s: loaded generation %d, skipped %s",
                        self.name, found.generation, skipped)
        assert found.generation is not None
        return RegistryRecord(found.generation, found.document, skipped)

    # ------------------------------------------------------------------ write

    def save(self, document: dict[str, Any]) -> int:
        """Persist ``document`` atomically (the slotted document's commit protocol).

        Returns:
            The new generation.

        Raises:
            RegistryError: not open, fenced by a newer holder (``StaleLeaseError`` as the
                cause), or an I/O error; the previous document stays loadable.
            TypeError: ``document`` is not JSON-serialisable (a ``DocumentEncodeError``).
        """
        doc = self._doc
        if doc is None:
            raise RegistryError(self.name, "not open")
        try:
            generation = doc.save(document)
        except DocumentEncodeError:
            raise
        except BlockStoreError as exc:
            raise RegistryError(self.name, f"save failed: {exc}") from exc
        return generation
