"""The sink writer: a step's output goes from the output stages to the sink without the driver.

Why: the driver reads the source, submits every call, injects the barriers and commits the
steps; when it also fetched every output record and encoded it for the sink, that was most of
its CPU (bench/bench_engine.py's profile of a 3-stage chain: getting the outputs and writing
JSON lines), and a pipeline could go no faster than one driver thread. With a sink that may
commit in another process (:func:`commits_anywhere`), the pipeline starts one
:class:`SinkWriter` actor on the driver's node (the sink's files are where the driver would
have written them). The driver waits for each batch's outputs without getting them and, at
the step's commit, hands their references to :meth:`SinkWriter.commit`: Ray hands the outputs
to the writer, and the driver gets back a record count - or the error of the stage that
failed, exactly as a get of the output would have raised it (an errored argument fails the
call with that error). An output stage no stage reads returns its output already encoded for
the sink (``EncodedBatch``, the sink's ``encode``), so its records are never pickled.

A call per :data:`HAND_OVER_EVERY` batches, not per batch (a call per batch cost the driver and
the writer more than it saved), nor one per step: a step's outputs all handed over at its
commit made the commit wait while the writer took them in (0.23 s of a 3 s run of the engine
benchmark, whose only step is the whole stream). :class:`Handoff` is the driver's side: the
outputs of batches that are done go to :meth:`SinkWriter.hand_over` in chunks as they come,
each under an id the driver never uses again; the writer keeps each chunk's outputs in memory
under its id. The commit names the step's chunks, in order, and hands over the rest.

Exactly-once is unchanged: the writer commits a step only when the driver asks, at the same
point of the commit protocol (``stages/pipeline/pipeline.py``), with exactly the chunks the
commit names (a chunk it does not hold is an error, never a gap), and the sink's fencing token
travels with the request. A chunk from an attempt that was rolled back is never named again
(ids are not reused), and :meth:`SinkWriter.reset`, sent by the driver at the rewind, frees
it; so does the next commit that names a chunk (ids grow with the stream, and every chunk of
a step has a lower id than those of the steps after it). A stage's error in a chunk fails the
hand-over call, and the commit that names it fails with the same error. A sink error raised in the writer is returned and raised again in
the driver, so ``RunFencedError`` and the rest reach the caller as before. A writer that dies
loses only uncommitted output: the driver starts another at the rewind and replays from the
committed step.

When the writer is not used (the driver commits, as before): a sink whose class does not set
``commit_anywhere = True`` itself (a subclass may keep state or act in the driver; a
``ParquetSink`` builds its files from a step's records whole, which the driver overlaps with
the run by fetching them as they come); a writer that sees a sink directory as another file
than the driver does (:func:`sink_places`: Ray Client, a container). The cost of the design:
a step's outputs stay in Ray's object store until its commit, so a step bigger than the
object store spills to disk (a barrier policy bounds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from ..actors.batches import EncodedBatch, concat, num_rows
from ..actors.routing import merge_parts
from .graph import SinkSet
from ..errors import SinkCommitError
from .sink import EncodedParts, FenceToken, Sink

__all__ = ["HAND_OVER_EVERY", "Handoff", "SinkWriter", "commits_anywhere", "sink_places", "stage_encoders", "start_writer", "writer_sees"]


def commits_anywhere(sink: Sink | SinkSet, pushed: bool = False) -> bool:
    """True if ``sink`` (every sink of a set) says its ``commit`` may run in another process
    on this machine (``commit_anywhere = True``: it touches only its files; a sink that
    builds its files from a step's records whole, like ``ParquetSink``, says False: the
    driver fetching them as they come overlaps that work with the run). On the push data
    path (``pushed``) ``commit_pushed_anywhere = True`` is enough: there the output stages
    push their outputs to the writer as they come, so the writer has the overlap the driver
    had, and a commit in the driver would bring every record through it."""
    return all(_says_anywhere(type(s), pushed) for s in _sinks(sink))


def _sinks(sink: Sink | SinkSet) -> list[Sink]:
    """The sinks of a set, or the one sink."""
    return list(sink.sinks.values()) if isinstance(sink, SinkSet) else [sink]


def _by_output(sink: Sink | SinkSet, outputs: Sequence[str]) -> dict[str, Sink]:
    """Each output stage's sink (one sink: the only output's)."""
    return dict(sink.sinks) if isinstance(sink, SinkSet) else {outputs[0]: sink}


def _says_anywhere(cls: type, pushed: bool = False) -> bool:
    """The class itself sets ``commit_anywhere = True`` (or, ``pushed``,
    ``commit_pushed_anywhere = True``): a subclass does not inherit it (its ``commit`` may
    keep state in memory or act on the driver's process, which a commit in the writer would
    do elsewhere), unless it says so again."""
    own = cls.__dict__
    return (own.get("commit_anywhere", False) is True
            or (pushed and own.get("commit_pushed_anywhere", False) is True))


#: outputs (one per call a sink's stage made) handed to the writer per call during a step
HAND_OVER_EVERY = 32


class SinkWriter:
    """Commits a step's outputs, handed over by reference, to the sink. Keeps only the
    chunks handed over for steps not committed yet: a lost writer loses no committed output."""

    def __init__(self, sink: Sink | SinkSet, outputs: Sequence[str]) -> None:
        self._sink = sink
        self._outputs = list(outputs)
        self._of = _by_output(sink, self._outputs)
        #: chunk id -> (output stage, one call's outputs merged), in order
        self._chunks: dict[int, list[tuple[str, Any]]] = {}
        #: the push data path (``stages/actors/pushing.py``): the driver's attempt, and per
        #: step, output stage and call ``(seq, key)``, each instance's part
        self._attempt: int | None = None
        self._pushed: dict[int, dict[str, dict[tuple[int, tuple[int, ...]], dict[int, Any]]]] = {}

    def ping(self) -> bool:
        return True

    def places(self) -> list[tuple[int, int] | None]:
        """What each sink's directory is as this process sees it (:func:`sink_places`)."""
        return sink_places(self._sink)

    def hand_over(self, chunk: int, layout: Sequence[tuple[str, int]], *outs: Any) -> int:
        """Keep ``outs`` (``layout`` as in :meth:`commit`) as chunk ``chunk`` until a commit
        names it; returns ``chunk``. An errored output fails this call with its error."""
        self._chunks[chunk] = list(_merged(layout, outs))
        return chunk

    def reset(self) -> None:
        """Drop every chunk (the driver rolled back: no commit will name them)."""
        self._chunks.clear()

    # -- the push data path -------------------------------------------------------------------
    def reset_pushed(self, attempt: int) -> bool:
        """Start the driver's ``attempt``: drop every output pushed before (none of them is
        committed); pushes of any other attempt are dropped from now on."""
        self._attempt = attempt
        self._pushed.clear()
        self._chunks.clear()
        return True

    def push_many(self, attempt: int, step: int, sid: str, part: int,
                  outs: Sequence[tuple[int, tuple[int, ...], Any]]) -> Any:
        """Keep one output stage instance's outputs of ``step`` - ``(seq, call key,
        output)`` each - until the step commits."""
        if attempt != self._attempt:
            return "stale"
        units = self._pushed.setdefault(step, {}).setdefault(sid, {})
        for seq, key, out in outs:
            units.setdefault((seq, tuple(key)), {})[part] = out
        return None

    def commit_pushed(self, step: int, token: FenceToken,
                      expected: dict[str, tuple[int, int]]) -> tuple[int, BaseException | None]:
        """Commit ``step``'s pushed output: per output stage, ``expected`` gives the calls of
        the step and the parts of each (its instances); anything short of that is a
        ``SinkCommitError`` and nothing is committed. Outputs go in ``(seq, key)`` order -
        the driver path's order - each call's parts merged in input order."""
        got = self._pushed.get(step, {})
        parts: dict[str, list[Any]] = {sid: [] for sid in self._outputs}
        rows = 0
        for sid, (calls, width) in expected.items():
            units = got.get(sid, {})
            short = [u for u, p in units.items() if len(p) != width]
            if len(units) != calls or short:
                return 0, SinkCommitError(
                    f"step {step}: the writer holds {len(units)} of {calls} outputs of stage "
                    f"{sid!r} ({len(short)} of them short of a part); not committed")
            for unit in sorted(units):
                p = units[unit]
                batch = merge_parts([p[i] for i in sorted(p)])
                parts[sid].append(batch)
                rows += batch.rows if isinstance(batch, EncodedBatch) else num_rows(batch)
        try:
            step_out = {sid: self._combine(sid, p) for sid, p in parts.items()}
            self._sink.commit(step, step_out if isinstance(self._sink, SinkSet)
                              else step_out[self._outputs[0]], token=token)
        except Exception as exc:  # noqa: BLE001 - handed back whole, raised by the driver
            return rows, _portable(exc)
        for s in [s for s in self._pushed if s <= step]:
            del self._pushed[s]
        return rows, None

    def commit(self, step: int, token: FenceToken, chunks: int,
               layout: Sequence[tuple[str, int]], *outs: Any) -> tuple[int, BaseException | None]:
        """Commit ``step``'s output (not yet visible: the driver publishes it after the run
        record): the first ``chunks`` of ``outs`` are ids of chunks handed over (their
        outputs first, in that order), the rest are outputs listed by ``layout`` as
        ``(output stage, results of one call)`` (one result per instance of each call, merged
        in input order as the driver merged them). Returns the records committed and the
        sink's error, if it raised (not raised here: the driver raises it as its own)."""
        parts: dict[str, list[Any]] = {sid: [] for sid in self._outputs}
        ids = outs[:chunks]
        missing = [c for c in ids if c not in self._chunks]
        if missing:  # never commit a step short of output
            return 0, SinkCommitError(f"step {step}: the writer holds no chunk {missing} "
                                      "the commit names (lost with a reset?); not committed")
        pieces = [p for c in ids for p in self._chunks[c]]
        pieces.extend(_merged(layout, outs[chunks:]))
        rows = 0
        for sid, batch in pieces:
            parts[sid].append(batch)
            rows += batch.rows if isinstance(batch, EncodedBatch) else num_rows(batch)
        try:  # the sink's encoding is the sink's: its errors too
            step_out = {sid: self._combine(sid, p) for sid, p in parts.items()}
            self._sink.commit(step, step_out if isinstance(self._sink, SinkSet)
                              else step_out[self._outputs[0]], token=token)
        except Exception as exc:  # noqa: BLE001 - handed back whole, raised by the driver
            return rows, _portable(exc)
        if ids:  # ids grow with the stream: a lower one is this step's or a dropped attempt's
            for c in [c for c in self._chunks if c <= max(ids)]:
                del self._chunks[c]
        return rows, None

    def _combine(self, sid: str, parts: list[Any]) -> Any:
        """One output stage's share of the step: the encoded bytes in order, when its sink
        encodes batches (each encoded by its stage, or here), else the records."""
        # A batch that made no rows says nothing of the stage's kind: a batch stage may
        # return None (nothing), which reaches here as an empty list, beside its tables.
        parts = [p for p in parts if (p.rows if isinstance(p, EncodedBatch) else num_rows(p))]
        encode = getattr(self._of[sid], "encode", None)
        if encode is None or not all(isinstance(p, (EncodedBatch, list)) for p in parts):
            # Tables (a batch stage's output): concatenated first, as the driver does, so a
            # column only some batches have is null in the others (never encoded per batch).
            if any(isinstance(p, EncodedBatch) for p in parts):
                raise TypeError(f"output stage {sid!r} returned records and tables in one "
                                "step; a stage returns one or the other")
            return concat(parts)
        data = [p.data if isinstance(p, EncodedBatch) else encode(p) for p in parts]
        return EncodedParts(data, sum(p.rows if isinstance(p, EncodedBatch) else num_rows(p)
                                      for p in parts))


def _merged(layout: Sequence[tuple[str, int]], outs: Sequence[Any]) -> list[tuple[str, Any]]:
    """``(output stage, one call's outputs merged)`` per entry of ``layout``."""
    got: list[tuple[str, Any]] = []
    i = 0
    for sid, width in layout:
        got.append((sid, merge_parts(list(outs[i:i + width]))))
        i += width
    return got


@dataclass(slots=True)
class _Step:
    chunks: list[Any] = field(default_factory=list)  # refs of hand_over calls, in order
    loose: list[tuple[str, list[Any]]] = field(default_factory=list)  # not handed over yet


class Handoff:
    """The driver's side of a :class:`SinkWriter`: each step's outputs, in order, handed
    over in chunks of :data:`HAND_OVER_EVERY` as batches finish, the rest at the commit."""

    def __init__(self, writer: Any, every: int | None = None) -> None:
        self.writer = writer
        self.every = every or HAND_OVER_EVERY
        self._steps: dict[int, _Step] = {}
        self._next = 0  # chunk ids: never reused by this driver

    def add(self, step: int, sid: str, group: list[Any]) -> None:
        """One call's outputs (one per instance) of output stage ``sid`` in ``step``."""
        st = self._steps.setdefault(step, _Step())
        st.loose.append((sid, group))
        if len(st.loose) >= self.every:
            layout = [(s, len(g)) for s, g in st.loose]
            flat = [r for _, g in st.loose for r in g]
            st.chunks.append(self.writer.hand_over.remote(self._next, layout, *flat))
            self._next += 1
            st.loose = []

    def commit(self, step: int, token: FenceToken) -> Any:
        """The writer's commit call of ``step`` (a reference to its reply)."""
        st = self._steps.pop(step, _Step())
        layout = [(s, len(g)) for s, g in st.loose]
        flat = [r for _, g in st.loose for r in g]
        return self.writer.commit.remote(step, token, len(st.chunks), layout,
                                         *st.chunks, *flat)

    def refs(self) -> list[Any]:
        """Every reference held (outputs and hand-over replies), for a rollback to drop."""
        return [r for st in self._steps.values()
                for r in (*st.chunks, *(x for _, g in st.loose for x in g))]

    def rewind(self, writer: Any = None) -> None:
        """Forget every step not committed; the writer drops its chunks of them (or
        ``writer``, a new one that replaced a lost writer, holds none)."""
        self._steps.clear()
        if writer is not None:
            self.writer = writer
        else:
            self.writer.reset.remote()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives the trip to the driver (pickled and rebuilt), else a
    :class:`~stages.errors.SinkCommitError` saying what it was: a sink error whose class
    cannot be rebuilt (a keyword-only ``__init__`` argument) would otherwise reach the driver
    as an unreadable reply, taken for a lost writer and replayed."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to travel
        return SinkCommitError(f"the sink's commit raised {type(exc).__module__}."
                               f"{type(exc).__qualname__}: {exc}")


def sink_places(sink: Sink | SinkSet) -> list[tuple[int, int] | None]:
    """``(st_dev, st_ino)`` of each sink's ``directory`` (``None``: no directory, or not
    there): the driver and the writer compare theirs before the writer commits anything - a
    driver that sees other files than its node's processes (Ray Client, a container, a
    path through ``/proc/self``) commits in the driver."""
    import os

    out: list[tuple[int, int] | None] = []
    for s in _sinks(sink):
        d = getattr(s, "directory", None)
        try:
            st = os.stat(d) if d is not None else None
        except OSError:
            st = None
        out.append(None if st is None else (st.st_dev, st.st_ino))
    return out


def writer_sees(writer: Any, sink: Sink | SinkSet, timeout: float, run_id: str) -> bool:
    """The writer sees the sink's directories as this process does (:func:`sink_places`);
    where it does not (or does not answer), it is killed and False returned: the sink then
    commits in the driver, as before the writer."""
    import contextlib
    import logging

    mine = sink_places(sink)
    try:
        theirs = ray.get(writer.places.remote(), timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any failure: commit in the driver
        theirs = exc
    if theirs == mine and None not in mine:
        return True
    logging.getLogger(__name__).warning(
        "run %s: the sink writer on this node sees the sink's directory as %r, this process "
        "as %r: committing in the driver", run_id, theirs, mine)
    with contextlib.suppress(Exception):
        ray.kill(writer, no_restart=True)
    return False


def stage_encoders(sink: Sink | SinkSet, outputs: Sequence[str],
                   read: set[str]) -> dict[str, Any]:
    """Per output stage that no stage reads, its sink's ``encode`` (if it has one): that
    stage encodes its own output, so the records are pickled nowhere."""
    of = _by_output(sink, outputs)
    return {sid: enc for sid in outputs if sid not in read
            and (enc := getattr(of[sid], "encode", None)) is not None}


def start_writer(sink: Sink | SinkSet, outputs: Sequence[str]) -> Any:
    """A :class:`SinkWriter` actor on this (the driver's) node, needing no CPU of its own."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    cls = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(SinkWriter)
    return cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                       ).remote(sink, list(outputs))
