"""Retention (A11): with K generations the lease stays bounded over 1,000 checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from blockstore import FileStore
from stages import CheckpointedStageState


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


@pytest.mark.parametrize("retention", [2, 3])
def test_lease_stays_bounded_over_1000_checkpoints(tmp_path: Path, retention: int) -> None:
    bs = 4096
    max_blocks = 24
    rng = np.random.default_rng(retention)
    with FileStore(tmp_path / "s", bs) as store, store.acquire("r") as lease:
        css = CheckpointedStageState({"i": 0}, lease, retention=retention)
        sizes = []
        peak = 0
        for i in range(1000):
            nblocks = int(rng.integers(1, max_blocks - 1))
            css.state = {"i": i, "blob": rng.integers(0, 256, nblocks * bs - 300, dtype=np.uint8)}
            info = css.checkpoint(step=i)
            assert info.generation == i + 1
            sizes.append(info.blocks)
            peak = max(peak, lease.num_blocks)
        # K header slots + room for every retained generation at its largest
        bound = retention + retention * max(sizes)
        assert peak <= bound, (peak, bound)
        data_file = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        assert os.path.getsize(data_file) <= bound * bs
        back = CheckpointedStageState.restore(store.open_reader("r"))
        assert back.state["i"] == 999
        assert len(css.generations()) == retention
        assert [g.generation for g in css.generations()] == list(range(1000, 1000 - retention, -1))
