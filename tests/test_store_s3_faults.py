"""The object-store backend under failures, on a real S3 server (moto) on loopback.

What only the object store can show: two processes racing for one lease through
conditional puts; a zombie's commit refused and its objects invisible even though they
landed after the takeover; the server dying mid-flush (a proxy cut between the data
uploads and the record put) with the previous commit intact after reconnecting; throttling
and 5xx answered by retries; one specific error per cause; garbage collected only when no
flush can still publish it; the stage checkpoint's crash safety on S3.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blockstore import (
    BucketNotFoundError,
    LeaseHeldError,
    ObjectStore,
    StaleLeaseError,
    StoreAccessDeniedError,
    StoreEndpointError,
    StorePathError,
    StoreUnreachableError,
    open_store,
)
from blockstore.objectclient import StoreClock
from blockstore.objectlayout import parse_block_key
from polling import wait_for
from s3server import FaultProxy, MotoServer, free_port

BS = 4096


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server.port)
    try:
        yield p
    finally:
        p.close()


def _objects(store: ObjectStore, lease_id: str) -> list[tuple[str, int, int]]:
    """``(generation, epoch, index)`` of every block object of a lease in the bucket."""
    out = []
    for meta in store._c.list(f"blocks/{lease_id}/"):
        parsed = parse_block_key(meta["path"])
        assert parsed is not None
        out.append(parsed[1:])
    return out


# -- two processes, one lease ----------------------------------------------------------------
RACER = r"""
import json, os, sys, time
from blockstore import LeaseHeldError, open_store
url, names, go, ready = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
store = open_store(url)
open(os.path.join(ready, str(os.getpid())), "w").close()
while not os.path.exists(go):
    time.sleep(0.0005)
won = []
for n in names:
    try:
        lease = store.acquire(n, num_blocks=1)
        lease.write_blocks({0: f"{os.getpid()}".encode()})
        lease.flush()
        won.append(n)
    except LeaseHeldError:
        pass
print(json.dumps({"pid": os.getpid(), "won": won}))
"""


def test_two_processes_race_for_each_lease_one_wins(s3_server: MotoServer,
                                                    tmp_path: Path) -> None:
    url = s3_server.url(_prefix())
    open_store(url, block_size=BS).close()
    names = [f"race-{k}" for k in range(12)]
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, ",".join(names), str(go),
                               str(ready)],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    wait_for(lambda: len(list(ready.iterdir())) == 2 or any(p.poll() is not None for p in procs),
             timeout=120, what="both processes opened the store and wait at the gate")
    go.touch()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    won = [set(r["won"]) for r in results]
    assert won[0] | won[1] == set(names) and not won[0] & won[1]
    with open_store(url) as st:
        for r in results:
            for n in r["won"]:  # the winner's data is the one published
                assert st.open_reader(n).read_block(0)[:8].rstrip(b"\0") == str(r["pid"]).encode()
                assert st.lease_info(n).epoch == 1


# -- zombie ------------------------------------------------------------------------------------
def test_zombie_commit_refused_and_invisible(s3_server: MotoServer) -> None:
    url = s3_server.url(_prefix())
    old = open_store(url, block_size=BS)  # the old incarnation (its own client and state)
    new = ObjectStore(url)                 # the incarnation that replaces it
    a = old.acquire("stage", num_blocks=4)
    a.write_blocks({i: b"committed-%d" % i for i in range(4)})
    a.flush()
    a.write_blocks({0: b"zombie-before", 1: b"zombie-before"})  # checked while still current
    b = new.acquire("stage", steal=True)
    b.write_blocks({2: b"new-holder"})
    b.flush()
    with pytest.raises(StaleLeaseError):  # a write after the takeover is refused outright
        a.write_blocks({3: b"zombie-after"})
    with pytest.raises(StaleLeaseError) as err:  # and so is the commit of what landed before
        a.flush()
    assert err.value.epoch == 1 and err.value.current_epoch == 2
    for reader_store in (ObjectStore(url), new):
        got = reader_store.open_reader("stage").read_blocks([0, 1, 2, 3])
        assert [g.rstrip(b"\0") for g in got] == [b"committed-0", b"committed-1",
                                                  b"new-holder", b"committed-3"]
    # The zombie's objects of epoch 1 that landed are garbage: unreferenced, then removed.
    new.gc()
    live = new._c.list(f"blocks/{b.lease_id}/")
    assert {parse_block_key(m["path"])[3] for m in live} == {0, 1, 2, 3}  # type: ignore[index]
    for st in (old, new):
        st.close()


def test_zombie_uploads_after_takeover_never_visible(s3_server: MotoServer) -> None:
    """The zombie's data objects land after the takeover (its write check passed before):
    they exist in the bucket and no reader ever sees them."""
    url = s3_server.url(_prefix())
    old, new = open_store(url, block_size=BS), ObjectStore(url)
    a = old.acquire("s", num_blocks=2)
    a.write_blocks({0: b"v1"})
    a.flush()
    gate, landed, checked = threading.Event(), threading.Event(), threading.Event()
    real_put, real_record = old._c.put, old._record_by_id

    def slow_put(key: str, data: Any) -> str:
        gate.wait(120)  # the takeover happens while the zombie's upload is in flight
        etag = real_put(key, data)
        landed.set()
        return etag

    def record_read(lease_id: str) -> Any:  # the write check's read of the lease record
        got = real_record(lease_id)
        checked.set()
        return got

    old._c.put = slow_put  # type: ignore[method-assign]
    old._record_by_id = record_read  # type: ignore[method-assign]
    t = threading.Thread(target=lambda: a.write_blocks({0: b"zombie", 1: b"zombie"}))
    t.start()
    assert checked.wait(60), "the zombie's write never read its record"  # before the steal
    b = new.acquire("s", steal=True)
    gate.set()
    t.join(120)
    assert not t.is_alive()
    assert landed.is_set()
    assert any(epoch == 1 for _, epoch, _ in _objects(new, b.lease_id))  # they landed
    with pytest.raises(StaleLeaseError):
        a.flush()
    assert [x.rstrip(b"\0") for x in ObjectStore(url).open_reader("s").read_blocks([0, 1])] == \
        [b"v1", b""]
    old.close()
    new.close()


# -- server dies mid-flush ---------------------------------------------------------------------
def test_server_cut_mid_flush_keeps_previous_commit(s3_server: MotoServer,
                                                    proxy: FaultProxy) -> None:
    url = s3_server.url(_prefix(), endpoint=proxy.endpoint, retries=2)
    st = open_store(url, block_size=BS)
    lease = st.acquire("s", num_blocks=3, ttl=60)
    lease.write_blocks({i: b"gen1-%d" % i for i in range(3)})
    lease.flush()
    lease.write_blocks({i: b"gen2-%d" % i for i in range(3)})  # uploads land
    # The server "dies" when the record put (the commit) arrives, after every data upload.
    proxy.rule = lambda method, path: "cut" if method == "PUT" and "/leases/" in path else None
    with pytest.raises(StoreUnreachableError):
        lease.flush()
    assert any(m == "PUT" and "/blocks/" in p for m, p, _ in proxy.seen)
    proxy.restore()  # the server is back; the client reconnects
    with ObjectStore(url) as fresh:
        got = fresh.open_reader("s").read_blocks([0, 1, 2])
        assert [g.rstrip(b"\0") for g in got] == [b"gen1-0", b"gen1-1", b"gen1-2"]
    lease.flush()  # the holder's retry publishes gen 2, complete
    with ObjectStore(url) as fresh:
        got = fresh.open_reader("s").read_blocks([0, 1, 2])
        assert [g.rstrip(b"\0") for g in got] == [b"gen2-0", b"gen2-1", b"gen2-2"]
    st.close()


def test_throttling_and_5xx_are_retried_nothing_lost(s3_server: MotoServer,
                                                     proxy: FaultProxy) -> None:
    url = s3_server.url(_prefix(), endpoint=proxy.endpoint)
    count = {"n": 0}
    lock = threading.Lock()

    def flaky(method: str, path: str) -> int | None:
        with lock:
            count["n"] += 1
            n = count["n"]
        return 503 if n % 3 == 0 else (500 if n % 7 == 0 else None)

    proxy.rule = flaky
    st = open_store(url, block_size=BS)
    lease = st.acquire("s", num_blocks=64)
    data = {i: np.random.default_rng(i).bytes(BS) for i in range(64)}
    lease.write_blocks(data)
    lease.flush()
    lease.renew()
    proxy.restore()
    assert sum(1 for _, _, v in proxy.seen if v in (500, 503)) >= 10
    with ObjectStore(url) as fresh:
        assert fresh.open_reader("s").read_blocks(list(range(64))) == [data[i] for i in range(64)]
    st.close()


# -- one error per cause -------------------------------------------------------------------------
def test_access_denied(s3_server: MotoServer, proxy: FaultProxy) -> None:
    proxy.rule = lambda method, path: 403
    with pytest.raises(StoreAccessDeniedError) as err:
        open_store(s3_server.url(_prefix(), endpoint=proxy.endpoint))
    assert isinstance(err.value, PermissionError)


def test_missing_bucket(s3_server: MotoServer) -> None:
    url = s3_server.url(_prefix()).replace("s3://bp-test/", "s3://no-such-bucket-here/")
    with pytest.raises(BucketNotFoundError) as err:
        open_store(url)
    assert err.value.bucket == "no-such-bucket-here"


def test_unreachable_server() -> None:
    url = f"s3://bp-test/x?endpoint_url=http://127.0.0.1:{free_port()}&retries=1"
    with pytest.raises(StoreUnreachableError) as err:
        open_store(url)
    assert isinstance(err.value, ConnectionError)


def test_endpoint_that_is_not_s3(tmp_path: Path) -> None:
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"s3://bp-test/x?endpoint_url=http://127.0.0.1:{server.server_address[1]}&retries=0"
        with pytest.raises(StoreEndpointError):
            open_store(url)
    finally:
        server.shutdown()
        server.server_close()


def test_no_store_at_prefix_when_not_creating(s3_server: MotoServer) -> None:
    with pytest.raises(StorePathError):
        open_store(s3_server.url(_prefix()), create=False)


# -- garbage -------------------------------------------------------------------------------------
def test_gc_removes_only_what_no_flush_can_publish(s3_server: MotoServer) -> None:
    url = s3_server.url(_prefix())
    st = open_store(url, block_size=BS)
    assert isinstance(st, ObjectStore)
    a = st.acquire("s", num_blocks=4)
    a.write_blocks({i: b"one" for i in range(4)})
    a.flush()
    a.write_blocks({0: b"two", 1: b"two"})
    a.flush()  # blocks 0 and 1 of the first commit are replaced: removed at once
    assert len(_objects(st, a.lease_id)) == 4
    a.write_blocks({2: b"unflushed"})  # the holder's in-flight write: must survive gc
    report = st.gc()
    assert report.kept == 1 and len(_objects(st, a.lease_id)) == 5
    other = ObjectStore(url)
    b = other.acquire("s", steal=True)  # fences epoch 1: its unflushed object is garbage now
    b.write_blocks({3: b"three"})
    b.flush()  # the first commit of epoch 2 collects epoch 1's garbage
    objs = _objects(other, b.lease_id)
    assert len(objs) == 4 and sum(1 for _, e, _ in objs if e == 2) == 1
    with pytest.raises(StaleLeaseError):
        a.flush()
    b.release()
    other.delete_lease("s")
    assert _objects(other, b.lease_id) == [] and other.find("s") is None
    st.close()
    other.close()


def test_store_clock_offset_from_stamps() -> None:
    clock = StoreClock()
    assert clock.offset == 0.0
    clock.observe(1000.0, 1000.2, 1000.3)  # agree within the stamp's second: no change
    assert clock.offset == 0.0
    clock = StoreClock()
    clock.observe(1100.0, 1089.5, 1089.6)  # the store is 10.4-11.5 s ahead
    assert 10.4 <= clock.offset <= 11.5
    clock.observe(1200.0, 1189.2, 1189.3)  # narrows to [10.7, 11.5]
    assert abs(clock.offset - 10.7) < 1e-6
    assert abs(clock.now() - __import__("time").time() - 10.7) < 0.01


# -- stage checkpoints on S3 -----------------------------------------------------------------
#: An object store is shared (capabilities.shared): pickle checkpoints there need a key.
KEY = b"s3-test-key"


def test_pickle_checkpoints_on_s3_need_a_key(s3_server: MotoServer) -> None:
    from stages import CheckpointedStageState, CheckpointFailed

    with open_store(s3_server.url(_prefix()), block_size=64 * 1024) as st:
        assert st.capabilities.shared
        lease = st.acquire("stage", ttl=60)
        with pytest.raises(CheckpointFailed, match="key"):
            CheckpointedStageState({"n": 1}, lease).checkpoint()
        CheckpointedStageState({"n": 1}, lease, allow_unauthenticated=True).checkpoint()
        assert CheckpointedStageState.restore(lease).state == {"n": 1}


def test_stage_checkpoint_round_trip_and_zombie_on_s3(s3_server: MotoServer) -> None:
    from stages import CheckpointedStageState, CheckpointFailed

    url = s3_server.url(_prefix())
    old = open_store(url, block_size=64 * 1024)
    state = {"n": 1, "arr": np.arange(100_000, dtype=np.float32)}
    lease = old.acquire("stage-1", ttl=60)
    css = CheckpointedStageState(state, lease, key=KEY)
    css.checkpoint(step=1)
    with ObjectStore(url) as other:
        back = CheckpointedStageState.restore(other.open_reader("stage-1"), key=KEY)
        assert back.state["n"] == 1 and np.array_equal(back.state["arr"], state["arr"])
    css.state = {"n": 2, "arr": state["arr"] * 2}
    css.checkpoint(step=2)
    new = ObjectStore(url)
    taken = new.acquire("stage-1", steal=True, ttl=60)  # the new incarnation fences the old
    css2 = CheckpointedStageState.restore(taken, key=KEY)
    assert css2.state["n"] == 2
    css.state = {"n": 666, "arr": state["arr"]}
    with pytest.raises(CheckpointFailed) as err:  # the zombie's commit is refused
        css.checkpoint(step=3)
    assert isinstance(err.value.__cause__, StaleLeaseError), repr(err.value.__cause__)
    css2.state = {"n": 3, "arr": state["arr"] * 3}
    css2.checkpoint(step=3)
    with ObjectStore(url) as reader:
        back = CheckpointedStageState.restore(reader.open_reader("stage-1"), key=KEY)
        assert back.state["n"] == 3 and np.array_equal(back.state["arr"], state["arr"] * 3)
    for st in (old, new):
        st.close()


def test_stage_checkpoint_server_cut_mid_commit_restores_previous(
        s3_server: MotoServer, proxy: FaultProxy) -> None:
    from stages import CheckpointedStageState, CheckpointFailed

    url = s3_server.url(_prefix(), endpoint=proxy.endpoint, retries=1)
    st = open_store(url, block_size=64 * 1024)
    lease = st.acquire("stage", ttl=60)
    css = CheckpointedStageState({"gen": 1, "x": np.ones(50_000)}, lease, key=KEY)
    css.checkpoint(step=1)
    css.state = {"gen": 2, "x": np.zeros(50_000)}
    puts = {"n": 0}

    def die_at_second_commit(method: str, path: str) -> str | None:
        if method == "PUT" and "/leases/" in path:
            puts["n"] += 1
            return "cut" if puts["n"] == 2 else None  # data published, header commit dies
        return None

    proxy.rule = die_at_second_commit
    with pytest.raises(CheckpointFailed):
        css.checkpoint(step=2)
    proxy.restore()
    with ObjectStore(url) as fresh:
        back = CheckpointedStageState.restore(fresh.open_reader("stage"), key=KEY)
        assert back.state["gen"] == 1 and np.array_equal(back.state["x"], np.ones(50_000))
    st.close()


def test_lease_held_across_store_objects(s3_server: MotoServer) -> None:
    url = s3_server.url(_prefix())
    with open_store(url, block_size=BS) as a, ObjectStore(url) as b:
        a.acquire("s", ttl=60)
        with pytest.raises(LeaseHeldError):
            b.acquire("s")


def test_keepalive_renews_while_an_upload_is_slow(s3_server: MotoServer) -> None:
    """A renewal never waits behind a write's uploads: the hold is renewed while an upload
    is blocked, and nobody can take the lease meanwhile."""
    url = s3_server.url(_prefix())
    st = open_store(url, block_size=BS)
    assert isinstance(st, ObjectStore)
    ttl = 10.0  # renewed every ttl/3; long enough that a late renewal never lets it lapse
    lease = st.acquire("s", num_blocks=1, ttl=ttl, keepalive=True)
    real_put = st._c.put
    uploading, done = threading.Event(), threading.Event()
    began: list[float] = []

    def slow_put(key: str, data: Any) -> str:
        if not began:
            began.append(st._c.clock.now())  # the store's clock, as expires_at
        uploading.set()
        done.wait(120)                     # the upload lasts until the test lets it end
        return real_put(key, data)

    st._c.put = slow_put  # type: ignore[method-assign]
    writer = threading.Thread(target=lambda: lease.write_blocks({0: b"slow"}))
    writer.start()
    try:
        assert uploading.wait(60), "the write never started uploading"
        # A renewal made a second or more into the blocked upload: renewals did not wait
        # for it.
        wait_for(lambda: st.lease_info("s").expires_at > began[0] + 1 + ttl, timeout=60,
                 what="a renewal during the upload")
        assert writer.is_alive(), "the upload ended early"
        with ObjectStore(url) as other:
            with pytest.raises(LeaseHeldError):
                other.acquire("s")
    finally:
        done.set()
    writer.join(60)
    st._c.put = real_put  # type: ignore[method-assign]
    lease.flush()
    assert ObjectStore(url).open_reader("s").read_block(0)[:4] == b"slow"
    lease.release()
    st.close()
