"""The conformance suite against the object-store backend on a real S3 server (moto on
loopback), plus what only an object store has: the object layout, reopening, lookups by id,
``blockpoint gc``. Failures (races, zombies, cuts, throttling, errors) are in
tests/test_store_s3_faults.py."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from blockstore import ObjectStore, StoreConfigError, open_store
from blockstore.objectlayout import decode_record, name_key, parse_block_key
from blockstore.testing import StoreConformance

BS = 4096


class TestObjectStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _bind(self, s3_server) -> None:  # type: ignore[no-untyped-def]
        self.server = s3_server

    def make_store(self, block_size: int) -> ObjectStore:
        store = open_store(self.server.url(f"conf-{uuid.uuid4().hex[:12]}"),
                           block_size=block_size)
        assert isinstance(store, ObjectStore)
        return store


# -- what only the object store has ---------------------------------------------------------

def _url(server, tag: str = "") -> str:  # type: ignore[no-untyped-def]
    return server.url(f"x{tag}-{uuid.uuid4().hex[:12]}")


def test_layout_matches_format_md(s3_server) -> None:  # type: ignore[no-untyped-def]
    url = _url(s3_server)
    with open_store(url, block_size=BS) as st:
        assert isinstance(st, ObjectStore)
        lease = st.acquire("run/r1/step/1", num_blocks=3, holder="h")
        lease.write_blocks({0: b"a", 1: b"b"})
        lease.flush()
        keys = sorted(m["path"] for m in st._c.list(""))
        assert "blockpoint-store.json" in keys
        assert name_key("run/r1/step/1") == "leases/run~2Fr1~2Fstep~2F1.json" in keys
        assert f"ids/{lease.lease_id}" in keys
        blocks = [parse_block_key(k) for k in keys if k.startswith("blocks/")]
        assert sorted(b[3] for b in blocks) == [0, 1]  # type: ignore[index]
        assert {b[2] for b in blocks} == {1}  # type: ignore[index]
        raw, _ = st._c.get(name_key("run/r1/step/1"))  # type: ignore[misc]
        doc = json.loads(bytes(raw))
        assert doc["format"] == "blockpoint-lease" and doc["version"] == 1
        assert doc["epoch"] == 1 and doc["holder"] == "h" and doc["num_blocks"] == 3
        gen = blocks[0][1]  # type: ignore[index]
        assert doc["blocks"] == [[0, 2, gen]]
        assert decode_record(bytes(raw), "x").blocks == {0: gen, 1: gen}


def test_reopen_keeps_block_size_and_refuses_another(s3_server) -> None:  # type: ignore[no-untyped-def]
    url = _url(s3_server)
    with open_store(url, block_size=BS) as st:
        with st.acquire("a", num_blocks=1) as lease:
            lease.write_blocks({0: b"kept"})
    with open_store(url) as st:
        assert st.block_size == BS and st.url == url
        assert st.open_reader("a").read_block(0)[:4] == b"kept"
    with pytest.raises(StoreConfigError) as err:
        open_store(url, block_size=2 * BS)
    assert str(BS) in str(err.value)


def test_a_new_object_store_needs_a_block_size_multiple_of_512(s3_server) -> None:  # type: ignore[no-untyped-def]
    url = _url(s3_server)
    with pytest.raises(StoreConfigError, match="multiple of 512"):
        open_store(url, block_size=1000)
    with open_store(url, block_size=1536) as st:  # nothing was created by the refusal
        assert st.block_size == 1536


def test_lookup_by_id_from_a_fresh_store_object(s3_server) -> None:  # type: ignore[no-untyped-def]
    url = _url(s3_server)
    with open_store(url, block_size=BS) as st:
        lease = st.acquire("named", num_blocks=1)
        lease.write_blocks({0: b"x"})
        lease.flush()
        with ObjectStore(url) as other:  # knows nothing: follows ids/<lease_id>
            assert other.lease_info(lease.lease_id).name == "named"
        st._c.delete([f"ids/{lease.lease_id}"])  # pointer lost: falls back to a listing
        with ObjectStore(url) as other:
            assert other.open_reader(lease.lease_id).read_block(0)[:1] == b"x"


def test_cli_gc_and_inspect(s3_server) -> None:  # type: ignore[no-untyped-def]
    url = _url(s3_server)
    with open_store(url, block_size=BS) as st, ObjectStore(url) as other:
        a = st.acquire("s", num_blocks=2)
        a.write_blocks({0: b"z", 1: b"z"})  # never published: fenced below
        other.acquire("s", steal=True, ttl=600)  # holds on, commits nothing: only gc collects
    exe = [sys.executable, "-m", "blockpoint.cli"]
    res = subprocess.run(exe + ["gc", url, "--json"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    removed = json.loads(res.stdout)
    assert sum(1 for r in removed if r["kind"] == "block" and r["removed"]) == 2
    res = subprocess.run(exe + ["inspect", "--json", url], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert [i["name"] for i in json.loads(res.stdout)] == ["s"]
    res = subprocess.run(exe + ["gc", _url(s3_server, "none")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "no blockpoint store" in res.stderr


def test_gc_refuses_a_min_age_that_is_not_a_finite_age(s3_server) -> None:  # type: ignore[no-untyped-def]
    """The object store's gc (its own override) applies the same check as the file store's:
    a nan or negative ``min_age`` would remove a just-written object whose lease has no
    record, or a moment-old tombstone (found by a review: only ``BlockStore.gc`` checked)."""
    url = _url(s3_server)
    with open_store(url, block_size=BS) as st:
        lease = st.acquire("kept", num_blocks=1)
        lease.write_blocks({0: b"k"}, flush=True)
        for bad in (float("nan"), float("inf"), -1.0, 10**400):
            with pytest.raises(StoreConfigError, match="finite number of seconds >= 0"):
                st.gc(min_age=bad)
        for bad in ("5", True, None):
            with pytest.raises(StoreConfigError, match="must be a number of seconds"):
                st.gc(min_age=bad)  # type: ignore[arg-type]
        st.gc(dry_run=True, min_age=0)
        assert lease.read_block(0)[:1] == b"k"
