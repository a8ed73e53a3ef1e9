"""Sinks that commit a pipeline's output per committed step, idempotently.

Exactly-once output needs two things from a sink: output becomes visible only for a step the
pipeline commits, and committing the same step twice (after a driver crash between the sink
commit and the run record, the step is replayed and committed again) leaves one copy.
:class:`FileSink` gets both from the filesystem: step ``N``'s records are written to a
temporary file, fsynced, and renamed to ``step-<N>.jsonl`` (then the directory is fsynced);
a second commit of ``N`` atomically replaces the file with the same records. Readers list
only ``step-*.jsonl`` files, so a half-written temporary file is never output.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from blockstore import canonical_json

__all__ = ["FileSink", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """Where committed output goes; ``commit`` must be idempotent per step."""

    def commit(self, step: int, records: Sequence[Any]) -> None:
        """Make ``records`` the output of ``step``, durably and atomically."""
        ...

    def committed_steps(self) -> list[int]:
        """Steps with committed output, ascending."""
        ...


class FileSink:
    """One JSON-lines file per committed step in ``directory``.

    Args:
        directory: created if missing.
        fsync: make each commit durable (``False`` only for throwaway output).
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:09d}.jsonl"

    def commit(self, step: int, records: Sequence[Any]) -> None:
        """Write step ``step`` atomically (replacing an earlier commit of the same step)."""
        data = b"".join(canonical_json(r) + b"\n" for r in records)
        final = self.path(step)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def committed_steps(self) -> list[int]:
        out = []
        for p in self.directory.glob("step-*.jsonl"):
            try:
                out.append(int(p.name[5:-6]))
            except ValueError:
                continue
        return sorted(out)

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

    def discard_after(self, step: int) -> list[int]:
        """Remove output of steps ``> step`` (output of steps no run record committed)."""
        gone = [s for s in self.committed_steps() if s > step]
        for s in gone:
            self.path(s).unlink(missing_ok=True)
        return gone
