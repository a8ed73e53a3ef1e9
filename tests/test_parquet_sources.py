"""File sources on real files: replay by position, stable order, and the specific errors.

``ParquetSource`` and ``JsonlSource`` (``stages/pipeline/file_sources.py``): every position a
read returns gives the same rows again (a fresh source object, as after a driver restart);
a file changed or removed under a position, a file that appears before it, a schema that
differs and a file that is not its format each stop the read with an error naming the file.
No Ray here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import (
    JsonlSource,
    ParquetSource,
    SourceFileChanged,
    SourceFileCorrupt,
    SourceSchemaMismatch,
)


def _write_parquet(path: Path, start: int, n: int, *, row_group_size: int = 30) -> None:
    table = pa.table({"i": pa.array(range(start, start + n), pa.int64()),
                      "key": [f"k{j % 7}" for j in range(start, start + n)]})
    tmp = path.with_name("_" + path.name)  # written hidden, renamed in: appears complete
    pq.write_table(table, tmp, row_group_size=row_group_size)
    os.replace(tmp, path)


def _drain(source: Any, batch: int, position: Any = None) -> tuple[list[int], list[Any]]:
    """Every row from ``position``; the positions after each read."""
    pos = source.initial_position() if position is None else position
    rows: list[int] = []
    positions = []
    while True:
        out, pos = source.read(pos, batch)
        if not len(out):
            return rows, positions
        rows += out.column("i").to_pylist() if isinstance(out, pa.Table) else [
            r["i"] for r in out]
        positions.append(pos)


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for k in range(4):
        _write_parquet(d / f"part-{k:03d}.parquet", 100 * k, 100)
    (d / "_ignored.parquet").write_bytes(b"not even parquet")
    (d / ".hidden.parquet").write_bytes(b"nor this")
    (d / "notes.txt").write_text("not a parquet file name")
    return d


def test_parquet_reads_every_row_once_in_name_order_and_replays_from_any_position(
        parquet_dir: Path) -> None:
    rows, positions = _drain(ParquetSource(parquet_dir), 47)
    assert rows == list(range(400))
    assert all(len(json.dumps(p)) < 250 for p in positions)  # small JSON values
    mid = [p for p in positions if "file" in p]
    assert {p["file"] for p in mid} >= {"part-000.parquet", "part-003.parquet"}
    assert any(p["part"] > 0 for p in mid)  # positions inside later row groups
    for k, p in enumerate(positions):  # a fresh source (a restarted driver) replays the rest
        rest, _ = _drain(ParquetSource(parquet_dir), 33, json.loads(json.dumps(p)))
        assert rest == list(range(min(47 * (k + 1), 400), 400)), p


def test_parquet_list_of_paths_in_given_order_and_columns(parquet_dir: Path) -> None:
    files = [parquet_dir / "part-002.parquet", parquet_dir / "part-000.parquet"]
    rows, _ = _drain(ParquetSource(files), 64)
    assert rows == list(range(200, 300)) + list(range(100))
    table, _ = ParquetSource(files, columns=["key"]).read({"done": 0, "digest": "0" * 16}, 5)
    assert table.column_names == ["key"] and table.num_rows == 5


def test_file_changed_under_the_position_is_named(parquet_dir: Path) -> None:
    src = ParquetSource(parquet_dir)
    _, pos = src.read(src.initial_position(), 150)  # inside part-001
    assert pos["file"] == "part-001.parquet"
    victim = parquet_dir / "part-001.parquet"
    _write_parquet(victim, 100, 101)  # rewritten: another size (and mtime)
    for reader in (src, ParquetSource(parquet_dir)):
        with pytest.raises(SourceFileChanged) as err:
            reader.read(pos, 10)
        assert err.value.path == str(victim) and str(victim) in str(err.value)
        assert err.value.recorded and err.value.found


def test_file_removed_under_the_position_is_named(parquet_dir: Path) -> None:
    src = ParquetSource(parquet_dir)
    _, pos = src.read(src.initial_position(), 250)  # inside part-002
    victim = parquet_dir / "part-002.parquet"
    victim.unlink()
    for reader in (src, ParquetSource(parquet_dir)):
        with pytest.raises(SourceFileChanged) as err:
            reader.read(pos, 10)
        assert err.value.path == str(victim) and err.value.found is None


def test_file_appearing_before_the_position_is_an_error_not_a_skip(parquet_dir: Path) -> None:
    src = ParquetSource(parquet_dir)
    _, pos = src.read(src.initial_position(), 250)
    _write_parquet(parquet_dir / "part-000a.parquet", 1000, 10)  # sorts before part-002
    with pytest.raises(SourceFileChanged) as err:
        ParquetSource(parquet_dir).read(pos, 10)
    assert err.value.path == str(parquet_dir)
    assert "sorts before the position" in str(err.value)


def test_schema_mismatch_names_the_file(parquet_dir: Path) -> None:
    odd = parquet_dir / "part-002.parquet"
    pq.write_table(pa.table({"i": pa.array([1, 2], pa.int32()), "key": ["a", "b"]}), odd)
    src = ParquetSource(parquet_dir)
    with pytest.raises(SourceSchemaMismatch) as err:
        _drain(src, 64)
    assert err.value.path == str(odd) and str(odd) in str(err.value)
    assert "int32" in err.value.found and "int64" in err.value.expected
    # A schema given up front is the one every file must have, the first file included.
    want = pa.schema([("i", pa.int32()), ("key", pa.string())])
    with pytest.raises(SourceSchemaMismatch) as err:
        ParquetSource(parquet_dir, schema=want).read({"done": 0, "digest": "0" * 16}, 5)
    assert err.value.path == str(parquet_dir / "part-000.parquet")


def test_corrupt_parquet_file_is_named(parquet_dir: Path) -> None:
    bad = parquet_dir / "part-001.parquet"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # torn footer
    src = ParquetSource(parquet_dir)
    rows: list[int] = []
    with pytest.raises(SourceFileCorrupt) as err:
        pos = src.initial_position()
        while True:
            out, pos = src.read(pos, 64)
            assert len(out)
            rows += out.column("i").to_pylist()
    assert err.value.path == str(bad) and str(bad) in str(err.value)
    assert rows == list(range(64))  # part-000 read up to the batch that reached the torn file


def test_jsonl_offsets_replay_and_bad_lines(tmp_path: Path) -> None:
    d = tmp_path / "jl"
    d.mkdir()
    for k in range(3):
        lines = [json.dumps({"i": 10 * k + j, "key": f"k{j}"}) for j in range(10)]
        text = "\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:])  # a blank line, no last \n
        (d / f"{k}.jsonl").write_text(text + ("\n" if k else ""))
    rows, positions = _drain(JsonlSource(d), 4)
    assert rows == list(range(30))
    for k, p in enumerate(positions):
        rest, _ = _drain(JsonlSource(d), 7, p)
        assert rest == list(range(min(4 * (k + 1), 30), 30)), p
    (d / "1.jsonl").write_text('{"i": 10}\n{"i": oops}\n')
    with pytest.raises(SourceFileChanged):  # the position inside 1.jsonl recorded its size
        JsonlSource(d).read(next(p for p in positions if p.get("file") == "1.jsonl"), 5)
    with pytest.raises(SourceFileCorrupt) as err:
        _drain(JsonlSource(d), 5)
    assert err.value.path == str(d / "1.jsonl") and err.value.offset == len('{"i": 10}\n')


def test_follow_reads_files_as_they_appear_and_ends_at_the_marker(tmp_path: Path) -> None:
    d = tmp_path / "landing"
    d.mkdir()
    _write_parquet(d / "0001.parquet", 0, 50)
    src = ParquetSource(d, follow=True)
    rows, positions = _drain(src, 20)
    assert rows == list(range(50)) and not src.exhausted(positions[-1])
    _write_parquet(d / "0002.parquet", 50, 30)
    more, positions = _drain(src, 20, positions[-1])
    assert more == list(range(50, 80))
    _write_parquet(d / "0003.parquet", 80, 5)
    (d / "_DONE").write_text("")
    assert not src.exhausted(positions[-1])  # a file listed before the marker is still read
    last, positions = _drain(src, 20, positions[-1])
    assert last == list(range(80, 85)) and src.exhausted(positions[-1])


@pytest.mark.parametrize("cls", [ParquetSource, JsonlSource])
def test_a_pickled_source_reads_as_the_original(parquet_dir: Path, tmp_path: Path,
                                                cls: type) -> None:
    """A copy sent to another process (the push path's source reader actor) starts with
    empty caches and reads the same rows - a copy of a source that had read already too, and
    one given its schema (a Parquet source's check needs it in the copy)."""
    import pickle

    if cls is JsonlSource:
        d = tmp_path / "jl"
        d.mkdir()
        for k in range(3):
            (d / f"p{k}.jsonl").write_text("".join(json.dumps({"i": 10 * k + j}) + "\n"
                                                   for j in range(10)))
        src, want = JsonlSource(d), list(range(30))
    else:
        src, want = ParquetSource(parquet_dir), list(range(400))
    copies = [pickle.loads(pickle.dumps(src))]
    src.read(src.initial_position(), 7)  # the caches now hold an open file
    copies.append(pickle.loads(pickle.dumps(src)))
    for copy in copies:
        assert _drain(copy, 13)[0] == want
    if cls is ParquetSource:
        schema = pq.read_schema(parquet_dir / "part-000.parquet")
        typed = pickle.loads(pickle.dumps(ParquetSource(parquet_dir, schema=schema)))
        assert _drain(typed, 50)[0] == want
        wrong = pickle.loads(pickle.dumps(ParquetSource(
            parquet_dir, schema=pa.schema([("i", pa.int32())]))))
        with pytest.raises(SourceSchemaMismatch, match="part-000.parquet"):
            _drain(wrong, 50)
