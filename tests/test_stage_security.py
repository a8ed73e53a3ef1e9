"""Security defaults of checkpoints: key rotation, shared stores, the restore warning.

* One key resolution (``blockstore.keys.resolve_keys``) for checkpoints, documents and the
  scheduler registry: the current key writes, old keys verify.
* On a shared store a pickle checkpoint without a key is refused (``CheckpointKeyRequired``)
  unless the caller opts out; msgpack and keyed checkpoints are written.
* A pickle restore without a key warns once per process.
* A key set through Ray's runtime environment reaches actors.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blockstore import (
    FileStore,
    KeyRing,
    KeySettingError,
    MemoryStore,
    SlottedDocument,
    resolve_keys,
)
from blockstore.keys import KEY_ENV, OLD_KEYS_ENV
from scheduler.errors import RegistryError, RegistryKeyRequired
from scheduler.registry import RegistryStore
from stages import (
    CheckpointAuthError,
    CheckpointCorrupt,
    CheckpointedStageState,
    CheckpointFailed,
    CheckpointKeyRequired,
    UnauthenticatedRestoreWarning,
    verify_lease,
)
from stages.checkpoint import mac as mac_module
from stages.checkpoint.format import parse_header
from stages.checkpoint.reader import scan_slots

BS = 4096


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(OLD_KEYS_ENV, raising=False)


# -- key resolution ---------------------------------------------------------------------------
def test_resolve_keys_from_arguments_and_environment() -> None:
    assert resolve_keys(None, environ={}) is None
    ring = resolve_keys(None, environ={KEY_ENV: "new", OLD_KEYS_ENV: "old1,,old2"})
    assert ring == KeyRing(b"new", (b"old1", b"old2"))
    assert ring.all == (b"new", b"old1", b"old2")
    assert resolve_keys("k") == KeyRing(b"k") and resolve_keys(b"k") == KeyRing(b"k")
    assert resolve_keys([b"a", "b"]) == KeyRing(b"a", (b"b",))
    assert resolve_keys(ring) is ring
    with pytest.raises(ValueError, match=KEY_ENV):
        resolve_keys(None, environ={OLD_KEYS_ENV: "old"})  # verify-only config: an error
    for bad in (b"", "", []):
        with pytest.raises(ValueError):
            resolve_keys(bad)
    assert "new" not in repr(ring) and "old1" not in repr(ring)  # never print key material


def test_a_key_that_is_not_utf8_is_a_specific_error(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """An environment value that is not UTF-8 (Python holds its bad bytes as surrogates)
    cannot be a key: a KeySettingError naming the variable, never a UnicodeEncodeError,
    whose ``.object`` would carry the key itself into logs and tracebacks."""
    bad = os.fsdecode(b"secret-\xff-key")
    for environ, var in (({KEY_ENV: bad}, KEY_ENV),
                         ({KEY_ENV: "good", OLD_KEYS_ENV: "old," + bad}, OLD_KEYS_ENV)):
        with pytest.raises(KeySettingError, match=var) as err:
            resolve_keys(None, environ=environ)
        assert isinstance(err.value, ValueError)
        assert not isinstance(err.value, UnicodeError)
        assert err.value.__cause__ is None and err.value.__suppress_context__
        assert "secret" not in str(err.value) and "secret" not in repr(err.value.args)
    with pytest.raises(KeySettingError, match="UTF-8"):
        resolve_keys("\udcff")  # an explicit str key is encoded the same way
    # Through a checkpoint: refused as a CheckpointFailed caused by the KeySettingError.
    monkeypatch.setenv(KEY_ENV, bad)
    with FileStore(tmp_path / "s", BS) as st, st.acquire("stage") as lease:
        with pytest.raises(CheckpointFailed) as err:
            CheckpointedStageState({"v": 1}, lease).checkpoint()
        assert isinstance(err.value.__cause__, KeySettingError)
        assert "secret" not in str(err.value)


# -- rotation ---------------------------------------------------------------------------------
def _written(key: object, *, state: object = None) -> tuple[MemoryStore, str]:
    st = MemoryStore(BS)
    lease = st.acquire("stage")
    css = CheckpointedStageState(state if state is not None else {"v": 1}, lease, key=key)
    css.checkpoint(step=1)
    return st, lease.lease_id


def test_old_keys_verify_and_the_current_key_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    st, lid = _written(b"key-A", state={"arr": np.arange(5000)})
    reader = st.open_reader(lid)
    with pytest.raises(CheckpointAuthError):
        CheckpointedStageState.restore(reader, key=b"key-B")
    # Rotated: B is current, A still accepted.
    monkeypatch.setenv(KEY_ENV, "key-B")
    monkeypatch.setenv(OLD_KEYS_ENV, "key-Z,key-A")
    lease = st.acquire("stage", steal=True)
    css = CheckpointedStageState.restore(lease)
    assert np.array_equal(css.state["arr"], np.arange(5000))
    assert [r.ok for r in verify_lease(reader) if r.status != "empty"] == [True]
    css.state = {"arr": np.arange(10)}
    assert css.checkpoint(step=2).generation == 2
    # The new generation is written with the current key only: A alone does not verify it.
    under_a = {r.generation: r.ok for r in verify_lease(reader, key=b"key-A")
               if r.status != "empty"}
    assert under_a == {1: True, 2: False}
    assert CheckpointedStageState.restore(reader, key=b"key-B").restored.step == 2
    # Dropping the old key: generation 1 (key A) is refused, generation 2 restores.
    monkeypatch.delenv(OLD_KEYS_ENV)
    reports = {r.generation: r for r in verify_lease(reader) if r.status != "empty"}
    assert reports[2].ok and not reports[1].ok and "MAC" in reports[1].status


def test_a_forged_header_is_refused_under_every_key() -> None:
    st, lid = _written(b"key-A")
    reader = st.open_reader(lid)
    raw = bytearray(reader.read_block(0))
    h = parse_header(raw, slot=0, lease_id=lid, name="stage")
    assert h.has_mac
    with pytest.raises(CheckpointCorrupt):
        CheckpointedStageState.restore(reader, key=KeyRing(b"key-B", (b"key-C",)))


def test_document_rotation() -> None:
    st = MemoryStore(BS)
    with SlottedDocument(st.acquire("doc"), kind=b"TEST", version=1, key=b"A") as doc:
        doc.save({"n": 1})
    reader = st.open_reader("doc")
    assert SlottedDocument(reader, kind=b"TEST", version=1,
                           key=KeyRing(b"B", (b"A",))).load().document == {"n": 1}
    assert SlottedDocument(reader, kind=b"TEST", version=1, key=b"B").load().document is None
    with SlottedDocument(st.acquire("doc", steal=True), kind=b"TEST", version=1,
                         key=KeyRing(b"B", (b"A",))) as doc:
        doc.save({"n": 2})  # written with B
    assert SlottedDocument(reader, kind=b"TEST", version=1, key=b"B").load().document == {"n": 2}


def test_registry_is_covered_by_the_same_key(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s", BS)
    monkeypatch.setenv(KEY_ENV, "reg-A")
    with RegistryStore(store, "_reg") as reg:  # the key from the environment
        reg.save({"specs": {"a": "cloudpickled"}})
    monkeypatch.delenv(KEY_ENV)
    raw = SlottedDocument(store.open_reader("_reg"), kind=b"BPSR", version=2).load()
    assert raw.document == {"specs": {"a": "cloudpickled"}}  # readable, and ...
    with pytest.raises(RegistryError, match="MAC"):  # ... refused under another key
        RegistryStore(store, "_reg", key=b"reg-B").load()
    monkeypatch.setenv(KEY_ENV, "reg-B")
    monkeypatch.setenv(OLD_KEYS_ENV, "reg-A")
    assert RegistryStore(store, "_reg").load().document == {"specs": {"a": "cloudpickled"}}
    # A registry written without a key (a forgery, to a keyed reader) is never loaded.
    forged = MemoryStore(BS)
    with RegistryStore(forged, "_reg", key=None) as reg:
        pass
    monkeypatch.delenv(OLD_KEYS_ENV)
    monkeypatch.delenv(KEY_ENV)
    with RegistryStore(forged, "_reg") as reg:
        reg.save({"specs": {"evil": "payload"}})
    monkeypatch.setenv(KEY_ENV, "reg-B")
    with pytest.raises(RegistryError, match="no MAC"):
        RegistryStore(forged, "_reg").load()
    store.close()


# -- shared stores ----------------------------------------------------------------------------
def test_pickle_without_a_key_is_refused_on_a_shared_store(tmp_path: Path) -> None:
    with FileStore(tmp_path / "shared", BS, shared=True) as st:
        lease = st.acquire("stage")
        css = CheckpointedStageState({"v": 1}, lease)
        with pytest.raises(CheckpointKeyRequired, match="shared") as err:
            css.checkpoint()
        assert isinstance(err.value, CheckpointFailed) and err.value.lease_id == lease.lease_id
        assert lease.num_blocks == 0  # nothing written
        # The explicit ways: opt out, a key, or a codec that runs no code.
        CheckpointedStageState({"v": 1}, lease, allow_unauthenticated=True).checkpoint()
        CheckpointedStageState({"v": 2}, st.acquire("keyed"), key=b"k").checkpoint()
        CheckpointedStageState({"v": 3}, st.acquire("data"), codec="msgpack").checkpoint()
    with FileStore(tmp_path / "private", BS) as st:  # not shared: written as before
        CheckpointedStageState({"v": 1}, st.acquire("stage")).checkpoint()


def test_shared_store_with_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_ENV, "env-key")
    with FileStore(tmp_path / "shared", BS, shared=True) as st:
        lease = st.acquire("stage")
        CheckpointedStageState({"v": 1}, lease).checkpoint()
        reports = verify_lease(st.open_reader("stage"), key=b"env-key")
        assert [r.ok for r in reports if r.status != "empty"] == [True]


# -- the restore warning ----------------------------------------------------------------------
def test_unauthenticated_pickle_restore_warns_once_per_process() -> None:
    st, lid = _written(None)
    keyed_st, keyed_lid = _written(b"k")
    CheckpointedStageState({"v": 1}, st.acquire("data"), codec="msgpack").checkpoint()
    mac_module._warned_unauthenticated.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CheckpointedStageState.restore(keyed_st.open_reader(keyed_lid), key=b"k")
        CheckpointedStageState.restore(st.open_reader("data"))  # msgpack: no code runs
        assert not [w for w in caught if issubclass(w.category, UnauthenticatedRestoreWarning)]
        CheckpointedStageState.restore(st.open_reader(lid))
        CheckpointedStageState.restore(st.open_reader(lid))
    ours = [w for w in caught if issubclass(w.category, UnauthenticatedRestoreWarning)]
    assert len(ours) == 1 and "BLOCKPOINT_CHECKPOINT_KEY" in str(ours[0].message)
    assert issubclass(UnauthenticatedRestoreWarning, UserWarning)


# -- Ray's runtime environment ----------------------------------------------------------------
def test_key_reaches_actors_through_the_runtime_env(ray_local: None, tmp_path: Path) -> None:
    import ray

    root = str(tmp_path / "shared")
    FileStore(root, BS, shared=True).close()

    @ray.remote
    class Writer:
        def write(self, root: str, name: str) -> bool:
            with FileStore(root) as st:
                css = CheckpointedStageState({"from": "actor"}, st.acquire(name))
                css.checkpoint()  # refused on a shared store unless the key arrived
                return True

    actor = Writer.options(runtime_env={"env_vars": {KEY_ENV: "ray-key"}}).remote()
    assert ray.get(actor.write.remote(root, "stage"))
    with FileStore(root) as st:
        reader = st.open_reader("stage")
        assert CheckpointedStageState.restore(reader, key=b"ray-key").state == {"from": "actor"}
        with pytest.raises(CheckpointAuthError):
            CheckpointedStageState.restore(reader, key=b"other")
    bare = Writer.remote()  # no key in its environment: refused
    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(bare.write.remote(root, "bare"))
    assert isinstance(err.value.cause, CheckpointKeyRequired)


def test_registry_on_a_shared_store_needs_a_key(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    # The registry's pickles are loaded by the scheduler: on a shared store, no key = refused.
    monkeypatch.delenv(KEY_ENV, raising=False)
    store = FileStore(tmp_path / "shared", BS, shared=True)
    with pytest.raises(RegistryKeyRequired, match="BLOCKPOINT_CHECKPOINT_KEY"):
        RegistryStore(store, "_reg")
    assert store.list_leases() == []  # refused before anything was written
    with RegistryStore(store, "_reg", allow_unauthenticated=True) as reg:
        reg.save({"n": 1})
    monkeypatch.setenv(KEY_ENV, "reg-A")
    with pytest.raises(RegistryError, match="no MAC"):  # not trusted once a key is set
        RegistryStore(store, "_reg").load()
    keyed = FileStore(tmp_path / "keyed", BS, shared=True)
    with RegistryStore(keyed, "_reg") as reg:
        reg.save({"n": 2})
    assert RegistryStore(keyed, "_reg").load().document == {"n": 2}
    keyed.close()
    store.close()



# -- keys are read when used (docs/OPERATIONS.md) ---------------------------------------------
def test_a_key_set_after_construction_authenticates_the_next_checkpoint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with FileStore(tmp_path / "s", BS) as st:
        lease = st.acquire("stage")
        css = CheckpointedStageState({"v": 1}, lease)
        monkeypatch.setenv(KEY_ENV, "late-key")  # e.g. set by the runtime env after __init__
        css.checkpoint(step=1)
        reports = [r for r in verify_lease(st.open_reader("stage"), key=b"late-key")
                   if r.status != "empty"]
        assert [(r.generation, r.ok) for r in reports] == [(1, True)]
        _, scans = scan_slots(st.open_reader("stage"))
        assert [s.header.has_mac for s in scans if s.header is not None] == [True]
        back = CheckpointedStageState.restore(st.open_reader("stage"))  # key from the env
        assert back.state == {"v": 1}
        lease.release()
        # The restored object reads the environment at its next checkpoint too.
        monkeypatch.setenv(KEY_ENV, "rotated")
        monkeypatch.setenv(OLD_KEYS_ENV, "late-key")
        with st.acquire("stage") as lease:
            again = CheckpointedStageState.restore(lease)
            again.checkpoint(step=2)
        assert verify_lease(st.open_reader("stage"), key=b"rotated")[0].generation == 2
        assert verify_lease(st.open_reader("stage"), key=b"rotated")[0].ok


def test_a_key_unset_after_construction_is_refused_on_a_shared_store(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_ENV, "early-key")
    with FileStore(tmp_path / "shared", BS, shared=True) as st:
        lease = st.acquire("stage")
        css = CheckpointedStageState({"v": 1}, lease)
        css.checkpoint(step=1)
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(CheckpointKeyRequired, match="shared"):
            css.checkpoint(step=2)
        assert [r.generation for r in verify_lease(st.open_reader("stage"), key=b"early-key")
                if r.ok] == [1]


def test_pipeline_without_a_key_on_a_shared_store_fails_before_the_first_record(
        ray_local: None, tmp_path: Path) -> None:
    """A configuration error, not a lost stage: ``CheckpointKeyRequired`` naming the stage
    at once, before any record or barrier (it was 20 recoveries, ~19 s, of relaunches that
    were refused again)."""
    import functools
    import time

    from stages import CheckpointPolicy, FileSink, GeneratedSource, Pipeline, StageSpec
    from stages.pipeline.source import Enrich, RunningAggregate

    root = str(tmp_path / "shared")
    FileStore(root, BS, shared=True).close()
    specs = [StageSpec("agg", RunningAggregate, root, block_size=BS),
             StageSpec("seq", functools.partial(Enrich, False), root, block_size=BS)]
    events: list = []
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(GeneratedSource(seed=1, n=2000, keys=4), specs, sink, batch_size=50,
                 policy=CheckpointPolicy(every_records=200), on_event=events.append)
    t0 = time.monotonic()
    with pytest.raises(CheckpointKeyRequired) as err:
        p.run()
    print(f"refused after {time.monotonic() - t0:.1f} s: {err.value}")
    assert str(err.value).startswith("stage 'agg': lease 'agg' is on a shared store")
    assert "BLOCKPOINT_CHECKPOINT_KEY" in str(err.value) and err.value.lease_id
    assert [e.kind for e in events] == [], events  # no start, barrier, failure or relaunch
    assert sink.read_all() == []


def _forge_crc(buf: bytearray, pos: int, crc_of: Any, target: int) -> None:
    """Set 4 bytes at ``pos`` so that ``crc_of(buf) == target`` (CRC-32C is affine over
    GF(2): solve for the 32 bits)."""
    buf[pos:pos + 4] = bytes(4)
    base = crc_of(buf)
    basis: dict[int, tuple[int, int]] = {}
    for j in range(32):
        b = bytearray(buf)
        b[pos + j // 8] ^= 1 << (j % 8)
        v, comb = crc_of(b) ^ base, 1 << j
        for bit in reversed(range(32)):
            if (v >> bit) & 1:
                if bit not in basis:
                    basis[bit] = (v, comb)
                    break
                v, comb = v ^ basis[bit][0], comb ^ basis[bit][1]
    want, x = target ^ base, 0
    for bit in reversed(range(32)):
        if (want >> bit) & 1:
            want, x = want ^ basis[bit][0], x ^ basis[bit][1]
    for j in range(32):
        if (x >> j) & 1:
            buf[pos + j // 8] ^= 1 << (j % 8)
    assert crc_of(buf) == target


def test_forged_hashes_in_a_spilled_map_never_make_a_stale_chunk_reused(tmp_path: Path) -> None:
    """Found by a review: a spilled map is checked by CRC-32C only, so a store writer
    without the key could set every entry's content hash to the hash of a zero chunk
    (keeping each map block's CRC by 4 reserved bytes); the restore verifies (the payload
    MAC covers the payload), the forged entries became the incremental base, and the key
    holder's next checkpoint, zeroing part of its state, reused the old blocks for those
    chunks - a generation that never verified again. The base's hashes are now taken from
    the verified payload (FORMAT.md 2.2)."""
    import numpy as np
    import xxhash

    from blockstore import crc32c
    from stages.checkpoint import format as fmt
    from stages.checkpoint.reader import load_map, scan_slots

    bs = 4096
    key = b"a key of the cluster, 32 bytes.."
    with FileStore(tmp_path / "s", bs) as st:
        lease = st.acquire("stage", ttl=600)
        arr = np.random.default_rng(7).integers(0, 256, 300 * bs, dtype=np.uint8)
        CheckpointedStageState({"a": arr}, lease, key=key, incremental=True,
                               compression="none").checkpoint(step=1)
        _, scans = scan_slots(st.open_reader("stage"))
        h = max((s.header for s in scans if s.header), key=lambda h: h.generation)
        assert h.spilled
        _, map_blocks = load_map(st.open_reader("stage"), h)
        zero = xxhash.xxh3_128_digest(bytes(bs))
        dat = tmp_path / "s" / "leases" / f"{lease.lease_id}.dat"
        with open(dat, "r+b") as f:
            for mb in map_blocks:
                f.seek(mb * bs)
                blk = bytearray(f.read(bs))
                following, count, own = fmt.MAPBLOCK.unpack_from(blk, 0)
                for j in range(count):
                    at = fmt.MAPBLOCK.size + j * fmt.ENTRY.size
                    blk[at + 32:at + 48] = zero
                used = fmt.MAPBLOCK.size + count * fmt.ENTRY.size

                def own_crc(b: bytearray) -> int:
                    c = bytearray(b[:used])
                    fmt.MAPBLOCK.pack_into(c, 0, following, count, 0)
                    return crc32c(bytes(c))

                last = fmt.MAPBLOCK.size + (count - 1) * fmt.ENTRY.size
                _forge_crc(blk, last + 25, own_crc, own)  # a reserved field: not checked
                f.seek(mb * bs)
                f.write(blk)
        back = CheckpointedStageState.restore(lease, key=key, incremental=True,
                                              compression="none")
        assert np.array_equal(back.state["a"], arr)
        new = arr.copy()
        new[100 * bs:200 * bs] = 0
        back.state = {"a": new}
        info = back.checkpoint(step=2)
        again = CheckpointedStageState.restore(st.open_reader("stage"), key=key)
        assert again.restored.generation == info.generation
        assert np.array_equal(again.state["a"], new)
