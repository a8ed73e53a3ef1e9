"""Sinks that commit a pipeline's output per committed step, idempotently and fenced.

Exactly-once output needs three things from a sink: output becomes visible only for a step
the run committed; committing the same step twice (a driver died after the sink commit,
the step is replayed and committed again) leaves one copy; and a driver that was taken over
(``stages/pipeline/run_driver.py``) can no longer write. The pipeline drives a sink in this order
for every step ``N``, all under its driver's :class:`FenceToken` (run id, control-lease
epoch):

1. ``fence(token, c)`` once at start: refuse older tokens from now on, drop output after the
   run's committed step ``c``, publish everything up to ``c``;
2. ``commit(N, records, token=...)``: write ``N``'s output durably, not yet visible;
3. the run commits ``N`` (its status write under the control lease, the commit point);
4. ``publish(N, token=...)``: make output up to ``N`` visible.

A crash between 2 and 3 leaves invisible output that the next ``fence`` drops; one between
3 and 4 leaves a committed step unpublished until the next ``fence`` publishes it. So a
reader never sees output of a step the run did not commit.

:class:`FileSink` does it with files: step ``N``'s records are written to a temporary file,
fsynced, and renamed to ``step-<N>.jsonl`` (then the directory is fsynced); a second commit
of ``N`` atomically replaces the file with the same records. The fencing record
``fence.json`` (run id, highest epoch seen, published step) is replaced the same way, and
every write checks it under an ``flock`` of ``.lock`` in the directory, so the check is
atomic with the write across processes. Readers list ``step-*.jsonl`` files up to the
published step; a half-written temporary file is never output. A directory without a
fencing record (never used by a fenced driver) shows every step file.

Modes: like the store's (``blockstore/fileio.py``), a sink's files are created ``0600`` and
the directory it creates ``0700`` - output is often derived from the same private state.
``file_mode`` widens that on purpose (``0o640``, ``0o644``); the directory then gets the
matching search bits (``0750``, ``0755``). The process umask still applies on top. A
directory that already exists keeps its mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from blockstore import canonical_json
from blockstore.fileio import FILE_MODE

from .run_errors import SinkFencedError
from .jsonl import encode_jsonl

__all__ = ["EncodedParts", "FenceToken", "FileSink", "Sink", "encode_jsonl"]

#: The fencing record and the lock file of a :class:`FileSink` directory.
FENCE_FILE = "fence.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True, slots=True)
class FenceToken:
    """What a driver's sink writes carry: its run and its control-lease epoch."""

    run_id: str
    epoch: int


def check_fence(token: FenceToken, mark: Mapping[str, Any], *, sink: str, path: str) -> None:
    """Refuse ``token`` unless it may write under the fencing record ``mark``.

    A token may write when it is of the record's run (``mark["run_id"]``) at the record's
    epoch or a newer one; otherwise ``SinkFencedError`` names both, the sink ``sink`` (as
    the caller may show it: redacted) and ``path``, where the record is kept. Every sink
    applies this one rule before it changes anything.
    """
    if token.run_id != mark["run_id"] or token.epoch < mark["epoch"]:
        raise SinkFencedError(
            f"sink {sink} refused a write of run {token.run_id!r} epoch "
            f"{token.epoch}: it is fenced by run {mark['run_id']!r} epoch {mark['epoch']}",
            run_id=token.run_id, epoch=token.epoch, current_epoch=mark["epoch"], path=path)


@runtime_checkable
class Sink(Protocol):
    """Where committed output goes; the call order is in the module docstring.

    ``commit`` must be idempotent per step; every method given a token must refuse one older
    than the newest it has seen for the run (``SinkFencedError``) and then change nothing.
    """

    def fence(self, token: FenceToken, committed_step: int) -> None:
        """Start a driver: refuse older tokens, keep output only up to ``committed_step``
        and make it visible."""
        ...

    def commit(self, step: int, records: Sequence[Any], *,
               token: FenceToken | None = None) -> None:
        """Make ``records`` the output of ``step``, durably and atomically (not yet
        visible to readers once the sink was fenced)."""
        ...

    def publish(self, step: int, *, token: FenceToken) -> None:
        """The run committed ``step``: make output up to it visible."""
        ...

    def discard_after(self, step: int, *, token: FenceToken | None = None) -> list[int]:
        """Forget the output of steps ``> step``; return them."""
        ...

    def committed_steps(self) -> list[int]:
        """Steps with visible (committed) output, ascending."""
        ...


@dataclass(frozen=True, slots=True)
class EncodedParts:
    """A step's output already encoded by the sink's ``encode``, batch by batch (by the
    stages that made it, or by the pipeline's sink writer at the commit: ``sink_writer.py``)."""

    parts: list[bytes]
    rows: int


class FileSink:
    """One JSON-lines file per committed step in ``directory``.

    (Also the base of :class:`~stages.pipeline.parquet_sink.ParquetSink`: the fencing record,
    its lock and the atomic replace are here; a subclass writes and publishes its own step
    files through :meth:`_write_step`, :meth:`_published`, :meth:`_step_files` and
    :meth:`_remove_after`.)

    Args:
        directory: created if missing (mode ``0700``, or the search bits ``file_mode`` implies).
        fsync: make each commit durable (``False`` only for throwaway output).
        file_mode: permission bits of the step files and the fencing record (default
            ``0600``, the store's); e.g. ``0o644`` to let other users read the output.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True,
                 file_mode: int = FILE_MODE) -> None:
        if not isinstance(file_mode, int) or isinstance(file_mode, bool) \
                or file_mode & ~0o666 or (file_mode & 0o600) != 0o600:
            raise ValueError(f"file_mode must be read/write bits including the owner's 0o600 "
                             f"(e.g. 0o600, 0o640, 0o644), got {file_mode!r}")
        # Absolute: the sink writer (another process, another working directory) must
        # commit where this process fences and publishes.
        self.directory = Path(directory).absolute()
        self.file_mode = file_mode
        # Search (x) bits for whoever may read the files; e.g. 0o600 -> 0o700, 0o644 -> 0o755.
        self.dir_mode = file_mode | ((file_mode & 0o444) >> 2)
        self.directory.mkdir(parents=True, exist_ok=True, mode=self.dir_mode)
        self.fsync = fsync

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:09d}.jsonl"

    #: The fencing record's name in the directory.
    fence_file = FENCE_FILE
    #: ``commit`` touches only this sink's files, so a pipeline may run it in its sink writer
    #: (another process on the driver's machine: ``stages/pipeline/sink_writer.py``); a
    #: subclass whose ``commit`` keeps state in memory or acts on this process sets False.
    commit_anywhere = True

    # -- writes --------------------------------------------------------------------------------
    def fence(self, token: FenceToken, committed_step: int) -> None:
        """Refuse tokens older than ``token`` from now on, drop output after
        ``committed_step`` and publish up to it. A directory fenced by another run is taken
        over by this one (its output after ``committed_step`` dropped, as for any run)."""
        with self._locked():
            mark = self._read_fence()
            if mark is not None and mark["run_id"] == token.run_id:
                self._check(token, mark)
            self._write_fence(token, committed_step)
            self._remove_after(committed_step)
            self._published(committed_step)

    def commit(self, step: int, records: Sequence[Any], *,
               token: FenceToken | None = None) -> None:
        """Write step ``step`` atomically (replacing an earlier commit of the same step).

        ``records`` may be a batch (a ``pyarrow.Table``: its rows are the records)."""
        with self._locked():
            mark = self._read_fence()
            if token is not None and mark is not None:
                self._check(token, mark)
                if token.epoch > mark["epoch"]:
                    self._write_fence(token, mark["step"])
            self._write_step(step, records, visible=mark is None)

    def publish(self, step: int, *, token: FenceToken) -> None:
        """Make output up to ``step`` visible (the run committed it)."""
        with self._locked():
            mark = self._read_fence()
            if mark is not None:
                self._check(token, mark)
            self._published(step)
            self._write_fence(token, step)

    def discard_after(self, step: int, *, token: FenceToken | None = None) -> list[int]:
        """Remove output of steps ``> step`` (output of steps no run record commits)."""
        with self._locked():
            mark = self._read_fence()
            if mark is not None and token is not None:
                self._check(token, mark)
            if mark is not None and mark["step"] > step:
                self._write_fence(FenceToken(mark["run_id"], mark["epoch"]), step)
            return self._remove_after(step)

    # -- reads ---------------------------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        """Steps whose output is visible: published by the run (or every step file, in a
        directory no fenced driver used)."""
        mark = self._read_fence()
        limit = None if mark is None else mark["step"]
        return [s for s in self._step_files() if limit is None or s <= limit]

    def read_step(self, step: int) -> list[Any]:
        with open(self.path(step), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def iter_records(self, upto_step: int | None = None) -> Iterator[Any]:
        """Every committed record in step order (only steps ``<= upto_step`` if given)."""
        for s in self.committed_steps():
            if upto_step is not None and s > upto_step:
                break
            yield from self.read_step(s)

    def read_all(self, upto_step: int | None = None) -> list[Any]:
        return list(self.iter_records(upto_step))

    # -- internals -----------------------------------------------------------------------------
    #: ``encode(records) -> bytes``: a batch as this sink's step file holds it (JSON lines),
    #: for a commit of :class:`EncodedParts`; a plain function (it travels to the stage that
    #: makes the output, by reference), or ``None`` for a sink whose files are written whole.
    encode: Any = staticmethod(encode_jsonl)

    def _write_step(self, step: int, records: Any, *, visible: bool) -> None:
        """Write ``step``'s output durably; ``visible``: the directory was never fenced (so
        nothing is hidden). Step files of this sink are visible by the fencing record."""
        if isinstance(records, EncodedParts):
            data = b"".join(records.parts)
        else:
            data = encode_jsonl(records)
        self._replace(self.path(step), data)

    def _published(self, step: int) -> None:
        """Output up to ``step`` is committed: make it visible (here, the fencing record's
        step does that, written by the caller)."""

    def _step_files(self) -> list[int]:
        out = []
        for p in self.directory.glob("step-*.jsonl"):
            try:
                out.append(int(p.name[5:-6]))
            except ValueError:
                continue
        return sorted(out)

    def _remove_after(self, step: int) -> list[int]:
        gone = [s for s in self._step_files() if s > step]
        for s in gone:
            self.path(s).unlink(missing_ok=True)
        return gone

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the directory's write lock (across processes) for a check and its write."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _read_fence(self) -> dict[str, Any] | None:
        try:
            with open(self.directory / self.fence_file, encoding="utf-8") as f:
                mark = json.load(f)
        except FileNotFoundError:
            return None
        return {"run_id": str(mark["run_id"]), "epoch": int(mark["epoch"]),
                "step": int(mark["step"])}

    def _check(self, token: FenceToken, mark: dict[str, Any]) -> None:
        check_fence(token, mark, sink=str(self.directory),
                    path=str(self.directory / self.fence_file))

    def _write_fence(self, token: FenceToken, step: int) -> None:
        self._replace(self.directory / self.fence_file, canonical_json(
            {"run_id": token.run_id, "epoch": token.epoch, "step": step}))

    def _replace(self, final: Path, data: bytes) -> None:
        """Atomically make ``data`` the content of ``final`` (write, fsync, rename, fsync the
        directory)."""
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.file_mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.fsync:
            fsync_dir(self.directory)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (after a rename into it)."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
