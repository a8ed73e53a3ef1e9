"""Round trips of CheckpointedStageState on real stores (A1, small sizes; 1 GiB is in bench/)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stages
from blockstore import MemoryStore, open_store
from stages import (
    CheckpointedStageState,
    CheckpointFailed,
    CodecError,
    NoCheckpointError,
)
from stages.checkpoint.codec import encode


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


@dataclass(frozen=True)
class Point:
    x: int
    y: float


@dataclass
class Model:
    name: str
    weights: np.ndarray
    history: list[Point] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Model) and self.name == other.name
                and np.array_equal(self.weights, other.weights) and self.history == other.history)


def _roundtrip(store, state, **opts):
    lease = store.acquire("stage", num_blocks=0)
    css = CheckpointedStageState(state, lease, **opts)
    info = css.checkpoint(step=7, meta={"source_position": 1234})
    reader = store.open_reader("stage")
    back = CheckpointedStageState.restore(reader, **{k: v for k, v in opts.items() if k == "key"})
    assert back.restored is not None
    assert back.restored.generation == info.generation == 1
    assert back.restored.step == 7 and back.restored.meta == {"source_position": 1234}
    assert back.restored.skipped == ()
    lease.release()
    return back.state, info


STATES = {
    "dict": {"a": 1, "b": "two", "c": [3.0, None, True], "d": {"nested": (1, 2)}},
    "dataclass": Point(3, 4.5),
    "nested": [{"k": {i: [i] * i for i in range(20)}}, ({1, 2, 3}, frozenset({"x"}))],
    "numpy": {"f32": np.arange(5000, dtype=np.float32), "i8": np.arange(-50, 50, dtype=np.int8),
              "fortran": np.asfortranarray(np.arange(3000.0).reshape(60, 50)),
              "small": np.arange(3)},
    "model": Model("m", np.ones((40, 40)), [Point(1, 2.0)]),
    "none": None,
    "empty dict": {},
    "empty bytes": b"",
}


@pytest.mark.parametrize("name", sorted(STATES))
@pytest.mark.parametrize("compression", ["auto", "zstd", "none"])
def test_round_trip_file_store(store_dir: str, name: str, compression: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        back, _ = _roundtrip(store, STATES[name], compression=compression)
    if name == "numpy":
        assert back.keys() == STATES[name].keys()
        for k, v in STATES[name].items():
            assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
        assert back["fortran"].flags.f_contiguous
    else:
        assert back == STATES[name]


def test_numpy_arrays_are_views_of_the_restore_buffer(store_dir: str) -> None:
    big = np.random.default_rng(0).random(50_000)
    with open_store(store_dir, block_size=4096) as store:
        back, info = _roundtrip(store, {"w": big, "v": big * 2})
    assert info.data_length > big.nbytes * 2
    w, v = back["w"], back["v"]
    assert np.array_equal(w, big) and np.array_equal(v, big * 2)
    # Not copied: both arrays borrow memory from the same single restore buffer.
    assert not w.flags.owndata and not v.flags.owndata
    def root(a: object) -> object:
        while True:
            nxt = a.base if isinstance(a, np.ndarray) else getattr(a, "obj", None)
            if nxt is None:
                return a
            a = nxt

    assert root(w) is root(v)
    assert root(w).nbytes == info.data_length  # type: ignore[attr-defined]
    w[0] = -1.0  # and writable


def test_larger_than_one_block_and_exactly_one_block(store_dir: str) -> None:
    bs = 4096
    with open_store(store_dir, block_size=bs) as store:
        # exactly one block of payload: find the bytes length whose payload is bs bytes
        n = next(n for n in range(bs - 200, bs) if encode(b"x" * n, "pickle").length == bs)
        lease = store.acquire("one")
        css = CheckpointedStageState(b"\x01" * n, lease, compression="none")
        info = css.checkpoint()
        assert info.data_length == bs and info.blocks == 1
        assert CheckpointedStageState.restore(store.open_reader("one")).state == b"\x01" * n
        big = os.urandom(bs * 5 + 17)
        css.state = big
        info = css.checkpoint()
        assert info.blocks == 6
        assert CheckpointedStageState.restore(store.open_reader("one")).state == big


def test_spilled_block_map(store_dir: str) -> None:
    """512-byte blocks: a 200-block state's map does not fit the header and spills."""
    rng = np.random.default_rng(1)
    arr = rng.random(200 * 512 // 8)
    with open_store(store_dir, block_size=512) as store:
        lease = store.acquire("s")
        css = CheckpointedStageState({"a": arr}, lease)
        info = css.checkpoint()
        assert info.blocks > 200  # data + map blocks
        css.state = {"a": arr + 1}
        css.checkpoint()
        back = CheckpointedStageState.restore(store.open_reader("s"))
        assert np.array_equal(back.state["a"], arr + 1)


def test_compression_shrinks_compressible_and_skips_random(store_dir: str) -> None:
    with open_store(store_dir, block_size=65536) as store:
        lease = store.acquire("c")
        zeros = CheckpointedStageState({"z": np.zeros(1 << 20)}, lease).checkpoint()
        assert zeros.stored_bytes < zeros.data_length / 50
        noise = np.random.default_rng(2).random(1 << 17)
        rnd = CheckpointedStageState({"r": noise}, lease, compression="auto").checkpoint()
        assert rnd.stored_bytes == rnd.data_length  # stored raw: zstd was not worth it
        back = CheckpointedStageState.restore(store.open_reader("c"))
        assert np.array_equal(back.state["r"], noise)


def test_memory_store_round_trip() -> None:
    store = MemoryStore(4096)
    back, _ = _roundtrip(store, STATES["numpy"])
    assert np.array_equal(back["f32"], STATES["numpy"]["f32"])


def test_msgpack_round_trip_and_refusal(store_dir: str) -> None:
    state = {"pos": 12, "names": ["a", "b"], "blob": b"\x00\x01", "arr": np.arange(10.0),
             "nested": {"t": (1, 2)}, "scalar": np.float32(1.5)}
    with open_store(store_dir, block_size=4096) as store:
        back, info = _roundtrip(store, state, codec="msgpack")
        assert info.codec == "msgpack"
        assert back["names"] == ["a", "b"] and back["blob"] == b"\x00\x01"
        assert np.array_equal(back["arr"], np.arange(10.0))
        assert back["nested"] == {"t": [1, 2]} and back["scalar"] == 1.5
        lease = store.acquire("stage")
        css = CheckpointedStageState({"p": Point(1, 2.0)}, lease, codec="msgpack")
        with pytest.raises(CheckpointFailed) as ei:
            css.checkpoint()
        assert isinstance(ei.value.__cause__, CodecError)
        assert "Point" in str(ei.value) and "data only" in str(ei.value)
        css.state = {"o": np.array([object()], dtype=object)}
        with pytest.raises(CheckpointFailed):
            css.checkpoint()
        # the failed attempts left the committed generation intact
        assert CheckpointedStageState.restore(store.open_reader("stage")).state["pos"] == 12


def test_nothing_written_before_first_checkpoint(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        lease = store.acquire("n")
        css = CheckpointedStageState({"a": 1}, lease)
        css.state = {"a": 2}
        assert lease.num_blocks == 0
        with pytest.raises(NoCheckpointError):
            CheckpointedStageState.restore(store.open_reader("n"))
        assert css.last_checkpoint is None
        css.checkpoint()
        assert lease.num_blocks > 0 and css.last_checkpoint is not None


def test_generations_retention_and_listing(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        lease = store.acquire("g")
        css = CheckpointedStageState({"i": 0}, lease, retention=3)
        for i in range(5):
            css.state = {"i": i}
            css.checkpoint(step=i * 10)
        gens = css.generations()
        assert [g.generation for g in gens] == [5, 4, 3]
        assert [g.step for g in gens] == [40, 30, 20]
        assert css.last_checkpoint == gens[0]
        assert gens[0].to_dict()["generation"] == 5
        # a new wrapper on the same lease continues the numbering and keeps retention 3
        css2 = CheckpointedStageState({"i": 99}, lease, retention=2)
        assert css2.checkpoint().generation == 6
        assert css2.retention == 3
        assert [g.generation for g in css2.generations()] == [6, 5, 4]
        back = CheckpointedStageState.restore(store.open_reader("g"))
        assert back.state == {"i": 99}


def test_retention_one_is_refused(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        lease = store.acquire("r")
        with pytest.raises(ValueError, match="only good copy"):
            CheckpointedStageState({}, lease, retention=1)
        with pytest.raises(ValueError):
            CheckpointedStageState({}, lease, codec="json")
        with pytest.raises(ValueError):
            CheckpointedStageState({}, lease, compression="lz4")


def test_restore_from_reader_cannot_checkpoint_and_handover(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        lease = store.acquire("h")
        CheckpointedStageState([1, 2], lease).checkpoint()
        ro = CheckpointedStageState.restore(store.open_reader("h"))
        with pytest.raises(CheckpointFailed, match="reading only"):
            ro.checkpoint()
        rw = CheckpointedStageState.restore(lease)
        rw.state = [3]
        assert rw.checkpoint().generation == 2
        assert rw.into_block_lease() is lease
        with pytest.raises(CheckpointFailed):
            rw.checkpoint()


def test_checkpoint_after_takeover_is_fenced(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        old = store.acquire("f", ttl=30)
        css = CheckpointedStageState({"v": 1}, old)
        css.checkpoint()
        new = store.acquire("f", steal=True)
        with pytest.raises(CheckpointFailed) as ei:
            css.state = {"v": "zombie"}
            css.checkpoint()
        assert "StaleLease" in str(ei.value)
        taken = CheckpointedStageState.restore(new)
        assert taken.state == {"v": 1}


def test_public_surface() -> None:
    for name in ("CheckpointedStageState", "CheckpointInfo", "RestoreReport",
                 "CheckpointFlushObserver", "StageError", "CheckpointFailed",
                 "CheckpointCorrupt", "NoCheckpointError", "verify_lease"):
        assert name in stages.__all__ and hasattr(stages, name)
    assert issubclass(stages.NoCheckpointError, LookupError)
    assert issubclass(stages.CheckpointCorrupt, stages.StageError)
    assert issubclass(stages.UnsupportedFormatError, stages.CheckpointCorrupt)


def test_restore_with_max_step_rolls_back(store_dir: str) -> None:
    with open_store(store_dir, block_size=4096) as store:
        lease = store.acquire("rb")
        css = CheckpointedStageState({"s": 0}, lease, retention=3)
        for step in (1, 2, 3):
            css.state = {"s": step}
            css.checkpoint(step=step)
        back = CheckpointedStageState.restore(lease, max_step=2)
        assert back.state == {"s": 2} and back.restored.skipped == ()
        back.state = {"s": "2b"}
        assert back.checkpoint(step=3).generation == 4  # numbering never goes backwards
        assert [g.step for g in back.generations()] == [3, 2, 1]
        assert CheckpointedStageState.restore(lease).state == {"s": "2b"}
        with pytest.raises(NoCheckpointError):
            CheckpointedStageState.restore(lease, max_step=0)


_DATA = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=50) | st.binary(max_size=3000),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=6),
    max_leaves=40)


@settings(max_examples=60, deadline=None)
@given(state=_DATA, codec=st.sampled_from(["pickle", "msgpack"]),
       compression=st.sampled_from(["auto", "zstd", "none"]),
       block_size=st.sampled_from([512, 1024, 4096]))
def test_property_round_trip_of_plain_data(state, codec, compression, block_size) -> None:
    store = MemoryStore(block_size)
    lease = store.acquire("p")
    css = CheckpointedStageState(state, lease, codec=codec, compression=compression)
    css.checkpoint()
    css.checkpoint()  # a second generation, so the first one's slot and blocks are reused
    assert CheckpointedStageState.restore(store.open_reader("p")).state == state
