"""The lease rules of the conformance suite: acquisition, takeover and fencing epochs,
renewal, release, expiry, delete, listing, and threads racing for one lease.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from ..base import BlockStore, StoreCapabilities, StoreStats
from ..errors import (
    LeaseExpiredError,
    LeaseHeldError,
    LeaseNotFoundError,
    LeaseReleasedError,
    StaleLeaseError,
)
from ..lease import Lease
from ._base import SHORT_TTL, ConformanceBase, wait_expired

__all__ = ["LeaseConformance"]


class LeaseConformance(ConformanceBase):
    """Leases: who may hold one, how its epoch moves, how it ends and how it is listed."""

    # -- acquisition -----------------------------------------------------------------------
    def test_declares_capabilities_and_block_size(self, store: BlockStore) -> None:
        assert isinstance(store.capabilities, StoreCapabilities)
        assert store.block_size == self.block_size
        assert not store.closed
        assert isinstance(store.url, str) and "://" in store.url

    def test_acquire_creates_lease_at_epoch_1(self, store: BlockStore) -> None:
        t0 = time.time()
        lease = store.acquire("stage-a", holder="h1", ttl=30, num_blocks=3)
        info = lease.acquired_info
        assert lease.epoch == info.epoch == 1
        assert len(lease.lease_id) == 32 and int(lease.lease_id, 16) >= 0
        assert lease.lease_id == lease.lease_id.lower()
        assert (info.name, info.holder, info.num_blocks, info.block_size) == \
            ("stage-a", "h1", 3, self.block_size)
        assert info.expires_at >= t0 + 30 - 1e-3
        assert info.is_held()
        assert store.lease_info("stage-a") == info
        assert lease.num_blocks == 3

    def test_lease_ids_are_unique(self, store: BlockStore) -> None:
        ids = {store.acquire(f"s{i}").lease_id for i in range(20)}
        assert len(ids) == 20

    def test_default_holders_differ(self, store: BlockStore) -> None:
        a = store.acquire("a")
        b = store.acquire("b")
        assert a.holder and b.holder and a.holder != b.holder

    def test_held_lease_refused_to_others_and_to_same_holder(self, store: BlockStore) -> None:
        lease = store.acquire("s", holder="h1", num_blocks=2)
        data = self.write_pattern(lease, 1, [0, 1])
        for holder in ("h2", "h1", None):
            err = self.refused_changes_nothing(
                store, "s", data, LeaseHeldError, lambda h=holder: store.acquire("s", holder=h))
            assert isinstance(err, LeaseHeldError)
            assert err.holder == "h1" and err.epoch == 1 and err.name == "s"
            assert err.lease_id == lease.lease_id and err.expires_at is not None
        lease.write_blocks({0: b"still mine"})  # the holder was not fenced

    def test_huge_ttl_is_held(self, store: BlockStore) -> None:
        store.acquire("s", holder="forever", ttl=1e300)
        with pytest.raises(LeaseHeldError) as err:
            store.acquire("s", holder="other")
        assert err.value.holder == "forever"
        assert store.lease_info("s").is_held()

    def test_takeover_after_release_bumps_epoch_and_keeps_blocks(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=3)
        data = self.write_pattern(a, "a", [0, 2])
        a.flush()
        a.release()
        b = store.acquire("s", holder="h2", num_blocks=99)  # num_blocks applies to new leases
        assert b.epoch == 2 and b.lease_id == a.lease_id
        assert b.num_blocks == 3
        assert b.read_blocks([0, 2]) == [data[0], data[2]]

    def test_takeover_after_expiry_bumps_epoch(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=2)
        data = self.write_pattern(a, "a", [0, 1])
        a.flush()  # unflushed writes may be lost at a takeover (publish_on_flush stores)
        wait_expired(a.renew(ttl=SHORT_TTL))  # written while held, then left to expire
        assert not store.lease_info("s").is_held()
        b = store.acquire("s", holder="h2")
        assert b.epoch == 2 and b.holder == "h2"
        self.refused_changes_nothing(store, "s", data, StaleLeaseError,
                                     lambda: a.write_blocks({0: b"zombie"}))
        b.write_blocks({1: b"new"})
        data[1] = b"new"
        self.assert_blocks(store, "s", data)

    def test_steal_bumps_epoch_and_fences_the_old_holder(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=4)
        data = self.write_pattern(a, "a", range(4))
        a.flush()  # unflushed writes may be lost at a takeover (publish_on_flush stores)
        b = store.acquire("s", holder="h2", steal=True)
        assert b.epoch == 2
        err = self.refused_changes_nothing(
            store, "s", data, StaleLeaseError,
            lambda: a.write_blocks({i: self.pat("zombie", i) for i in range(4)}))
        assert isinstance(err, StaleLeaseError)
        assert err.epoch == 1 and err.current_epoch == 2 and err.lease_id == a.lease_id
        for call in (a.flush, a.renew, lambda: a.resize(1), lambda: a.grow(10)):
            self.refused_changes_nothing(store, "s", data, StaleLeaseError, call)
        a.release()  # harmless for a fenced handle; does not release b's hold
        info = store.lease_info("s")
        assert info.holder == "h2" and info.epoch == 2 and info.is_held()
        b.write_blocks({0: b"b"})

    def test_every_acquisition_gets_a_new_epoch(self, store: BlockStore) -> None:
        epochs = []
        for k in range(5):
            lease = store.acquire("s", holder=f"h{k % 2}", steal=k % 2 == 1)
            epochs.append(lease.epoch)
            if k % 2 == 0:
                continue
            lease.release()
        assert epochs == [1, 2, 3, 4, 5]

    # -- renew / release / expiry ---------------------------------------------------------
    def test_renew_extends_the_hold(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=5)
        first = lease.acquired_info.expires_at
        info = lease.renew(ttl=60)
        assert info.expires_at > first and lease.ttl == 60
        assert store.lease_info("s").expires_at == info.expires_at
        assert info.epoch == 1

    def test_renew_of_expired_but_not_taken_lease(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=SHORT_TTL, num_blocks=1)
        wait_expired(lease.acquired_info)
        self.refused_changes_nothing(store, "s", {}, LeaseExpiredError,
                                     lambda: lease.write_blocks({0: b"late"}))
        info = lease.renew(ttl=30)
        assert info.epoch == 1 and info.is_held()
        lease.write_blocks({0: b"after renew"})
        self.assert_blocks(store, "s", {0: b"after renew"})

    def test_expired_holder_refused_resize_but_may_flush(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=1)
        lease.write_blocks({0: b"before"})
        wait_expired(lease.renew(ttl=SHORT_TTL))
        self.refused_changes_nothing(store, "s", {0: b"before"}, LeaseExpiredError,
                                     lambda: lease.resize(4))
        lease.flush()  # durability of earlier writes needs no live hold

    def test_renew_bad_ttl_refused(self, store: BlockStore) -> None:
        lease = store.acquire("s", ttl=30)
        for bad in (0, -1, math.nan, math.inf, "10", True):
            self.refused_changes_nothing(store, "s", {}, ValueError,
                                         lambda b=bad: lease.renew(ttl=b))
        assert lease.ttl == 30

    def test_release_keeps_data_and_ends_the_handle(self, store: BlockStore) -> None:
        lease = store.acquire("s", num_blocks=2)
        data = self.write_pattern(lease, 1, [0, 1])
        lease.flush()
        lease.release()
        assert lease.released
        info = store.lease_info("s")
        assert info.holder is None and info.expires_at == 0.0 and not info.is_held()
        assert info.epoch == 1
        self.assert_blocks(store, "s", data)
        for call in (lambda: lease.write_blocks({0: b"x"}), lease.flush, lease.renew,
                     lambda: lease.resize(5), lambda: lease.grow(5)):
            err = self.refused_changes_nothing(store, "s", data, LeaseReleasedError, call)
            assert err.lease_id == lease.lease_id  # type: ignore[attr-defined]
        lease.release()  # twice: harmless
        assert lease.read_block(1) == data[1]  # reads need no hold

    def test_context_manager_releases_on_exit_and_on_error(self, store: BlockStore) -> None:
        with store.acquire("s", num_blocks=1) as lease:
            lease.write_blocks({0: b"kept"})
        assert lease.released and store.lease_info("s").holder is None
        with pytest.raises(RuntimeError):
            with store.acquire("s") as lease2:
                assert lease2.epoch == 2
                raise RuntimeError("boom")
        assert lease2.released and store.lease_info("s").holder is None
        self.assert_blocks(store, "s", {0: b"kept"})

    def test_keepalive_renews_until_release(self, store: BlockStore) -> None:
        # A TTL long enough that a loaded machine still renews in time (every ttl / 3).
        ttl = 1.5
        lease = store.acquire("s", ttl=ttl, num_blocks=1, keepalive=True)
        first = lease.acquired_info
        deadline = time.time() + 30
        while store.lease_info("s").expires_at <= first.expires_at:
            assert time.time() < deadline, "keepalive never renewed"
            time.sleep(0.02)
        wait_expired(first)  # past the original expiry, the lease is still held
        lease.write_blocks({0: b"alive"})
        assert store.lease_info("s").is_held()
        lease.release()
        assert store.lease_info("s").holder is None
        time.sleep(ttl / 2)  # a stopped keepalive does not renew a released lease
        assert store.lease_info("s").holder is None

    # -- delete / list / stats / find ----------------------------------------------------
    def test_delete_refused_while_held_by_another(self, store: BlockStore) -> None:
        lease = store.acquire("s", holder="h1", num_blocks=1)
        data = self.write_pattern(lease, 1, [0])
        err = self.refused_changes_nothing(store, "s", data, LeaseHeldError,
                                           lambda: store.delete_lease("s"))
        assert err.holder == "h1"  # type: ignore[attr-defined]
        other = store.acquire("t")
        with pytest.raises(ValueError):  # a handle on another lease gives no right
            store.delete_lease("s", lease=other)
        self.assert_blocks(store, "s", data)

    def test_delete_by_holder_released_or_expired(self, store: BlockStore) -> None:
        a = store.acquire("a", num_blocks=1)
        store.delete_lease("a", lease=a)
        assert a.released and store.find("a") is None
        with pytest.raises(LeaseReleasedError):
            a.write_blocks({0: b"x"})
        b = store.acquire("b")
        b.release()
        store.delete_lease(b.lease_id)
        c = store.acquire("c", ttl=SHORT_TTL)
        wait_expired(c.acquired_info)
        store.delete_lease("c")
        assert store.list_leases() == []
        with pytest.raises(LeaseNotFoundError):
            store.open_reader("a")
        fresh = store.acquire("a", num_blocks=2)
        assert fresh.epoch == 1 and fresh.lease_id != a.lease_id
        assert fresh.read_blocks([0, 1]) == [bytes(self.block_size)] * 2

    def test_delete_with_fenced_handle_refused(self, store: BlockStore) -> None:
        a = store.acquire("s", holder="h1", num_blocks=1)
        b = store.acquire("s", holder="h2", steal=True)
        data = self.write_pattern(b, "b", [0])
        self.refused_changes_nothing(store, "s", data, StaleLeaseError,
                                     lambda: store.delete_lease("s", lease=a))

    def test_list_stats_find_info(self, store: BlockStore) -> None:
        assert store.list_leases() == [] and store.find("x") is None
        st = store.stats()
        assert isinstance(st, StoreStats)
        assert (st.leases, st.held, st.blocks, st.bytes_allocated) == (0, 0, 0, 0)
        b = store.acquire("b", num_blocks=3)
        a = store.acquire("a", num_blocks=2)
        c = store.acquire("c", num_blocks=1)
        c.release()
        names = [i.name for i in store.list_leases()]
        assert names == ["a", "b", "c"]
        st = store.stats()
        assert (st.url, st.block_size) == (store.url, self.block_size)
        assert (st.leases, st.held, st.blocks) == (3, 2, 6)
        assert st.bytes_allocated == 6 * self.block_size
        assert store.find("b") == store.lease_info("b") == store.lease_info(b.lease_id)
        assert store.find("b").lease_id == b.lease_id  # type: ignore[union-attr]
        assert store.open_reader(a.lease_id).name == "a"
        assert store.open_reader("a").lease_id == a.lease_id

    def test_unknown_lease(self, store: BlockStore) -> None:
        store.acquire("known")
        for key in ("nope", "0" * 32, "f" * 32, "g" * 32):
            with pytest.raises(LeaseNotFoundError):
                store.lease_info(key)
            with pytest.raises(KeyError):
                store.open_reader(key)
            with pytest.raises(LeaseNotFoundError):
                store.delete_lease(key)
        assert [i.name for i in store.list_leases()] == ["known"]

    # -- concurrency within a process --------------------------------------------------------
    def test_threads_race_for_a_lease_one_wins(self, store: BlockStore) -> None:
        winners: list[Lease] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def contend(k: int) -> None:
            barrier.wait()
            try:
                winners.append(store.acquire("s", holder=f"t{k}", num_blocks=1))
            except LeaseHeldError:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=contend, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(winners) == 1
        assert store.lease_info("s").holder == winners[0].holder
        assert len(store.list_leases()) == 1
