"""The scheduler's registry in the block store (no Ray): round trip, fallback to an older
generation, fencing of an older holder, crash atomicity of a save, the MAC.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from blockstore import StaleLeaseError, open_store
from scheduler import (
    RegistryError,
    RegistryStore,
)

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
