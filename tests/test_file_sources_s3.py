"""File sources over an object store (a real S3-compatible server on loopback), and JSON lines
through a real Ray pipeline (issue 21 item 2).

The same replay rules hold on a bucket as on a directory: the same position gives the same
rows, an object changed under the position is ``SourceFileChanged`` naming it. A source is
given the bucket in the store-URL form that ``open_store`` takes (``?endpoint_url=...``,
credentials from the environment, never in the URL) or in pyarrow's own URI form. A JSON-lines
source on the bucket feeds a keyed aggregation whose stage actor is killed mid-run: the
committed Parquet output equals the failure-free reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
from parquet_stages import KeyedSum

from blockstore import StoreURLError
from stages import (
    CheckpointPolicy,
    JsonlSource,
    ParquetSink,
    ParquetSource,
    Pipeline,
    PipelineEvent,
    SourceFileChanged,
    StageSpec,
    run_reference,
)


def _fs(server: Any) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{server.port}", scheme="http",
                             region="us-east-1")


def _drain(src: Any, n: int, position: Any = None) -> tuple[list[int], list[Any]]:
    pos = src.initial_position() if position is None else position
    seen: list[int] = []
    positions: list[Any] = []
    while True:
        batch, pos = src.read(pos, n)
        rows = batch.num_rows if isinstance(batch, pa.Table) else len(batch)
        if not rows:
            return seen, positions
        seen.extend(batch.column("i").to_pylist() if isinstance(batch, pa.Table)
                    else [r["i"] for r in batch])
        positions.append(json.loads(json.dumps(pos)))  # what a run record keeps


def _put_parquet(server: Any, prefix: str, files: int, rows: int) -> None:
    fs = _fs(server)
    for k in range(files):
        table = pa.table({"i": list(range(k * rows, (k + 1) * rows)),
                          "key": [f"k{j % 7}" for j in range(rows)],
                          "value": [j % 13 for j in range(rows)]})
        with fs.open_output_stream(f"bp-test/{prefix}/part-{k:03d}.parquet") as f:
            pq.write_table(table, f, row_group_size=16)


def _put_jsonl(server: Any, prefix: str, files: int, rows: int) -> None:
    fs = _fs(server)
    for k in range(files):
        lines = [json.dumps({"i": k * rows + j, "key": f"k{j % 5}", "value": j % 11})
                 for j in range(rows)]
        with fs.open_output_stream(f"bp-test/{prefix}/{k:03d}.jsonl") as f:
            f.write(("\n".join(lines) + "\n").encode())


def test_parquet_source_on_a_bucket_replays_from_any_position(s3_server: Any) -> None:
    _put_parquet(s3_server, "src-pq", files=3, rows=40)
    for uri in (s3_server.url("src-pq"),  # the store-URL form open_store takes
                (f"s3://bp-test/src-pq?endpoint_override=127.0.0.1:{s3_server.port}"
                 "&scheme=http&region=us-east-1")):  # pyarrow's own form
        rows, positions = _drain(ParquetSource(uri), 25)
        assert rows == list(range(120)), uri
        for k, p in enumerate(positions):  # a fresh source object, as after a restart
            rest, _ = _drain(ParquetSource(uri), 9, p)
            assert rest == list(range(min(25 * (k + 1), 120), 120)), (uri, p)
    explicit = [f"s3://bp-test/src-pq/part-{k:03d}.parquet" for k in (2, 0)]
    rows, _ = _drain(ParquetSource(explicit, filesystem=_fs(s3_server)), 50)
    assert rows == list(range(80, 120)) + list(range(40))  # in the order given


def test_object_changed_under_the_position_is_named(s3_server: Any) -> None:
    _put_parquet(s3_server, "src-changed", files=2, rows=40)
    uri = s3_server.url("src-changed")
    _, positions = _drain(ParquetSource(uri), 10)
    inside = next(p for p in positions if p.get("file") == "part-001.parquet")
    _put_parquet(s3_server, "src-changed", files=2, rows=41)  # rewritten: another size
    with pytest.raises(SourceFileChanged) as err:
        ParquetSource(uri).read(inside, 10)
    assert "part-001.parquet" in str(err.value)


def test_credentials_in_a_source_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(StoreURLError) as err:
        ParquetSource("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bp-test/in?region=us-east-1")
    assert "wJalr" not in str(err.value) and "XUtnFEMI" not in str(err.value)


@pytest.mark.ray
def test_jsonl_on_a_bucket_through_a_pipeline_killed_mid_run_is_exact(
        ray_local: None, s3_server: Any, tmp_path: Path) -> None:
    _put_jsonl(s3_server, "src-jl", files=4, rows=250)
    src = JsonlSource(s3_server.url("src-jl"))
    ref = run_reference(src, [KeyedSum])
    assert len(ref) == 1000
    spec = StageSpec("agg", KeyedSum, str(tmp_path / "store"), block_size=64 * 1024,
                     lease_ttl=30.0)
    out = tmp_path / "out"
    killed: list[int] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not killed:
            killed.append(ev.step)
            ray.kill(p.handles["agg"], no_restart=True)

    p = Pipeline(src, [spec], ParquetSink(out, rows_per_file=200, fsync=False),
                 batch_size=50, max_in_flight=4, policy=CheckpointPolicy(every_records=150),
                 on_event=on_event)
    res = p.run()
    assert killed and res.recoveries >= 1 and res.finished
    assert res.records_in == 1000 and res.records_out == 1000
    rows = ds.dataset(out, format="parquet").to_table().to_pylist()
    assert rows == ref  # none lost, none duplicated, in order
