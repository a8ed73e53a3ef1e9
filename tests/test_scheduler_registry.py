"""The scheduler's registry in the block store (no Ray): round trip, fallback to an older
generation, fencing of an older holder, crash atomicity of a save, the MAC, and the key
read when it is used (not when the store is constructed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blockstore import FileStore, StaleLeaseError, open_store
from blockstore.keys import KEY_ENV, OLD_KEYS_ENV
from scheduler import (
    RegistryError,
    RegistryStore,
)
from scheduler.errors import RegistryKeyRequired


def test_registry_round_trip_fallback_and_fencing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"), block_size=4096)
    with RegistryStore(store, "_reg") as reg:
        assert reg.load() is None
        for i in range(4):
            assert reg.save({"i": i, "pad": "x" * (3000 * i)}) == i + 1
        rec = reg.load()
        assert rec.generation == 4 and rec.document["i"] == 3
        # A newer holder fences this one: its saves are refused by the store.
        newer = RegistryStore(store, "_reg")
        assert newer.open().document["i"] == 3
        with pytest.raises(RegistryError) as err:
            reg.save({"i": 99})
        assert isinstance(err.value.__cause__, StaleLeaseError)
        # A torn newest header: the reader falls back to the previous generation.
        slot = newer._newest[0]
        newer.lease.write_blocks({slot: b"torn"})
        newer.lease.flush()
        rec = RegistryStore(store, "_reg").load()
        assert rec.generation == 3 and rec.document["i"] == 2
        assert rec.skipped and "checksum" in rec.skipped[0][1]
        newer.close()


def test_registry_save_is_atomic_under_crashes(tmp_path: Path) -> None:
    """A crash at every block write of a save (torn block) leaves the old or new document."""
    from blockstore.faults import FaultyStore

    old_doc = {"v": "old", "pad": "o" * 9000}
    new_doc = {"v": "new", "pad": "n" * 14000}   # 4 payload blocks + 1 header at 4 KiB
    outcomes = set()
    for k in range(7):
        inner = open_store(str(tmp_path / f"s{k}"), block_size=4096)
        faulty = FaultyStore(inner)
        reg = RegistryStore(faulty, "_reg")
        reg.open()
        reg.save(old_doc)
        faulty.crash_after(faulty.block_writes + k, torn=True)
        try:
            reg.save(new_doc)
            saved = True
        except RegistryError:
            saved = False
        doc = RegistryStore(inner, "_reg").load().document
        assert doc in (old_doc, new_doc)
        assert saved == (doc == new_doc)
        outcomes.add(doc["v"])
        reg.close()
        inner.close()
    assert outcomes == {"old", "new"}


def test_registry_mac_rejects_other_key(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"), block_size=4096)
    with RegistryStore(store, "_reg", key=b"k1") as reg:
        reg.save({"a": 1})
    assert RegistryStore(store, "_reg", key=b"k1").load().document == {"a": 1}
    with pytest.raises(RegistryError):
        RegistryStore(store, "_reg", key=b"k2").load()


# -- keys are read when used (docs/OPERATIONS.md, "Keys and rotation") -----------------------
def test_a_key_set_after_construction_authenticates_the_next_save(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(OLD_KEYS_ENV, raising=False)
    store = open_store(str(tmp_path / "s"), block_size=4096)
    reg = RegistryStore(store, "_reg")  # built and opened while no key is set
    reg.open()
    monkeypatch.setenv(KEY_ENV, "late-key")  # e.g. set by the runtime env after __init__
    assert reg.save({"v": 1}) == 1
    assert reg.load().document == {"v": 1}  # verified under the key set now
    reg.close()
    assert RegistryStore(store, "_reg", key=b"late-key").load().document == {"v": 1}
    with pytest.raises(RegistryError):  # it carries a MAC under that key, not another
        RegistryStore(store, "_reg", key=b"other").load()
    store.close()


def test_a_key_unset_after_construction_is_not_used_on_a_shared_store(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(OLD_KEYS_ENV, raising=False)
    monkeypatch.setenv(KEY_ENV, "k")
    shared = FileStore(tmp_path / "shared", 4096, shared=True)
    reg = RegistryStore(shared, "_reg")
    reg.open()
    reg.save({"n": 1})
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RegistryKeyRequired):  # no key now: refused, nothing written
        reg.save({"n": 2})
    reg.close()
    assert RegistryStore(shared, "_reg", key=b"k").load().document == {"n": 1}
    shared.close()
