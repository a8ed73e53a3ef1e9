"""A read-only restore beside the lease's live writer (stages/checkpoint/restore.py): never a
false "no generation verifies", never an older generation than it could have had, never a
mix of two generations. Review finding F4 (stop 34): 65 of 9,318 such restores failed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from blockstore import open_store
from stages.checkpoint.state import CheckpointedStageState

RESTORES = 3000


def test_restores_beside_a_writer_committing_in_a_loop_all_verify(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"), block_size=4096)
    lease = store.acquire("w", holder="writer", ttl=60, num_blocks=8)
    css = CheckpointedStageState({"a": np.zeros(3000)}, lease, retention=2,
                                 compression="none")
    css.checkpoint()
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        while not stop.is_set():
            commits[0] += 1
            css.state["a"][:] = commits[0]
            css.checkpoint()

    writer = threading.Thread(target=write)
    writer.start()
    failures: list[str] = []
    try:
        for _ in range(RESTORES):
            seen = commits[0]
            try:
                got = CheckpointedStageState.restore(store.open_reader("w"))
            except Exception as exc:  # noqa: BLE001 - counted, not raised
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            a = got.state["a"]
            assert (a == a[0]).all(), "a restore mixed two generations"
            # never older than what was committed before the restore began (a fallback)
            assert a[0] >= seen - 1, (a[0], seen)
    finally:
        stop.set()
        writer.join()
        lease.release()
        store.close()
    assert commits[0] > RESTORES // 10  # the writer did commit all along
    assert not failures, f"{len(failures)} of {RESTORES} restores failed: {failures[:3]}"
