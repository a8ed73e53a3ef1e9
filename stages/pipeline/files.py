"""Replayable sources over real files: the listing, the position, and what they check.

A file source (:class:`~stages.pipeline.file_sources.ParquetSource`,
:class:`~stages.pipeline.file_sources.JsonlSource`) is a :class:`~stages.pipeline.source.Source`:
the same position always gives the same records. That holds only while the files are the
ones the position was taken from, so a position records enough to tell, and a read that
cannot give the same records stops the run with a :class:`~stages.errors.SourceError`
naming the file - never a silent skip or a second read.

**Order.** Files are read one after another in a stable order: a directory's files sorted by
name (files whose name starts with ``_`` or ``.`` are ignored, as pyarrow and Spark do, so a
writer can write ``_x.tmp`` and rename it in); an explicit list of paths in the order given.

**The position** is a small JSON object (``docs/FORMAT.md``, "File source positions")::

    {"done": 3, "digest": "9c0f...", "file": "part-0003.parquet", "size": 1234,
     "mtime_ns": 1733150000123456789, "part": 2, "row": 100}

``done`` files are read completely; ``digest`` is a chained BLAKE2b-64 of their names in
order, so a file that appears before the position (or one that is removed from before it)
is noticed instead of being skipped; ``file`` is the file being read, with the size and
modification time it had when reading it began (a file changed or removed under the
position is :class:`~stages.errors.SourceFileChanged`), and ``part``/``row`` say where in
it: a Parquet row group and the row in it, or a JSON-lines byte offset and line number.
Between files (``file`` absent) the position is just ``done`` and ``digest``.

**Following a directory** (``follow=True``): files that appear later are read when the
source reaches them, so a growing directory is a stream. New files must sort after the
ones already read (time-stamped or numbered names; anything else is ``SourceFileChanged``)
and must appear complete (written under a ``_``/``.`` name, then renamed). The stream ends
when ``end_marker`` (default ``_DONE``) exists and every file listed after it was seen has
been read; until then an empty read means "nothing yet" (:meth:`FileSource.exhausted`).
Without ``follow``, the input is the files listed at this source object's first read.

Files are reached through pyarrow's filesystems: a local path, an ``s3://`` URL in the
store-URL form (``?endpoint_url=...&region=...``, as for ``open_store``), any URI
``pyarrow.fs.FileSystem.from_uri`` understands (``s3://``, ``gs://``, ...), or an explicit
``filesystem`` (:func:`filesystem_for`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SourceFileChanged

__all__ = ["EMPTY_DIGEST", "FilePosition", "FileSource", "chain_digest", "filesystem_for"]

#: The digest of no files.
EMPTY_DIGEST = "0" * 16


def filesystem_for(uri: str) -> Any:
    """The ``pyarrow.fs`` filesystem of a source URI.

    An ``s3://`` URL in the project's store-URL form (``s3://BUCKET/PREFIX?endpoint_url=
    http://HOST:PORT&region=R``, ``blockstore/urls.py``: validated the same way, so
    credentials in it are refused) becomes an ``S3FileSystem`` at that endpoint; anything
    else is whatever ``pyarrow.fs.FileSystem.from_uri`` makes of it (``s3://`` with
    pyarrow's own options such as ``endpoint_override``, ``gs://``, ``hdfs://``, ...).
    Credentials come from where the AWS SDK looks (the environment, the shared credentials
    file, the instance profile), never from the URL.
    """
    import pyarrow.fs as pafs

    from blockstore.urls import OBJECT_SCHEMES, parse_store_url

    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    head, _, query = rest.partition("?")
    if scheme not in OBJECT_SCHEMES:
        return pafs.FileSystem.from_uri(uri)[0]
    keys = {kv.partition("=")[0] for kv in query.split("&") if kv}
    if keys - OBJECT_SCHEMES[scheme]:  # pyarrow's own options (endpoint_override, ...)
        parse_store_url(f"{scheme}://{head}")  # still: no credentials in the URL
        return pafs.FileSystem.from_uri(uri)[0]
    url = parse_store_url(uri)  # the store-URL form: validated, credentials refused
    if scheme != "s3":
        return pafs.FileSystem.from_uri(f"{scheme}://{head}")[0]
    kw: dict[str, Any] = {}
    endpoint = url.option("endpoint_url")
    if endpoint:
        from urllib.parse import urlsplit

        parts = urlsplit(endpoint)
        kw["endpoint_override"] = parts.netloc
        kw["scheme"] = parts.scheme
    region = url.option("region") or os.environ.get("AWS_REGION") or \
        os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def chain_digest(previous: str, name: str) -> str:
    """The digest of the files read so far, after ``name``: BLAKE2b-64 of the previous
    digest and the name (UTF-8), as 16 hex digits."""
    h = hashlib.blake2b(digest_size=8)
    h.update(previous.encode("ascii"))
    h.update(b"\0")
    h.update(name.encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class FilePosition:
    """A file source's position (the JSON value, parsed); see the module docstring."""

    done: int = 0
    digest: str = EMPTY_DIGEST
    file: str | None = None
    size: int = 0
    mtime_ns: int = 0
    part: int = 0
    row: int = 0

    @classmethod
    def parse(cls, value: Any) -> FilePosition:
        if not isinstance(value, dict) or not isinstance(value.get("done"), int):
            raise TypeError(f"not a file source position: {value!r}")
        if value.get("file") is None:
            return cls(int(value["done"]), str(value["digest"]))
        return cls(int(value["done"]), str(value["digest"]), str(value["file"]),
                   int(value["size"]), int(value["mtime_ns"]), int(value["part"]),
                   int(value["row"]))

    def to_json(self) -> dict[str, Any]:
        if self.file is None:
            return {"done": self.done, "digest": self.digest}
        return {"done": self.done, "digest": self.digest, "file": self.file,
                "size": self.size, "mtime_ns": self.mtime_ns, "part": self.part,
                "row": self.row}

    def finished_file(self) -> FilePosition:
        """The position after the whole of :attr:`file`."""
        assert self.file is not None
        return FilePosition(self.done + 1, chain_digest(self.digest, self.file))


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


class FileSource:
    """What both file sources share: the listing, the position checks, following.

    Subclasses implement :meth:`_read_file` (rows of one file from a position in it) and
    :meth:`_combine` (one read's pieces as one batch).

    Args:
        paths: a directory (local path or URI), or a list of files (read in that order).
        suffixes: a directory's files are those whose name ends with one of these.
        follow: keep reading files that appear in the directory (a stream).
        end_marker: with ``follow``, the file whose presence ends the stream (``None``:
            never ends by itself; stop with ``Pipeline.run(max_steps=...)``).
        poll_interval: seconds the driver waits before asking a followed directory again.
        filesystem: a ``pyarrow.fs.FileSystem`` (default: from the path or URI).
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 suffixes: tuple[str, ...], follow: bool = False,
                 end_marker: str | None = "_DONE", poll_interval: float = 0.2,
                 filesystem: Any = None) -> None:
        import pyarrow.fs as pafs

        self.follow = follow
        self.end_marker = end_marker
        self.poll_interval = poll_interval
        self.suffixes = suffixes
        if isinstance(paths, (str, os.PathLike)):
            first = os.fspath(paths)
            self._explicit: list[str] | None = None
        else:
            items = [os.fspath(p) for p in paths]
            if not items:
                raise ValueError("a file source needs a directory or at least one file")
            if follow:
                raise ValueError("follow=True needs a directory, not a list of files")
            first = items[0]
            self._explicit = items
        if filesystem is None:
            filesystem = filesystem_for(first) if "://" in first else pafs.LocalFileSystem()
        self.fs = filesystem
        if self._explicit is None:
            self.root = self._fs_path(first)
        else:
            self.root = None
            self._explicit = [self._fs_path(p) for p in self._explicit]
        self._names: list[str] | None = None
        self._digests: list[str] = [EMPTY_DIGEST]

    def __getstate__(self) -> dict[str, Any]:  # the caches stay behind, emptied
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_c")} | {
            "_names": None, "_digests": [EMPTY_DIGEST]} | self._empty_caches()

    def _empty_caches(self) -> dict[str, Any]:
        """The reading caches (attributes named ``_c*``) as a fresh copy holds them: a
        copy read in another process (the source reader actor) starts with these."""
        return {}

    def _fs_path(self, p: str) -> str:
        if "://" in p:  # the filesystem's path: no scheme, no query (options, endpoint)
            return p.split("://", 1)[1].split("?", 1)[0].rstrip("/")
        return os.path.abspath(p)

    # -- the Source protocol ---------------------------------------------------------------
    def initial_position(self) -> dict[str, Any]:
        return FilePosition().to_json()

    def read(self, position: Any, max_n: int) -> tuple[Any, dict[str, Any]]:
        """Up to ``max_n`` rows from ``position`` (across files) and the position after them.

        Raises ``SourceFileChanged``, ``SourceSchemaMismatch`` or ``SourceFileCorrupt``
        (each naming the file) when the input is not what the position was taken from.
        """
        pos = FilePosition.parse(position)
        names = self._listing(pos.done)
        self._check_before(pos, names)
        pieces: list[Any] = []
        left = max(0, int(max_n))
        while left > 0:
            if pos.file is None:
                if pos.done >= len(names) and self.follow:
                    names = self._listing(pos.done, refresh=True)
                if pos.done >= len(names):
                    break
                name = names[pos.done]
                size, mtime = self._stat(name, None)
                pos = FilePosition(pos.done, pos.digest, name, size, mtime, 0, 0)
            else:
                self._check_current(pos, names)
            piece, n, nxt = self._read_file(self._path(pos.file), pos, left)
            if n:
                pieces.append(piece)
                left -= n
            pos = nxt if nxt is not None else pos.finished_file()
        return self._combine(pieces), pos.to_json()

    def exhausted(self, position: Any) -> bool:
        """Whether an empty read at ``position`` ends the stream: always without ``follow``;
        with it, once ``end_marker`` exists and no file after the position is listed."""
        if not self.follow:
            return True
        if self.end_marker is None:
            return False
        import pyarrow.fs as pafs

        marker = self.fs.get_file_info(self._path(self.end_marker))
        if marker.type == pafs.FileType.NotFound:
            return False
        pos = FilePosition.parse(position)
        names = self._listing(pos.done, refresh=True)  # files renamed in before the marker
        return pos.done >= len(names) and pos.file is None

    # -- for subclasses ---------------------------------------------------------------------
    def _read_file(self, path: str, pos: FilePosition, max_n: int
                   ) -> tuple[Any, int, FilePosition | None]:
        """``(rows, how many, position after them)`` of the file at ``path`` from ``pos``;
        the position is ``None`` when the file's end was reached."""
        raise NotImplementedError

    def _combine(self, pieces: list[Any]) -> Any:
        raise NotImplementedError

    def _path(self, name: str) -> str:
        return name if self.root is None else f"{self.root.rstrip('/')}/{name}"

    # -- listing and checks -------------------------------------------------------------------
    def _listing(self, done: int, *, refresh: bool = False) -> list[str]:
        if self._names is None or refresh or done > len(self._names):
            self._names = self._list()
            digests = [EMPTY_DIGEST]
            for name in self._names:
                digests.append(chain_digest(digests[-1], name))
            self._digests = digests
        return self._names

    def _list(self) -> list[str]:
        if self._explicit is not None:
            return list(self._explicit)
        import pyarrow.fs as pafs

        assert self.root is not None
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.File and not _hidden(i.base_name)
                      and i.base_name.endswith(self.suffixes))

    def _where(self) -> str:
        return self.root if self.root is not None else "the source's file list"

    def _check_before(self, pos: FilePosition, names: list[str]) -> None:
        if pos.done <= len(names) and self._digests[pos.done] == pos.digest:
            return
        if self.follow and pos.done > len(names):
            names = self._listing(pos.done, refresh=True)
            if pos.done <= len(names) and self._digests[pos.done] == pos.digest:
                return
        shown = names[:pos.done][-3:]
        raise SourceFileChanged(
            f"the files before the position in {self._where()} are not the {pos.done} it "
            f"read (a file appeared that sorts before the position, or one was removed); "
            f"now {min(pos.done, len(names))} of {len(names)} listed files sort there, the "
            f"last {shown}", path=self._where(), recorded=f"done={pos.done} digest={pos.digest}",
            found=f"listed={len(names)}")

    def _check_current(self, pos: FilePosition, names: list[str]) -> None:
        assert pos.file is not None
        if pos.done >= len(names) or names[pos.done] != pos.file:
            here = names[pos.done] if pos.done < len(names) else None
            raise SourceFileChanged(
                f"source file {self._path(pos.file)} under the position is gone from "
                f"{self._where()} (file #{pos.done} is now {here!r})",
                path=self._path(pos.file), recorded=self._fingerprint(pos.size, pos.mtime_ns),
                found=None)
        self._stat(pos.file, pos)

    def _stat(self, name: str, pos: FilePosition | None) -> tuple[int, int]:
        """``(size, mtime_ns)`` of ``name``; checked against ``pos`` when given."""
        import pyarrow.fs as pafs

        path = self._path(name)
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise SourceFileChanged(
                f"source file {path} is gone", path=path, found=None,
                recorded=None if pos is None else self._fingerprint(pos.size, pos.mtime_ns))
        size = int(info.size)
        mtime = int(info.mtime_ns) if info.mtime_ns is not None else 0
        if pos is not None and (size, mtime) != (pos.size, pos.mtime_ns):
            raise SourceFileChanged(
                f"source file {path} changed under the recorded position: it was "
                f"{self._fingerprint(pos.size, pos.mtime_ns)} when reading began, now "
                f"{self._fingerprint(size, mtime)}", path=path,
                recorded=self._fingerprint(pos.size, pos.mtime_ns),
                found=self._fingerprint(size, mtime))
        return size, mtime

    @staticmethod
    def _fingerprint(size: int, mtime_ns: int) -> str:
        return f"size={size} mtime_ns={mtime_ns}"

    def wait_for_more(self) -> None:
        """What the driver does when a followed directory has nothing new: wait a while."""
        time.sleep(self.poll_interval)
