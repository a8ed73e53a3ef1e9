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
authenticated (or, without a key, checksummed) document. The setting is read when it is
used - every load and save resolves it again (``docs/OPERATIONS.md``, "Keys and rotation"),
so a key set or rotated after the store was constructed is the one the next save writes
with - and the scheduler actor reads it from its own environment, so a key file named by
``BLOCKPOINT_CHECKPOINT_KEY_FILE`` on every node reaches it as it reaches stage actors
(never the key itself in a ``runtime_env``: Ray shows those in its job table -
``docs/OPERATIONS.md``, "Keys on a cluster"). On a store
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
from blockstore.keys import KeyRing, KeySetting, resolve_keys

from scheduler.errors import RegistryError, RegistryKeyRequired

__all__ = ["REGISTRY_MAGIC", "REGISTRY_VERSION", "RegistryRecord", "RegistryStore",
           "registry_name"]

log = logging.getLogger(__name__)

#: The registry's document kind (the magic of its first layout) and field version.
REGISTRY_MAGIC = b"BPSR"
REGISTRY_VERSION = 2


def registry_name(name: str, namespace: str | None) -> str:
    """The lease name of the registry of scheduler ``name`` in Ray namespace ``namespace``."""
    return f"_blockpoint/scheduler/{namespace or 'default'}/{name}"


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
        key: MAC key, ring or keys; default: the configured keys, read at every load and
            save (no MAC while none is configured).
        holder: Holder name recorded in the lease (default: host:pid:random).
        allow_unauthenticated: use a shared store without a key (see the module docstring).

    Raises:
        RegistryKeyRequired: no key, on a shared store, without ``allow_unauthenticated``
            (here, and at any later load or save that finds no key).
    """

    def __init__(self, store: BlockStore | str, name: str, *, ttl: float = 30.0,
                 key: KeySetting = None, holder: str | None = None,
                 allow_unauthenticated: bool = False) -> None:
        self._own_store = not isinstance(store, BlockStore)
        self._store: BlockStore = open_store(store) if isinstance(store, str) else store
        self.name = name
        self._ttl = ttl
        self._key_setting = key
        self._allow_unauthenticated = allow_unauthenticated
        self._holder = holder
        #: The held registry lease while open (documents over it are made per use, with
        #: the keys of that moment).
        self._lease: Lease | None = None
        try:
            self._keys()  # a malformed key or a keyless shared store fails at start-up
        except RegistryKeyRequired:
            if self._own_store:
                self._store.close()
            raise

    def _keys(self) -> KeyRing | None:
        """The key ring now (``key=``, else the environment, read again at every use).

        Raises:
            RegistryKeyRequired: none, on a shared store, without ``allow_unauthenticated``.
        """
        keys = resolve_keys(self._key_setting)
        if keys is None and not self._allow_unauthenticated and self._store.capabilities.shared:
            raise RegistryKeyRequired(self.name, (
                f"the store {self._store.url} is shared and no key is configured: put "
                "the key in a 0600 file on every node and set "
                "BLOCKPOINT_CHECKPOINT_KEY_FILE to its path where Ray starts (never the "
                "key in a runtime_env: Ray shows it in its job table; docs/OPERATIONS.md, "
                "'Keys on a cluster'), or pass allow_unauthenticated=True"))
        return keys

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> BlockStore:
        """The block store holding the registry lease."""
        return self._store

    @property
    def lease(self) -> Lease | None:
        """The held lease while open, else ``None``."""
        return self._lease

    @property
    def _newest(self) -> tuple[int] | None:
        """``(slot,)`` of the newest verified document in the open lease (for tests)."""
        slot = (None if self._lease is None
                else self._document(self._lease, self._keys()).load().slot)
        return None if slot is None else (slot,)

    def _document(self, lease: Any, keys: KeyRing | None) -> SlottedDocument:
        """The registry document over ``lease`` (held, or a reader), authenticated with
        ``keys`` (the ones configured at this use: :meth:`_keys`)."""
        return SlottedDocument(lease, kind=REGISTRY_MAGIC, version=REGISTRY_VERSION,
                               key=keys)

    def open(self) -> RegistryRecord | None:
        """Take the registry lease (fencing any previous holder) and load the newest document.

        Returns:
            The newest valid document, or ``None`` if the registry is empty.

        Raises:
            RegistryError: the store refused, or headers exist but none verifies.
        """
        if self._lease is None:
            try:
                self._lease = self._store.acquire(self.name, holder=self._holder,
                                                  ttl=self._ttl, steal=True, keepalive=True)
            except BlockStoreError as exc:
                raise RegistryError(self.name, f"cannot acquire the registry lease: {exc}") from exc
        return self.load()

    def close(self) -> None:
        """Release the lease (the documents stay). Closing twice is harmless."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
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
            RegistryKeyRequired: no key is configured now, on a shared store.
        """
        keys = self._keys()
        try:
            if self._lease is not None:
                doc = self._document(self._lease, keys)
            else:
                info = self._store.find(self.name)
                if info is None:
                    return None
                doc = self._document(self._store.open_reader(info.lease_id), keys)
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
            RegistryKeyRequired: no key is configured now, on a shared store; nothing written.
            TypeError: ``document`` is not JSON-serialisable (a ``DocumentEncodeError``).
        """
        if self._lease is None:
            raise RegistryError(self.name, "not open")
        doc = self._document(self._lease, self._keys())
        try:
            generation = doc.save(document)
        except DocumentEncodeError:
            raise
        except BlockStoreError as exc:
            raise RegistryError(self.name, f"save failed: {exc}") from exc
        return generation
