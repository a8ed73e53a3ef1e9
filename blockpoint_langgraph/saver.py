"""``BlockpointSaver``: a LangGraph checkpointer on blockpoint storage.

Why this shape: LangGraph hands a saver small, frequent changes to one thread at a time (a
checkpoint per super-step, a task's pending writes), and resuming needs the latest
checkpoint with its writes exactly as committed. So each thread is one crash-atomic
:class:`blockstore.document.SlottedDocument` (layout in ``blockpoint_langgraph/thread.py``)
in its own lease of any block store (``blockstore.open_store``: a directory, ``file://``,
``memory://``; other backends by URL as they land): a snapshot of the thread and a log of
the changes since (``blockpoint_langgraph/storage.py``). A ``put`` or ``put_writes``
appends one checksummed (and, with a key, MACed) record to the log - one write, one
flush - and a crash at any point of it leaves the thread as before the call or as after
it, never a mix; a full log is folded into a new snapshot, crash-atomically too. Who may write a thread is the
lease's business (``blockpoint_langgraph/ownership.py``): one writer at a time, fenced by
the store. Retention keeps the newest N checkpoints per namespace (and only the blobs and
writes they use), so a thread's storage is bounded however long it runs.

Reads (``get_tuple``, ``list``) need no lease and see what any process committed. The
writer keeps the threads it holds decoded in memory, so its writes re-read nothing, and its
``get_tuple`` answers from memory once the store confirms that the thread's lease epoch is
still the one it wrote under (any other writer bumps it). Every async method runs its sync
twin in a worker thread (the store does blocking I/O).

Keys and trust (the rules of stage checkpoints, ``stages/checkpoint/state.py``): the MAC key
is resolved at every use by :func:`blockstore.keys.resolve_keys` - ``key=`` when given, else
``$BLOCKPOINT_CHECKPOINT_KEY`` (and ``$BLOCKPOINT_CHECKPOINT_OLD_KEYS``) - so Ray's runtime
env reaches a LangGraph server's workers. On a shared store (``capabilities.shared``: an
object store, a shared directory) a saver without a key refuses to read or write
(:class:`~blockpoint_langgraph.errors.ThreadKeyRequired`) unless
``allow_unauthenticated=True``: LangGraph's default serializer rebuilds whatever object a
document names, so a forged document would run its callable. Documents read without a key
are decoded by LangGraph's hardened serializer for untrusted input (``JsonPlusSerializer``
with ``pickle_fallback=False`` and only LangGraph's own safe msgpack types; others come back
as their serialized data); documents whose MAC verified use the saver's serializer.

A thread whose documents exist but do not verify is never taken for empty: a wrong key (or
a forgery, or a keyed thread read by a keyless saver) raises
:class:`~blockpoint_langgraph.errors.ThreadAuthError` and damage that leaves no verifying
document raises :class:`~blockpoint_langgraph.errors.ThreadCorruptError`, on reads and on
writes, so a write never replaces a history it could not read. (Only slots whose header
itself is unreadable - a first save torn by a crash - leave a thread empty.)

Costs: a ``put`` costs one record write and one flush (one fsync on the file store),
independent of the retained history; every ~L records (``storage.log_blocks``: 256 KiB of
log, at least 16 records) one of them also saves a snapshot, whose cost grows with the
retained history (keep ``retention`` modest for threads with large state).
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.serde.base import maybe_add_typed_methods
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

from blockstore import BlockStore, Lease, LeaseReader, MemoryStore, open_store
from blockstore.document import DocumentLoad
from blockstore.errors import LeaseNotFoundError
from blockstore.keys import KeyRing, KeySetting, resolve_keys

from . import storage
from . import thread as td
from .errors import ThreadAuthError, ThreadCorruptError, ThreadKeyRequired
from .ownership import Conflict, ThreadOwnership
from .storage import DOCUMENT_KIND, ThreadState

__all__ = ["DEFAULT_RETENTION", "DOCUMENT_KIND", "BlockpointSaver"]

#: Checkpoints kept per (thread, namespace) unless told otherwise.
DEFAULT_RETENTION = 64
_CACHED_THREADS = 256


class BlockpointSaver(BaseCheckpointSaver[int]):
    """A LangGraph ``BaseCheckpointSaver`` whose threads live in a blockpoint store.

    Guarantees:

    * Crash-safe: ``put``, ``put_writes`` and every other change commit with one write
      (a log record, or a snapshot's header); a crash (or a refused write) at any point
      leaves the thread as it was before the call, or - once the commit write landed - as
      after it. Never a mix, and never lost once the call returned (it flushed).
    * One writer per thread: writes go through this saver's lease on the thread. With
      ``on_conflict="takeover"`` a saver that writes a thread fences the previous writer,
      whose later writes raise ``StaleWriterError`` and save nothing; with ``"refuse"`` the
      second writer gets ``ThreadBusyError`` while the first one's lease runs. Every call
      that changes a thread takes it this way: ``put``, ``put_writes``, ``delete_thread``,
      ``prune``, ``delete_for_runs`` (only threads holding one of the runs) and the target
      of ``copy_thread``.
    * Bounded: the newest ``retention`` checkpoints per namespace are kept, with their
      blobs and pending writes; older ones are dropped by the ``put`` that passes the bound.
    * Verified reads: a document is returned only if its checksums (and MAC, with a key)
      verify; a damaged newest document falls back to the previous one.

    Args:
        store: a store URL or path (``blockstore.open_store``) or an open ``BlockStore``.
        block_size: block size when the store is created from a URL (64 KiB suits
            LangGraph's small documents; an existing store keeps its own).
        retention: checkpoints kept per (thread, namespace); ``None`` keeps all.
        on_conflict: ``"takeover"`` or ``"refuse"`` (see above).
        ttl: seconds this saver's hold of a thread lasts without a write.
        prefix: lease-name prefix of the threads (several apps can share one store).
        holder: holder name recorded in the leases (default: host:pid:random).
        key: MAC key for the documents (``SlottedDocument``), a ``str`` (its UTF-8 bytes),
            ``bytes`` or a ``KeyRing``; default ``$BLOCKPOINT_CHECKPOINT_KEY``, read at use.
            Readers need the same key; a wrong one raises ``ThreadAuthError``.
        allow_unauthenticated: read and write without a key even on a shared store (where
            it is refused by default, ``ThreadKeyRequired``).
        serde: LangGraph serializer for every document (default: LangGraph's
            ``JsonPlusSerializer`` for authenticated documents, its hardened configuration
            for documents read without a key; see the module docstring).
    """

    def __init__(self, store: str | os.PathLike[str] | BlockStore, *,
                 block_size: int | None = None, retention: int | None = DEFAULT_RETENTION,
                 on_conflict: Conflict = "takeover", ttl: float = 60.0,
                 prefix: str = "langgraph", holder: str | None = None,
                 key: KeySetting = None, allow_unauthenticated: bool = False,
                 serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        resolve_keys(key)  # a malformed key fails here, not at the first read
        self._key_setting = key
        self._allow_unauthenticated = bool(allow_unauthenticated)
        self._untrusted_serde = self.serde if serde is not None else maybe_add_typed_methods(
            JsonPlusSerializer(pickle_fallback=False, allowed_json_modules=None,
                               allowed_msgpack_modules=None))
        if retention is not None and (not isinstance(retention, int) or retention < 1):
            raise ValueError(f"retention must be an int >= 1 or None, got {retention!r}")
        if isinstance(store, BlockStore):
            self.store, self._owns_store = store, False
        else:
            self.store = open_store(store, block_size=block_size)
            self._owns_store = not isinstance(self.store, MemoryStore)
        self.retention = retention
        self.ownership = ThreadOwnership(self.store, prefix=prefix, on_conflict=on_conflict,
                                         ttl=ttl, holder=holder)
        self._states: OrderedDict[str, ThreadState] = OrderedDict()
        self._ids: dict[str, str] = {}
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release this saver's thread leases (data stays); close a store it opened.

        A memory store is left open: its data lives only while it is. Idempotent.
        """
        with self._lock:
            self.ownership.release_all()
            self._states.clear()
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> BlockpointSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> BlockpointSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def with_allowlist(self, extra_allowlist: Any) -> BlockpointSaver:
        """A shallow clone whose serializers (both of them) also rebuild ``extra_allowlist``'s
        types (LangGraph's ``BaseCheckpointSaver.with_allowlist``)."""
        clone = super().with_allowlist(extra_allowlist)
        clone = copy.copy(self) if clone is self else clone
        untrusted = self._untrusted_serde
        if isinstance(untrusted, JsonPlusSerializer):
            clone._untrusted_serde = maybe_add_typed_methods(
                untrusted.with_msgpack_allowlist(extra_allowlist))
        return clone  # type: ignore[return-value]

    # -- keys and trust ----------------------------------------------------------------------
    def _keys(self) -> KeyRing | None:
        """The key ring now (``key=`` or the environment); refuses a shared store without."""
        keys = resolve_keys(self._key_setting)
        if keys is None and not self._allow_unauthenticated and self.store.capabilities.shared:
            raise ThreadKeyRequired(
                f"{type(self.store).__name__} {self.store.url} is shared: a thread document "
                "without a key could be forged by anyone who can write the store, and "
                "LangGraph's serializer would rebuild what it names. Set "
                "BLOCKPOINT_CHECKPOINT_KEY (or pass key=), or pass allow_unauthenticated=True")
        return keys

    def _serde_for(self, keys: KeyRing | None) -> SerializerProtocol:
        """The serializer that decodes documents read with ``keys`` (verified or not)."""
        return self.serde if keys is not None else self._untrusted_serde

    def _checked(self, found: DocumentLoad, thread_id: str,
                 keys: KeyRing | None) -> dict[str, Any] | None:
        """The loaded document, ``None`` for a thread with none, or the error that says why
        its documents cannot be used (never "empty" for a thread that has some)."""
        if found.document is not None:
            if keys is None and found.mac:
                raise ThreadAuthError(
                    f"thread {thread_id!r} was written with a key and this saver has none: "
                    "set BLOCKPOINT_CHECKPOINT_KEY_FILE (or BLOCKPOINT_CHECKPOINT_KEY, or "
                    "pass key=)", thread_id=thread_id,
                    reasons=("a MAC, but no key is configured",))
            return found.document
        reasons = tuple(f"slot {s.slot}: {s.reason}" for s in found.skipped)
        if any(s.authentication for s in found.skipped):
            raise ThreadAuthError(
                f"thread {thread_id!r} has documents, none authenticates under this saver's "
                f"key (wrong key, or forged): {'; '.join(reasons)}", thread_id=thread_id,
                reasons=reasons)
        if any(s.generation is not None for s in found.skipped):
            raise ThreadCorruptError(
                f"thread {thread_id!r} has documents, none verifies: {'; '.join(reasons)}",
                thread_id=thread_id, reasons=reasons)
        return None  # nothing, or only a first save's torn header

    # -- storage ---------------------------------------------------------------------------
    def _load(self, lease: LeaseReader, thread_id: str,
              keys: KeyRing | None) -> tuple[dict[str, Any], Any] | None:
        """The thread's document (snapshot and log applied) and the log's tail, or ``None``
        if it has none; raises ``ThreadAuthError``/``ThreadCorruptError`` for one whose
        documents do not verify."""
        found = storage.open_document(lease, keys).load()
        doc = self._checked(found, thread_id, keys)
        if doc is None:
            return None
        try:
            tail = storage.replay(lease, keys, found, doc)
        except (ValueError, KeyError, TypeError) as exc:
            raise ThreadCorruptError(
                f"thread {thread_id!r}: its log does not apply to its snapshot: {exc}",
                thread_id=thread_id, reasons=(str(exc),)) from exc
        return doc, tail

    def _read(self, thread_id: str, keys: KeyRing | None) -> dict[str, Any] | None:
        """The thread's newest verified document, or ``None`` if it has none; raises
        ``ThreadAuthError``/``ThreadCorruptError`` for one whose documents do not verify."""
        name = self.ownership.name_of(thread_id)
        for _ in (0, 1):
            lease_id = self._ids.get(name)
            if lease_id is None:
                info = self.store.find(name)
                if info is None:
                    return None
                lease_id = self._ids[name] = info.lease_id
            try:
                loaded = self._load(LeaseReader(self.store, lease_id, name), thread_id, keys)
            except LeaseNotFoundError:  # deleted (and maybe re-created) since we looked
                self._ids.pop(name, None)
                continue
            return None if loaded is None else loaded[0]
        return None

    def _held(self, thread_id: str, keys: KeyRing | None) -> dict[str, Any] | None:
        """The writer's document of the thread, if it is still the truth: this saver wrote
        it under the lease epoch the store records now (nobody else can have written since:
        any other writer bumps the epoch). Call with ``self._lock`` held."""
        state = self._states.get(thread_id)
        if state is None or state.keys != keys:
            return None
        try:
            info = self.store.lease_info(state.lease_id)
        except LeaseNotFoundError:
            return None
        return state.doc if info.epoch == state.epoch else None

    def _update(self, thread_id: str, change: Callable[[dict[str, Any]], bool],
                op: dict[str, Any] | None = None) -> None:
        """Apply ``change`` to the thread's document and commit it, as the thread's writer.

        ``change`` mutates the document and says whether anything changed. With ``op``
        (the logged form of the same change, ``thread.apply``) the change is appended to
        the log when it fits, else - and for every other change - a snapshot is saved. The
        thread's state is taken out of the cache before the change, so a failed commit
        never leaves a half-applied cache (the next write re-reads). A thread whose
        documents do not verify is not written (``_checked``).
        """
        keys = self._keys()

        def run(lease: Lease) -> None:
            state = self._states.pop(thread_id, None)
            if state is None or not state.current(lease, keys):
                loaded = self._load(lease, thread_id, keys)
                doc, tail = loaded if loaded else (td.new_document(thread_id), None)
                state = ThreadState(doc, tail, lease.lease_id, lease.epoch, keys)
            if change(state.doc):
                tail = None
                if op is not None and state.tail is not None:
                    tail = storage.append(lease, keys, state.doc, state.tail, op)
                state.tail = tail or storage.snapshot(lease, keys, state.doc, state.tail)
            self._states[thread_id] = state
            while len(self._states) > _CACHED_THREADS:
                self._states.popitem(last=False)
            self._ids[lease.name] = lease.lease_id

        with self._lock:
            self.ownership.write(thread_id, run)

    def _threads(self) -> list[str]:
        found = (self.ownership.thread_of(info.name) for info in self.store.list_leases())
        return [t for t in found if t is not None]

    def _tuple(self, thread_id: str, ns: str, checkpoint_id: str,
               space: dict[str, Any], serde: SerializerProtocol) -> CheckpointTuple:
        entry = space["checkpoints"][checkpoint_id]
        loads = serde.loads_typed
        checkpoint: Checkpoint = loads(td.unpack(entry["checkpoint"]))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            pair = space["blobs"].get(channel, {}).get(td.version_key(version))
            if pair is not None:
                values[channel] = loads(td.unpack(pair))
        rows = sorted(space["writes"].get(checkpoint_id, {}).values(),
                      key=lambda r: writes_sort_key(r[4], r[0], r[1]))
        parent = entry["parent"]
        return CheckpointTuple(
            config=_config(thread_id, ns, checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=loads(td.unpack(entry["metadata"])),
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=[(r[0], r[2], loads(td.unpack(r[3]))) for r in rows],
        )

    # -- BaseCheckpointSaver: reads --------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), else the thread's newest
        in its namespace; ``None`` if there is none. Pending writes in LangGraph's order."""
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        keys = self._keys()
        with self._lock:
            doc = self._held(thread_id, keys)
            if doc is not None:
                return self._find(thread_id, ns, doc, config, keys)
        return self._find(thread_id, ns, self._read(thread_id, keys), config, keys)

    def _find(self, thread_id: str, ns: str, doc: dict[str, Any] | None,
              config: RunnableConfig, keys: KeyRing | None) -> CheckpointTuple | None:
        space = doc["ns"].get(ns) if doc else None
        if not space or not space["checkpoints"]:
            return None
        checkpoint_id = get_checkpoint_id(config) or max(space["checkpoints"])
        if checkpoint_id not in space["checkpoints"]:
            return None
        return self._tuple(thread_id, ns, checkpoint_id, space, self._serde_for(keys))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None,
             limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, if given), or of
        every thread; only those whose metadata has every ``filter`` item, older than
        ``before``'s checkpoint; at most ``limit``."""
        conf = config["configurable"] if config else {}
        threads = [conf["thread_id"]] if config else self._threads()
        only_ns = conf.get("checkpoint_ns")
        only_id = get_checkpoint_id(config) if config else None
        before_id = get_checkpoint_id(before) if before else None
        left = limit
        keys = self._keys()
        serde = self._serde_for(keys)
        for thread_id in threads:
            doc = self._read(thread_id, keys)
            if not doc:
                continue
            for ns, space in sorted(doc["ns"].items()):
                if only_ns is not None and ns != only_ns:
                    continue
                for checkpoint_id in sorted(space["checkpoints"], reverse=True):
                    if only_id and checkpoint_id != only_id:
                        continue
                    if before_id and checkpoint_id >= before_id:
                        continue
                    if filter:
                        metadata = serde.loads_typed(
                            td.unpack(space["checkpoints"][checkpoint_id]["metadata"]))
                        if not all(metadata.get(k) == v for k, v in filter.items()):
                            continue
                    if left is not None:
                        if left <= 0:
                            return
                        left -= 1
                    yield self._tuple(thread_id, ns, checkpoint_id, space, serde)

    # -- BaseCheckpointSaver: writes -------------------------------------------------------
    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Commit ``checkpoint`` as the thread's newest (one log record) and return its
        config. Raises ``StaleWriterError`` if this saver was fenced off the thread,
        ``ThreadBusyError`` in refuse mode; then nothing was saved."""
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        dumps = self.serde.dumps_typed
        stored = dict(checkpoint)
        values: dict[str, Any] = stored.pop("channel_values", {})  # type: ignore[assignment]
        blobs = {channel: {td.version_key(version):
                           td.pack(dumps(values[channel])) if channel in values else None}
                 for channel, version in new_versions.items()}
        md = get_checkpoint_metadata(config, metadata)
        run_id = md.get("run_id")
        entry = {
            "checkpoint": td.pack(dumps(stored)),
            "metadata": td.pack(dumps(md)),
            "parent": conf.get("checkpoint_id"),
            "run_id": None if run_id is None else str(run_id),
            "refs": sorted([channel, td.version_key(version)]
                           for channel, version in checkpoint["channel_versions"].items()),
        }

        op = {"op": "put", "ns": ns, "id": checkpoint["id"], "entry": entry, "blobs": blobs,
              "retention": self.retention}
        self._update(thread_id, lambda doc: td.apply(doc, op), op)
        return _config(thread_id, ns, checkpoint["id"])

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        """Commit a task's pending writes for ``config``'s checkpoint (one log record).

        Idempotent per (task, index); LangGraph's special channels (errors, interrupts)
        replace. Raises as :meth:`put`.
        """
        conf = config["configurable"]
        thread_id, ns = conf["thread_id"], conf.get("checkpoint_ns", "")
        checkpoint_id = conf["checkpoint_id"]
        rows = []
        for idx, (channel, value) in enumerate(writes):
            index = WRITES_IDX_MAP.get(channel, idx)
            row = [task_id, index, channel, td.pack(self.serde.dumps_typed(value)), task_path]
            rows.append([td.write_key(task_id, index), row, index < 0])
        op = {"op": "writes", "ns": ns, "id": checkpoint_id, "rows": rows}
        self._update(thread_id, lambda doc: td.apply(doc, op), op)

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints and writes (its lease and blocks); no-op if
        absent. Takes the thread as a write does (a fenced saver gets StaleWriterError)."""
        with self._lock:
            name = self.ownership.name_of(thread_id)
            if self.store.find(name) is None:
                self._forget(thread_id)
                return
            self.ownership.delete(thread_id)
            self._forget(thread_id)

    def _forget(self, thread_id: str) -> None:
        self._states.pop(thread_id, None)
        self._ids.pop(self.ownership.name_of(thread_id), None)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint (with its writes) whose metadata ``run_id`` is listed, in
        every thread; each affected thread changes with one save."""
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return
        keys = self._keys()
        for thread_id in self._threads():
            doc = self._read(thread_id, keys)
            if doc and any(e.get("run_id") in wanted for space in doc["ns"].values()
                           for e in space["checkpoints"].values()):
                self._update(thread_id, lambda d: td.drop_runs(d, wanted))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another (one save of the
        target; checkpoints with the same id are replaced). No-op if the source is empty."""
        source = self._read(source_thread_id, self._keys())
        if not source or not source["ns"]:
            return

        def change(doc: dict[str, Any]) -> bool:
            td.merge(doc, source)
            return True

        self._update(target_thread_id, change)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's newest checkpoint (with its writes and
        blobs); ``"delete"``: delete the threads. One save per thread."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r} (keep_latest, delete)")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            doc = self._read(thread_id, self._keys())
            if not doc or all(len(s["checkpoints"]) <= 1 for s in doc["ns"].values()):
                continue

            def change(d: dict[str, Any]) -> bool:
                for space in d["ns"].values():
                    td.keep_newest(space, 1)
                return True

            self._update(thread_id, change)

    # -- async twins (the store's I/O blocks: run in a worker thread) -----------------------
    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """:meth:`get_tuple` in a worker thread."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        """:meth:`list`, read in a worker thread, then yielded."""
        found = await asyncio.to_thread(
            lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for item in found:
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        """:meth:`put` in a worker thread."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        """:meth:`put_writes` in a worker thread."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """:meth:`delete_thread` in a worker thread."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """:meth:`delete_for_runs` in a worker thread."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """:meth:`copy_thread` in a worker thread."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *,
                     strategy: str = "keep_latest") -> None:
        """:meth:`prune` in a worker thread."""
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy))


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                             "checkpoint_id": checkpoint_id}}
