"""bench/batch_work.py: the demo's stages as batch stages compute what the record stages
compute (no Ray), so bench_batch compares the same job; speed itself is the bench's."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from bench.batch_work import BatchAggregates, BatchNormalize, BatchScorer, Passthrough
from bench.bench_batch import write_events
from blockpoint.demo_job import KeyedAggregates, Normalize, Scorer
from stages import ParquetSource, run_reference
from stages.actors.batches import run_stage


@pytest.mark.parametrize("batch_size", [1, 333, 4096])
def test_batch_stages_give_the_record_stages_output_and_state(tmp_path: Path,
                                                               batch_size: int) -> None:
    write_events(tmp_path / "ev", 6_000, files=3)
    src = ParquetSource(tmp_path / "ev")
    want = run_reference(src, [Normalize, functools.partial(KeyedAggregates, 1), Scorer],
                         batch_size=1000)
    got = run_reference(src, [BatchNormalize, functools.partial(BatchAggregates, 1),
                              BatchScorer], batch_size=batch_size)
    assert len(want) == 6_000 and got == want
    assert run_reference(src, [Passthrough], batch_size=batch_size) == run_reference(
        src, [], batch_size=batch_size)


def test_the_aggregates_state_matches_too(tmp_path: Path) -> None:
    write_events(tmp_path / "ev", 2_000, files=1)
    table, _ = ParquetSource(tmp_path / "ev").read(ParquetSource(tmp_path / "ev")
                                                    .initial_position(), 2_000)
    rec, bat = KeyedAggregates(1), BatchAggregates(1)
    s_rec, s_bat = rec.initial_state(), bat.initial_state()
    normalized = run_stage(BatchNormalize(), {}, table)
    run_stage(rec, s_rec, normalized)
    run_stage(bat, s_bat, normalized)
    assert s_rec["agg"] == s_bat["agg"]
    assert (s_rec["hist"] == s_bat["hist"]).all() and s_bat["hist"].sum() == 2_000
