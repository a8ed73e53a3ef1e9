"""Keyed state with change tracking: a checkpoint re-serialises only the key groups written.

A keyed stage's state is one mapping per key group (``stages/checkpoint/keygroups.py``).
:class:`KeyedState` holds the groups an instance owns and sees every write, so
:meth:`KeyedState.checkpoint` pickles only the groups written since the last checkpoint
and hands the stored chunks of every other group to the commit as they are: a clean group
is neither serialised, read, hashed, compressed nor written (``docs/FORMAT.md`` 2.4.1 has
the payload layout, section 4 the reuse rules).

**The write contract.** A write is ``ks[key] = value``, ``del ks[key]``, ``ks.pop(key)``,
``ks.setdefault(key, default)``, ``ks.update(key, fn)`` or ``ks.mutable(key)`` (returns
the value *and* marks its group written, for in-place changes). Values returned by
``ks[key]``, ``get``, ``values`` and ``items`` are for reading: changing one in place is
not seen, and the next checkpoint would keep the group's old bytes. What is enforced:
``check_untracked=True`` makes every checkpoint re-serialise the clean groups and refuse
(:class:`~stages.errors.UntrackedWrite`, nothing written) if one differs from its stored
bytes - a full serialisation's cost, for tests and debugging. Immutable values (numbers,
str, bytes, tuples) cannot break the contract.

Guarantees:

* A checkpoint is a commit of :class:`~stages.checkpoint.state.CheckpointedStageState`
  (same protocol, same crash atomicity: a cut at any write leaves the previous generation
  or the new one, whole), with content hashes and incremental reuse always on.
* A clean group's chunks are reused only from the generation this object last committed
  or restored - the incremental base (``stages/checkpoint/incremental.py``); on any other
  base (after a failed commit, every ``full_every`` generations) they are written from the
  kept serialised bytes, still without re-serialising the group.
* Memory: the serialised bytes of every owned group are kept (about the pickled size of
  the state, padded to whole blocks), so a full write never needs a re-serialisation and
  a MAC (with a key) is computed over them at memory speed.
* :meth:`KeyedState.restore` returns the groups asked for, from one lease or assembled
  from several (a rescale), after the whole generation verified (CRCs, MAC with a key);
  only those groups are unpickled. Another ``max_parallelism`` than the lease's, a lease
  that does not hold keyed state, or a group held by two of the leases is refused with
  :class:`~stages.errors.KeyedStateMismatch`.

Not thread-safe (one stage, one writer); no asynchronous checkpoints.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from blockstore import Lease, LeaseReader

from ..errors import (
    CheckpointEncodeError,
    KeyedStateMismatch,
    KeyGroupError,
    UntrackedWrite,
)
from .codec import Payload
from .incremental import StoredRun
from .keygroups import DEFAULT_MAX_PARALLELISM, key_group
from .reports import CheckpointInfo, RestoreReport
from .state import CheckpointedStageState
from .table import FrameCache, Manifest, frame, frame_again, read_manifest

__all__ = ["KeyedState"]

_MISSING: Any = object()


class KeyedState:
    """The per-key state of one instance of a keyed stage: the key groups ``groups`` of
    ``max_parallelism``, checkpointed to ``lease`` group by group (see the module docstring).

    Args:
        lease: where :meth:`checkpoint` writes (a held lease; a reader cannot checkpoint).
        groups: the key groups this instance owns (default: all, ``range(max_parallelism)``);
            usually ``key_group_range(index, parallelism, max_parallelism)``.
        max_parallelism: the run's number of key groups (fixed for the life of the run).
        check_untracked: refuse a checkpoint if a clean group changed (see the contract).
        **options: for the underlying ``CheckpointedStageState``: ``retention``, ``key``,
            ``mac``, ``compression``, ``level``, ``full_every``, ``observer``, ``lease_id``,
            ``allow_unauthenticated``.
    """

    def __init__(self, lease: Lease | LeaseReader, *, groups: Iterable[int] | None = None,
                 max_parallelism: int = DEFAULT_MAX_PARALLELISM, check_untracked: bool = False,
                 **options: Any) -> None:
        self._init(CheckpointedStageState(None, lease, incremental=True, **options),
                   groups, max_parallelism, check_untracked)

    def _init(self, css: CheckpointedStageState[Any], groups: Iterable[int] | None,
              max_parallelism: int, check_untracked: bool) -> None:
        key_group(0, max_parallelism)  # checks max_parallelism (KeyGroupError)
        owned = range(max_parallelism) if groups is None else groups
        self._owned = frozenset(owned)
        bad = [g for g in self._owned if type(g) is not int or not 0 <= g < max_parallelism]
        if bad:
            raise KeyGroupError(f"key groups {sorted(bad, key=repr)[:5]} are outside "
                                f"0..{max_parallelism - 1}")
        self._css = css
        self._m = max_parallelism
        self._check = bool(check_untracked)
        self._data: dict[int, dict[Any, Any]] = {}
        self._dirty: set[int] = set()
        self._segments: dict[int, tuple[memoryview, int]] = {}  # padded bytes, true length
        self._chunks: dict[int, StoredRun] = {}  # each clean group's chunks in _chunks_gen
        self._chunks_gen: int | None = None
        self._frame = FrameCache()  # the last payload's table and manifest
        #: the last payload's groups in order, their positions and segments (``None``: none)
        self._layout: tuple[list[int], dict[int, int], list[tuple[memoryview, int]]] | None = None
        self.restored: RestoreReport | None = None
        #: the report of every source of the last restore (one per lease, in order)
        self.restored_reports: tuple[RestoreReport, ...] = ()
        self.last_groups_written = 0

    # -- the mapping ---------------------------------------------------------------------
    @property
    def max_parallelism(self) -> int:
        return self._m

    @property
    def groups(self) -> frozenset[int]:
        """The key groups this object owns."""
        return self._owned

    @property
    def dirty_groups(self) -> frozenset[int]:
        """Groups written since the last checkpoint (what the next one serialises)."""
        return frozenset(self._dirty)

    def touch_all(self) -> None:
        """Count every group as written: the next checkpoint serialises them all (after
        changes the contract did not track, or to measure a full re-serialisation)."""
        self._dirty.update(self._data)

    def group_of(self, key: Any) -> int:
        """The key group of ``key``; :class:`KeyGroupError` if this object does not own it."""
        g = key_group(key, self._m)
        if g not in self._owned:
            raise KeyGroupError(f"key {key!r} is in key group {g}, which this instance does "
                                f"not own ({_ranges(self._owned)} of {self._m})")
        return g

    def _group(self, key: Any, write: bool) -> dict[Any, Any]:
        return self._dict_of(self.group_of(key), write)

    def _dict_of(self, g: int, write: bool) -> dict[Any, Any]:
        """Group ``g``'s dict (owned: checked by the caller); ``write``: made if missing and
        counted as written."""
        d = self._data.get(g)
        if d is None:
            d = {}
            if write:
                self._data[g] = d
        if write:
            self._dirty.add(g)
        return d

    def group_for_write(self, key: Any) -> dict[Any, Any]:
        """The plain dict of ``key``'s group, which counts as written: a pipeline instance
        hands it to a stage's ``process`` (``stages/actors/instance.py``), which may change
        it in any way - the whole group is re-serialised at the next checkpoint."""
        return self._group(key, True)

    def group_at(self, g: int) -> dict[Any, Any]:
        """:meth:`group_for_write` of key group ``g`` itself (its keys' group computed by the
        caller: a producer that split a batch, ``stages/actors/routing.py``);
        :class:`KeyGroupError` if this object does not own ``g``."""
        if g not in self._owned:
            raise KeyGroupError(f"key group {g} is not owned by this instance "
                                f"({_ranges(self._owned)} of {self._m})")
        return self._dict_of(g, True)

    def __getitem__(self, key: Any) -> Any:
        return self._group(key, False)[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._group(key, False).get(key, default)

    def __contains__(self, key: Any) -> bool:
        return key in self._group(key, False)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._group(key, True)[key] = value

    def __delitem__(self, key: Any) -> None:
        d = self._group(key, False)
        del d[key]  # KeyError before anything is marked
        self._dirty.add(self.group_of(key))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        d = self._group(key, False)
        if key not in d:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._dirty.add(self.group_of(key))
        return d.pop(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        d = self._group(key, False)
        if key in d:
            return d[key]
        self._group(key, True)[key] = default
        return default

    def update(self, key: Any, fn: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        """``ks[key] = fn(ks[key])`` (``fn(default)`` for a missing key); returns it."""
        d = self._group(key, False)
        old = d.get(key, default)
        if old is _MISSING:
            raise KeyError(key)
        new = fn(old)
        self._group(key, True)[key] = new
        return new

    def mutable(self, key: Any, default: Any = _MISSING) -> Any:
        """The value of ``key`` for changing in place; its group counts as written.
        ``default`` is stored first for a missing key (else ``KeyError``)."""
        d = self._group(key, False)
        if key not in d and default is _MISSING:
            raise KeyError(key)
        d = self._group(key, True)
        return d.setdefault(key, default)

    def __len__(self) -> int:
        return sum(len(d) for d in self._data.values())

    def __iter__(self) -> Iterator[Any]:
        for g in sorted(self._data):
            yield from self._data[g]

    def keys(self) -> Iterator[Any]:
        return iter(self)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs, group by group; values for reading (see the contract)."""
        for g in sorted(self._data):
            yield from self._data[g].items()

    def values(self) -> Iterator[Any]:
        for g in sorted(self._data):
            yield from self._data[g].values()

    def to_dict(self) -> dict[Any, Any]:
        """A plain dict of every key (a shallow copy)."""
        return dict(self.items())

    # -- checkpoint ----------------------------------------------------------------------
    @property
    def lease(self) -> Lease | LeaseReader:
        return self._css.lease

    @property
    def checkpointed(self) -> CheckpointedStageState[Any]:
        """The checkpointed state this object commits through (its lease, last checkpoint,
        whether a flush is running); its ``state`` is not the keyed state."""
        return self._css

    def checkpoint(self, *, step: int = 0, meta: dict[str, Any] | None = None) -> CheckpointInfo:
        """Commit the owned groups as a new generation; only written groups are serialised.

        Errors are :meth:`CheckpointedStageState.checkpoint`'s (fail-closed; the previous
        generation stays the newest); a group that does not pickle is
        :class:`~stages.errors.CheckpointEncodeError` naming the group.
        """
        bs = self.lease.block_size
        if self._check:
            self._check_clean()
        written: list[int] = []
        # None: the groups or a group's size changed since. Dropped until this commit's
        # payload is framed: a group that fails to pickle below leaves the segments before
        # it changed, so a retry must frame afresh.
        layout, self._layout = self._layout, None
        for g in sorted(self._dirty):
            d = self._data.get(g)
            self._chunks.pop(g, None)
            if not d:
                self._data.pop(g, None)
                if self._segments.pop(g, None) is not None:
                    layout = None
                continue
            old = self._segments.get(g)
            new = self._segments[g] = _pad(self._serialise(g, d), bs)
            if old is None or old[1] != new[1] or old[0].nbytes != new[0].nbytes:
                layout = None
            written.append(g)
        self._dirty.clear()
        self.last_groups_written = len(written)
        if layout is not None:  # only bytes changed: the table and manifest are the same
            order, index, segs = layout
            for g in written:
                segs[index[g]] = self._segments[g]
            offsets = self._frame.offsets
            payload = frame_again(self._frame, segs)
        else:
            order = sorted(self._segments)
            segs = [self._segments[g] for g in order]
            man = Manifest(self._m, order, [n for _, n in segs])
            payload, offsets = frame(man, segs, bs, self._frame)
            index = {g: i for i, g in enumerate(order)}
        self._layout = (order, index, segs)
        # The clean groups' runs, consecutive ones joined: the commit takes each run whole,
        # without visiting its chunks.
        reuse: list[tuple[int, StoredRun]] = []
        if self._chunks_gen is not None:
            reuse = _joined_runs(order, offsets, self._chunks, bs)
        payload = Payload(payload.segments, payload.length, reuse, self._chunks_gen)
        info = self._css.checkpoint_payload(payload, step=step, meta=meta)
        self._learn_chunks(order, offsets, bs)
        return info

    def _serialise(self, g: int, d: dict[Any, Any]) -> bytes:
        try:
            return pickle.dumps(d, protocol=5)
        except Exception as exc:
            raise CheckpointEncodeError(
                f"checkpoint of key group {g} failed: its values do not pickle: "
                f"{type(exc).__name__}: {exc}", lease_id=self._css.lease.lease_id) from exc

    def _check_clean(self) -> None:
        for g, d in self._data.items():
            if g in self._dirty:
                continue
            seg = self._segments.get(g)
            fresh = self._serialise(g, d)
            if seg is None or seg[0][:seg[1]] != fresh:
                raise UntrackedWrite(
                    f"key group {g} changed without a tracked write (a value from get/[] "
                    "changed in place?): write it back with ks[key] = v, ks.update(key, fn) "
                    "or ks.mutable(key); nothing was written", group=g)

    def _learn_chunks(self, order: Sequence[int], offsets: Sequence[int], bs: int) -> None:
        """After a commit: where each group's chunks are stored in the new base.

        A group whose run the commit took keeps that run: the new map holds the run's own
        entry objects (one identity check); only the others - the groups written, and any
        the commit encoded - are compared and build a new one.
        """
        committed = self._css.committed_map()
        before, self._chunks = self._chunks, {}
        self._chunks_gen = None
        if committed is None:
            return
        gen, entries = committed
        chunks = self._chunks
        for g, off in zip(order, offsets):
            first = off // bs
            run = before.get(g)
            # A run the commit took is in the new map as the very same entry objects.
            if run is not None and first < len(entries) and entries[first] is run.entries[0]:
                chunks[g] = run
                continue
            now = tuple(entries[first:first + self._segments[g][0].nbytes // bs])
            if run is None or run.entries != now:
                run = StoredRun.of(now, bs)
            if run is not None:
                chunks[g] = run
        self._chunks_gen = gen

    # -- restore -------------------------------------------------------------------------
    @classmethod
    def restore(cls, source: Lease | LeaseReader | Sequence[Lease | LeaseReader], *,
                groups: Iterable[int] | None = None,
                max_parallelism: int = DEFAULT_MAX_PARALLELISM,
                lease: Lease | LeaseReader | None = None, key: Any = None,
                max_step: int | None = None, max_state_bytes: int | None = None,
                check_untracked: bool = False, **options: Any) -> KeyedState:
        """The key groups ``groups`` (default: all) of the newest generation of ``source``
        that verifies (at or before ``max_step``), or assembled from several leases.

        With one source and no ``lease`` the result is bound to the source, and its next
        checkpoint reuses the restored generation's chunks of unchanged groups. With a
        ``lease`` (a rescale: the instance's own lease), or several sources, the result
        writes to ``lease`` and its first checkpoint is full. A group missing from every
        source is empty.

        Raises:
            KeyedStateMismatch: a source holds another max_parallelism, or no keyed state,
                or two sources hold one of the groups.
            NoCheckpointError, CheckpointCorrupt, CheckpointTooLarge: as
                :meth:`CheckpointedStageState.restore`, for the source concerned.
        """
        sources = [source] if isinstance(source, (Lease, LeaseReader)) else list(source)
        if not sources:
            raise ValueError("restore needs at least one source lease")
        if lease is None and len(sources) > 1:
            raise ValueError("restoring from several leases needs lease= (where to write)")
        owned = frozenset(range(max_parallelism) if groups is None else groups)
        found: dict[int, tuple[str, memoryview, int]] = {}
        restored: list[tuple[CheckpointedStageState[Any], Manifest]] = []
        for src in sources:
            css = CheckpointedStageState.restore(src, key=key, max_step=max_step,
                                                 max_state_bytes=max_state_bytes,
                                                 incremental=True, **options)
            man = read_manifest(css.state, src.name, src.lease_id, max_parallelism)
            for g, seg, off in zip(man.groups, man.segments, man.offsets):
                if g not in owned:
                    continue
                if g in found:
                    raise KeyedStateMismatch(
                        f"key group {g} is held by lease {found[g][0]!r} and by lease "
                        f"{src.name!r}: a restore takes each group from one lease",
                        expected="each key group in one lease", found=f"group {g} in two")
                found[g] = (src.name, seg, off)
            restored.append((css, man))
        if lease is None:
            css0 = restored[0][0]
            css0.state = None
        else:
            css0 = CheckpointedStageState(None, lease, incremental=True, key=key, **options)
        ks = cls.__new__(cls)
        ks._init(css0, owned, max_parallelism, check_untracked)
        ks.restored = restored[0][0].restored if len(restored) == 1 else None
        ks.restored_reports = tuple(c.restored for c, _ in restored if c.restored is not None)
        bs = ks.lease.block_size
        for g in sorted(found):
            _, seg, _ = found[g]
            ks._data[g] = pickle.loads(seg)
            ks._segments[g] = _pad(bytes(seg), bs)
        if lease is None:
            man = restored[0][1]
            order = [g for g in man.groups if g in found]
            ks._learn_chunks(order, [found[g][2] for g in order], bs)
        else:
            ks._dirty = set(found)  # a new lease: everything is written once
        return ks


def _joined_runs(order: Sequence[int], offsets: Sequence[int], chunks: dict[int, StoredRun],
                 bs: int) -> list[tuple[int, StoredRun]]:
    """``(first chunk, run)`` of the clean groups (those in ``chunks``), consecutive groups'
    runs joined into one (``StoredRun.join``)."""
    out: list[tuple[int, StoredRun]] = []
    group: list[StoredRun] = []
    start = end = -1
    for g, off in zip(order, offsets):
        run = chunks.get(g)
        if run is None:
            continue
        first = off // bs
        if group and first != end:
            out.append((start, StoredRun.join(group)))
            group = []
        if not group:
            start = first
        group.append(run)
        end = first + len(run.entries)
    if group:
        out.append((start, StoredRun.join(group)))
    return out


def _pad(raw: bytes, bs: int) -> tuple[memoryview, int]:
    """``raw`` zero-padded to whole blocks, and its length (one copy, dirty groups only)."""
    n = len(raw)
    buf = bytearray(max(1, -(-n // bs)) * bs)
    buf[:n] = raw
    return memoryview(buf), n


def _ranges(groups: frozenset[int]) -> str:
    """``'0..63, 70'``: a set of groups as ranges, for messages."""
    runs: list[list[int]] = []
    for g in sorted(groups):
        if runs and runs[-1][1] == g - 1:
            runs[-1][1] = g
        else:
            runs.append([g, g])
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs) or "no groups"

