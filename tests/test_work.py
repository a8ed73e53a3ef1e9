"""Progress of long library work (issue 22 item 4): checkpoints, restores and gc report what
they did to a watcher in the caller's context, and to nobody else."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from blockstore import FileStore
from blockstore.work import advance, watch
from stages import CheckpointedStageState


def test_checkpoint_and_restore_report_their_bytes(tmp_path) -> None:
    seen: Counter[str] = Counter()
    calls: list[tuple[str, int]] = []

    def note(kind: str, n: int) -> None:
        seen[kind] += n
        calls.append((kind, n))

    state = {"w": np.random.default_rng(3).random(3_000_000)}  # 24 MB: several write batches
    with FileStore(tmp_path / "s", 1 << 16) as store, store.acquire("big") as lease:
        css = CheckpointedStageState(state, lease, codec="msgpack", compression="none")
        with watch(note):
            info = css.checkpoint(step=1)
        assert seen["checkpoint_bytes"] >= info.data_length
        assert len([c for c in calls if c[0] == "checkpoint_bytes"]) > 1  # as it goes, not once
        with watch(note):
            back = CheckpointedStageState.restore(lease, codec="msgpack")
        assert seen["restore_bytes"] == info.data_length
        np.testing.assert_array_equal(back.state["w"], state["w"])
        # Nobody watching: nothing is reported, nothing breaks.
        css.checkpoint(step=2)
        assert seen["checkpoint_bytes"] < 2 * info.data_length + (1 << 20)
        with watch(note):
            store.gc(dry_run=True)
        assert seen["objects_listed"] >= 2


def test_a_failing_watcher_is_dropped_and_other_threads_see_nothing(tmp_path) -> None:
    hits: list[str] = []

    def broken(kind: str, n: int) -> None:
        hits.append(threading.current_thread().name)
        raise RuntimeError("terminal gone")

    with watch(broken):
        advance("checkpoint_bytes", 10)
        advance("checkpoint_bytes", 10)  # dropped after the first failure
        other = threading.Thread(target=advance, args=("checkpoint_bytes", 5), name="other")
        other.start()
        other.join()
    assert hits == [threading.current_thread().name]
    advance("checkpoint_bytes", 1)  # outside: a no-op


def test_verify_reports_its_bytes_like_a_restore(tmp_path) -> None:
    """verify_lease reports through blockstore.work (``verify_bytes``: the stored bytes it
    read and checked, as it goes), never as restore progress."""
    from stages import verify_lease

    seen: Counter[str] = Counter()
    calls: list[tuple[str, int]] = []

    def note(kind: str, n: int) -> None:
        seen[kind] += n
        calls.append((kind, n))

    state = {"w": np.random.default_rng(4).random(1_000_000)}  # 8 MB: several read batches
    with FileStore(tmp_path / "s", 1 << 16) as store, store.acquire("v") as lease:
        css = CheckpointedStageState(state, lease, codec="msgpack", compression="none")
        first = css.checkpoint(step=1)
        second = css.checkpoint(step=2)
        with watch(note):
            reports = verify_lease(store.open_reader("v"))
        assert all(r.ok for r in reports if r.generation)
        assert seen["verify_bytes"] == first.stored_bytes + second.stored_bytes
        assert len([c for c in calls if c[0] == "verify_bytes"]) > 2  # per batch, not per gen
        assert seen["restore_bytes"] == 0
