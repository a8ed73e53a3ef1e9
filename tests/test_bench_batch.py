"""bench/batch_work.py: the demo's stages as batch stages compute what the record stages
compute (no Ray), so bench_batch compares the same job; speed itself is the bench's."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.batch_work import (
    BatchAggregates,
    BatchNormalize,
    BatchScorer,
    Passthrough,
    ewma_chain,
)
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


def _keyed_batches(rng: np.random.Generator, keys: int, hot: float, low: int, high: int,
                   batches: int, rows: int) -> list[list[dict[str, Any]]]:
    """Normalized-looking records: ``hot`` of the rows on key k0, the rest spread."""
    out, i = [], 0
    for _ in range(batches):
        batch = []
        for _ in range(rows):
            k = 0 if rng.random() < hot else int(rng.integers(0, keys))
            batch.append({"i": i, "key": f"k{k}", "seq": i, "value": int(rng.integers(low, high))})
            i += 1
        out.append(batch)
    return out


@pytest.mark.parametrize(("keys", "hot", "low", "high"), [
    (16, 0.0, 0, 1000),            # the demo's shape: all lanes vectorised
    (3, 0.0, -50, 50),             # fewer keys than MIN_LANES: all in Python
    (40, 0.9, 0, 1000),            # a hot key: a long Python tail after the lanes
    (500, 0.0, -10**6, 10**6),     # many keys, negative and wide values
    (2000, 0.2, -(2 ** 51), 2 ** 51),  # keys x value range past int64: the per-key scans
])
def test_scorer_and_aggregates_lanes_match_the_record_stages(keys: int, hot: float, low: int,
                                                            high: int) -> None:
    import pyarrow as pa

    batches = _keyed_batches(np.random.default_rng(keys), keys, hot, low, high, 4, 1_500)
    for rec, bat in ((Scorer(), BatchScorer()), (KeyedAggregates(1), BatchAggregates(1))):
        s_rec, s_bat = rec.initial_state(), bat.initial_state()
        for batch in batches:
            want = run_stage(rec, s_rec, batch)
            got = run_stage(bat, s_bat, pa.Table.from_pylist(batch)).to_pylist()
            assert got == want
        if isinstance(rec, Scorer):
            assert s_rec == s_bat
        else:
            assert s_rec["agg"] == s_bat["agg"] and (s_rec["hist"] == s_bat["hist"]).all()


def test_the_ewma_chain_is_the_record_stages_expression() -> None:
    """ewma_chain against ``round(0.9 * prev + x, 6)`` step by step: exact-half products,
    results rounding to -0.0 and 0.0, negative values, and a chain too large for the float
    rule (which must then use round throughout)."""
    rng = np.random.default_rng(21)

    def plain(prev: float, xs: list[float]) -> list[float]:
        out = []
        for x in xs:
            prev = round(0.9 * prev + x, 6)
            out.append(prev)
        return out

    def bits(values: list[float]) -> list[int]:
        return np.array(values, np.float64).view(np.int64).tolist()

    chains = [(500.0, (0.1 * rng.integers(0, 1000, 50_000)).tolist()),
              (0.0, (0.1 * rng.integers(-3, 4, 50_000)).tolist()),  # hovers around 0
              (-3e-7, [0.0] * 10 + [-1e-7, 1e-7] * 50),             # -0.0 and 0.0
              (1e9, (0.1 * rng.integers(-10**9, 10**9, 5_000)).tolist()),
              (4e15, [1e15, -1e15, 3.3] * 100),                      # past the fast rule
              (12.5, [])]
    for prev, xs in chains:
        assert bits(ewma_chain(prev, xs)) == bits(plain(prev, xs))
    zeros = ewma_chain(-3e-7, [0.0] * 10)
    assert zeros == [0.0] * 10 and np.signbit(zeros[0]) and not np.signbit(zeros[1])
