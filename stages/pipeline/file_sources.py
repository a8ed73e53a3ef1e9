"""Parquet and JSON-lines files as replayable sources (the machinery is in ``files.py``).

:class:`ParquetSource` reads row groups with pyarrow and gives each read as one
``pyarrow.Table`` (a batch: record stages see its rows as dicts, batch stages the format
they ask for, ``stages/actors/batches.py``); its position within a file is (row group, row in
it). Every file's schema must be the source's - the ``schema`` given, or the first listed
file's - else :class:`~stages.errors.SourceSchemaMismatch` names the file; a file that is not
Parquet (or has a torn footer) is :class:`~stages.errors.SourceFileCorrupt`.

:class:`JsonlSource` reads one JSON object per line and gives a list of records; its position
within a file is (byte offset of the next line, line number). A line that is not JSON is
``SourceFileCorrupt`` naming the file and the offset. Blank lines are skipped; a last line
without a newline is a record (files appear complete, ``files.py``).

The reading caches (an open Parquet file and its last row group, an open JSON-lines file)
live in the source object, in the driver; they are keyed by the file's fingerprint, so a
changed file is never read from a stale cache (the position check comes first anyway).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ..errors import SourceFileCorrupt, SourceSchemaMismatch
from .files import FilePosition, FileSource

__all__ = ["JsonlSource", "ParquetSource"]

#: Bytes read at once from a JSON-lines file.
JSONL_CHUNK = 1 << 20


class ParquetSource(FileSource):
    """Parquet files as a replayable source; each read is one ``pyarrow.Table``.

    Args:
        paths: a directory (``*.parquet`` files, sorted by name) or a list of files.
        columns: read only these columns (default: all).
        schema: the schema every file must have (default: the first listed file's);
            compared without schema metadata.
        follow, end_marker, poll_interval, filesystem: see :class:`~stages.pipeline.files.FileSource`.
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 columns: Sequence[str] | None = None, schema: Any = None,
                 follow: bool = False, end_marker: str | None = "_DONE",
                 poll_interval: float = 0.2, filesystem: Any = None) -> None:
        super().__init__(paths, suffixes=(".parquet", ".parq"), follow=follow,
                         end_marker=end_marker, poll_interval=poll_interval,
                         filesystem=filesystem)
        self.columns = list(columns) if columns is not None else None
        self.schema = schema
        self._c_file: tuple[str, int, int, Any] | None = None
        self._c_group: tuple[str, int, int, int, Any] | None = None
        self._c_schema: Any = schema

    def _empty_caches(self) -> dict[str, Any]:
        return {"_c_file": None, "_c_group": None, "_c_schema": self.schema}

    def _open(self, path: str, pos: FilePosition) -> Any:
        import pyarrow.parquet as pq

        c = self._c_file
        if c is not None and c[:3] == (path, pos.size, pos.mtime_ns):
            return c[3]
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(path))
        except OSError as exc:  # ArrowInvalid is an OSError... and a ValueError
            raise SourceFileCorrupt(f"source file {path} is not a readable Parquet file: "
                                    f"{exc}", path=path) from exc
        except ValueError as exc:
            raise SourceFileCorrupt(f"source file {path} is not a readable Parquet file: "
                                    f"{exc}", path=path) from exc
        self._check_schema(path, pf.schema_arrow)
        self._c_file = (path, pos.size, pos.mtime_ns, pf)
        return pf

    def _expected_schema(self) -> Any:
        if self._c_schema is None:
            import pyarrow.parquet as pq

            names = self._listing(0)
            first = self._path(names[0])
            try:
                self._c_schema = pq.read_schema(self.fs.open_input_file(first))
            except (OSError, ValueError) as exc:
                raise SourceFileCorrupt(f"source file {first} is not a readable Parquet "
                                        f"file: {exc}", path=first) from exc
        return self._c_schema

    def _check_schema(self, path: str, found: Any) -> None:
        expected = self._expected_schema()
        if not found.equals(expected, check_metadata=False):
            raise SourceSchemaMismatch(
                f"source file {path} has schema ({_schema_text(found)}), not the source's "
                f"({_schema_text(expected)})", path=path, expected=_schema_text(expected),
                found=_schema_text(found))

    def _row_group(self, path: str, pos: FilePosition, pf: Any, group: int) -> Any:
        c = self._c_group
        if c is not None and c[:4] == (path, pos.size, pos.mtime_ns, group):
            return c[4]
        try:
            table = pf.read_row_group(group, columns=self.columns)
        except (OSError, ValueError) as exc:
            raise SourceFileCorrupt(f"source file {path}: row group {group} is not "
                                    f"readable: {exc}", path=path) from exc
        self._c_group = (path, pos.size, pos.mtime_ns, group, table)
        return table

    def _read_file(self, path: str, pos: FilePosition, max_n: int
                   ) -> tuple[Any, int, FilePosition | None]:
        import pyarrow as pa

        pf = self._open(path, pos)
        groups = pf.metadata.num_row_groups
        group, row = pos.part, pos.row
        pieces = []
        n = 0
        while n < max_n and group < groups:
            rows = pf.metadata.row_group(group).num_rows
            if row >= rows:
                group, row = group + 1, 0
                continue
            take = min(max_n - n, rows - row)
            pieces.append(self._row_group(path, pos, pf, group).slice(row, take))
            n += take
            row += take
        while group < groups and row >= pf.metadata.row_group(group).num_rows:
            group, row = group + 1, 0
        if group >= groups:
            nxt = None
        else:
            nxt = FilePosition(pos.done, pos.digest, pos.file, pos.size, pos.mtime_ns, group,
                               row)
        table = pa.concat_tables(pieces) if len(pieces) > 1 else (pieces[0] if pieces else None)
        return table, n, nxt

    def _combine(self, pieces: list[Any]) -> Any:
        import pyarrow as pa

        if not pieces:
            return []  # nothing (for now): an empty read, as every source gives it
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)


def _schema_text(schema: Any) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


class JsonlSource(FileSource):
    """JSON-lines files (``*.jsonl``, ``*.ndjson``) as a replayable source of records.

    Args: as :class:`ParquetSource` (no ``columns`` or ``schema``).
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 follow: bool = False, end_marker: str | None = "_DONE",
                 poll_interval: float = 0.2, filesystem: Any = None) -> None:
        super().__init__(paths, suffixes=(".jsonl", ".ndjson"), follow=follow,
                         end_marker=end_marker, poll_interval=poll_interval,
                         filesystem=filesystem)

    def _read_file(self, path: str, pos: FilePosition, max_n: int
                   ) -> tuple[Any, int, FilePosition | None]:
        out: list[Any] = []
        offset, line_no = pos.part, pos.row
        with self.fs.open_input_file(path) as f:
            f.seek(offset)
            buf = b""
            eof = False
            while len(out) < max_n:
                nl = buf.find(b"\n")
                if nl < 0:
                    if eof:
                        if buf.strip():
                            nl = len(buf)  # a last line without its newline
                        else:
                            offset += len(buf)
                            buf = b""
                            break
                    else:
                        chunk = f.read(JSONL_CHUNK)
                        eof = not chunk
                        buf += chunk
                        continue
                line = buf[:nl]
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except ValueError as exc:
                        raise SourceFileCorrupt(
                            f"source file {path}: line {line_no + 1} (byte {offset}) is not "
                            f"JSON: {exc}", path=path, offset=offset) from exc
                consumed = min(nl + 1, len(buf))
                offset += consumed
                line_no += 1
                buf = buf[consumed:]
            at_end = offset >= pos.size
        if at_end:
            return out, len(out), None
        return out, len(out), FilePosition(pos.done, pos.digest, pos.file, pos.size,
                                           pos.mtime_ns, offset, line_no)

    def _combine(self, pieces: list[Any]) -> list[Any]:
        return [r for piece in pieces for r in piece]
