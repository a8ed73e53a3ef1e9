"""The pipeline room: sources, stage actors and sinks driven as one exactly-once run.

The top room of ``stages``: it imports ``stages.actors`` and ``stages.checkpoint``; nothing
in ``stages`` imports it.

| module          | owns |
|-----------------|------|
| `pipeline.py`   | `Pipeline`: source -> stage actors (a chain or a DAG) -> sinks, barriers, step commits |
| `graph.py`      | DAG pipelines: each stage's inputs, the order, one sink per output stage (`SinkSet`) |
| `barrier.py`    | one barrier in flight, until every checkpoint of its step is durable |
| `recovery.py`   | relaunching lost stages, rolling every stage back to one agreed step |
| `events.py`     | `PipelineEvent`, `PipelineResult` |
| `reference.py`  | `run_reference`: the failure-free output to compare with |
| `source.py`     | replayable sources; the generated event stream of the demo and tests |
| `files.py`      | file sources' listing, position (file, part, row) and checks; following a directory |
| `file_sources.py` | `ParquetSource`, `JsonlSource` |
| `sink.py`       | sinks that commit per step, idempotently, fenced by the driver's token |
| `parquet_sink.py` | `ParquetSink`: each committed step a directory of Parquet files, published by one rename |
| `parquet_object_sink.py` | `ParquetSink(url)` on an object store: hidden parts, a fencing record by conditional puts, create-only publication |
| `runs.py`       | `RunStore`: committed steps, pause, claim and resume exactly once |
| `run_claim.py`  | `RunClaim`: one driver's right to resume a paused run |
| `run_records.py`| the values of runs: `StageCommit`, `RunStep`, `RunStatus` |
| `run_driver.py` | `RunDriver`: the running driver's hold on its run; the fenced commit |
"""

from __future__ import annotations

from .events import PipelineEvent, PipelineResult
from .file_sources import JsonlSource, ParquetSource
from .files import FileSource
from .graph import SOURCE, SinkSet
from .parquet_sink import ParquetSink
from .pipeline import Pipeline
from .reference import run_reference
from .run_claim import RunClaim
from .run_driver import RunDriver
from .run_records import RunStatus, RunStep, StageCommit
from .runs import (
    RunClaimConflict,
    RunClaimLost,
    RunNotFoundError,
    RunNotPausedError,
    RunStepExistsError,
    RunStore,
)
from .sink import FenceToken, FileSink, Sink
from .source import GeneratedSource, Source

__all__ = [
    "FenceToken",
    "FileSink",
    "FileSource",
    "GeneratedSource",
    "JsonlSource",
    "ParquetSink",
    "ParquetSource",
    "Pipeline",
    "PipelineEvent",
    "PipelineResult",
    "RunClaim",
    "RunClaimConflict",
    "RunClaimLost",
    "RunDriver",
    "RunNotFoundError",
    "RunNotPausedError",
    "RunStatus",
    "RunStep",
    "RunStepExistsError",
    "RunStore",
    "SOURCE",
    "Sink",
    "SinkSet",
    "Source",
    "StageCommit",
    "run_reference",
]
