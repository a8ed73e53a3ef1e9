"""An exactly-once Parquet sink: each committed step's output is a directory of Parquet files.

Any Parquet reader - ``pyarrow.dataset``, ``pyarrow.parquet.read_table``, Ray Data's
``read_parquet``, Spark, DuckDB - must see committed steps only, exactly once, without
knowing anything of blockpoint. So unlike :class:`~stages.pipeline.sink.FileSink` (whose
readers consult the fencing record), visibility here is by **name**: those readers skip
names that start with ``_`` or ``.``, and a step becomes visible by one atomic rename.

Layout of the directory (``docs/FORMAT.md``, "Parquet sink layout")::

    step-000000001/part-00000.parquet    committed and published (visible)
    _step-000000002/part-00000.parquet   written, not yet committed by the run (hidden)
    _tmp-000000003-<pid>-<random>/       being written (hidden; removed at the next fence)
    _fence.json                          the fencing record (run id, epoch, published step)
    .lock                                the lock every write holds (flock)

The driver's protocol (``sink.py``) maps onto it:

1. ``commit(N, batch)``: the step's rows are written as ``part-*.parquet`` files
   (``rows_per_file`` rows each) into a fresh ``_tmp-*`` directory, each file fsynced, the
   directory fsynced, then renamed to ``_step-N`` (an earlier ``_step-N`` of a replayed
   step is removed first: it is hidden, and the run has not committed ``N``, so nobody may
   read it). Still invisible.
2. the run commits ``N`` (its status write, the commit point);
3. ``publish(N)``: every ``_step-M`` with ``M <= N`` is renamed to ``step-M`` - one rename
   per step, so a reader lists either none of a step's files or all of them - and the
   fencing record's published step moves to ``N``.

A crash after 1 leaves a hidden ``_step-N`` that the next driver's ``fence`` removes (the run
did not commit ``N``) or, after 2, publishes (it did). A step replayed after a failure
rewrites its hidden directory, so it is published once. ``discard_after`` (a consistent
fallback, ``recovery.py``) removes visible steps too: the only case where a reader could
have seen output that goes away, as with every sink.

Modes are the store's, as for ``FileSink``: files ``0600`` (created by this process with that
mode, before pyarrow writes them) and directories ``0700`` unless ``file_mode`` widens both.

This class writes local (or mounted shared) directories: publication by an atomic directory
rename. Given an object-store URL (``s3://``, ``gs://``, ``az://``, ``blockstore/urls.py``),
``ParquetSink(url, ...)`` returns an
:class:`~stages.pipeline.parquet_object_sink.ObjectParquetSink` instead: the same protocol
and layout names, by conditional writes (its module docstring says what readers of an
object store see).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from blockstore.fileio import FILE_MODE
from blockstore.urls import OBJECT_SCHEMES

from ..actors.batches import concat, num_rows, to_table
from .sink import FileSink, fsync_dir

__all__ = ["ParquetSink"]

#: The fencing record of a Parquet sink (hidden from Parquet readers by its ``_``).
PARQUET_FENCE_FILE = "_fence.json"


class ParquetSink(FileSink):
    """One directory of Parquet files per committed step in ``directory``.

    Args:
        directory: created if missing (mode ``0700``, or the search bits ``file_mode``
            implies).
        fsync: make each commit durable (``False`` only for throwaway output).
        file_mode: permission bits of the files (default ``0600``, the store's).
        rows_per_file: at most this many rows per Parquet file.
        row_group_size: rows per row group (default: pyarrow's).
        compression: Parquet compression codec (``"zstd"``, ``"snappy"``, ``"none"``, ...).
    """

    fence_file = PARQUET_FENCE_FILE

    def __new__(cls, directory: str | os.PathLike[str] | None = None, **kw: Any) -> Any:
        """A local sink, or for an object-store URL an ``ObjectParquetSink``."""
        if cls is ParquetSink and isinstance(directory, str) and _is_object_url(directory):
            from .parquet_object_sink import ObjectParquetSink

            return ObjectParquetSink(directory, **kw)
        return super().__new__(cls)

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True,
                 file_mode: int = FILE_MODE, rows_per_file: int = 1_000_000,
                 row_group_size: int | None = None, compression: str = "zstd") -> None:
        super().__init__(directory, fsync=fsync, file_mode=file_mode)
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.rows_per_file = rows_per_file
        self.row_group_size = row_group_size
        self.compression = compression

    def path(self, step: int) -> Path:
        """The visible directory of ``step``."""
        return self.directory / f"step-{step:09d}"

    def pending_path(self, step: int) -> Path:
        """The hidden directory of ``step`` written but not yet published."""
        return self.directory / f"_step-{step:09d}"

    # -- reads -----------------------------------------------------------------------------
    def files(self, step: int) -> list[Path]:
        """The Parquet files of a visible step, in order."""
        return sorted(self.path(step).glob("part-*.parquet"))

    def read_table(self, upto_step: int | None = None) -> Any:
        """Every committed row as one ``pyarrow.Table``, in step order (only steps
        ``<= upto_step`` if given)."""
        import pyarrow.parquet as pq

        tables = [pq.read_table(f) for s in self.committed_steps()
                  if upto_step is None or s <= upto_step for f in self.files(s)]
        return concat(tables) if tables else to_table([])

    def read_step(self, step: int) -> list[Any]:
        import pyarrow.parquet as pq

        return [r for f in self.files(step) for r in pq.read_table(f).to_pylist()]

    def committed_steps(self) -> list[int]:
        """Steps whose output is visible (a step directory without the ``_``)."""
        mark = self._read_fence()
        limit = None if mark is None else mark["step"]
        return [s for s in self._visible() if limit is None or s <= limit]

    # -- the hooks of FileSink ------------------------------------------------------------------
    #: A step's Parquet file is written whole, from the step's records (no batch encoding).
    encode = None
    #: Committed in the driver: it gets each batch's records as they come, overlapped with
    #: the run, where the sink writer would fetch all of a step's at its commit (bench_batch's
    #: record stages at 3,000,000 events, one run each: 108k rec/s through the writer against
    #: 130k in the driver).
    commit_anywhere = False
    #: On the push data path the output stages push their tables to the sink writer as they
    #: come (``stages/actors/pushing.py``): the writer commits, no record passes the driver.
    commit_pushed_anywhere = True

    def _write_step(self, step: int, records: Any, *, visible: bool) -> None:
        table = to_table(records)
        tmp = self.directory / f"_tmp-{step:09d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.mkdir(tmp, self.dir_mode)
        try:
            rows = num_rows(table)
            for part, start in enumerate(range(0, rows, self.rows_per_file)):
                self._write_file(tmp / f"part-{part:05d}.parquet",
                                 table.slice(start, self.rows_per_file))
            if self.fsync:
                fsync_dir(tmp)
            final = self.path(step) if visible else self.pending_path(step)
            self._move(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_file(self, path: Path, table: Any) -> None:
        import pyarrow.parquet as pq

        # Created here with the sink's mode (the umask applies), then filled by pyarrow,
        # which opens an existing file without changing its mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode))
        pq.write_table(table, path, compression=self.compression,
                       row_group_size=self.row_group_size)
        if self.fsync:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _move(self, src: Path, final: Path) -> None:
        """Rename ``src`` to ``final``, replacing a directory of the same step (put aside
        first: a rename cannot replace a non-empty directory)."""
        old = None
        if final.exists():
            old = self.directory / f"_old-{final.name}-{threading.get_ident()}"
            os.rename(final, old)
        os.rename(src, final)
        if self.fsync:
            fsync_dir(self.directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _published(self, step: int) -> None:
        for s in self._pending():
            if s <= step:
                self._move(self.pending_path(s), self.path(s))

    def _step_files(self) -> list[int]:
        return sorted(set(self._visible()) | set(self._pending()))

    def _remove_after(self, step: int) -> list[int]:
        gone = [s for s in self._step_files() if s > step]
        for s in gone:
            shutil.rmtree(self.path(s), ignore_errors=True)
            shutil.rmtree(self.pending_path(s), ignore_errors=True)
        for p in self.directory.glob("_tmp-*"):  # writes cut short by a crash
            shutil.rmtree(p, ignore_errors=True)
        for p in self.directory.glob("_old-*"):
            shutil.rmtree(p, ignore_errors=True)
        if gone and self.fsync:
            fsync_dir(self.directory)
        return gone

    def _steps(self, prefix: str) -> list[int]:
        out = []
        for p in self.directory.glob(f"{prefix}*"):
            try:
                out.append(int(p.name[len(prefix):]))
            except ValueError:
                continue
        return sorted(out)

    def _visible(self) -> list[int]:
        return self._steps("step-")

    def _pending(self) -> list[int]:
        return self._steps("_step-")


def _is_object_url(spec: str) -> bool:
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    return scheme in OBJECT_SCHEMES
