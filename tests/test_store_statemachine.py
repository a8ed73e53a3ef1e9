"""Property test: a store and its leases against a plain dict model.

Hypothesis drives random sequences of acquire (new, held, released, expired, stolen), write,
renew, release, resize, grow, flush and delete by several holders holding several handles,
some of them stale, and after every step checks that every lease record and every block
equals the model's. Each call's outcome (success or the exact error class) is predicted by
the model first.

Expiry is real, not mocked: a "short" hold gets a TTL of a microsecond and the step waits
until the wall clock has passed its ``expires_at``, so the lease is deterministically
expired for every later step; "long" holds (60 s) never expire within a run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from blockstore import (
    BlockError,
    BlockStore,
    FileStore,
    Lease,
    LeaseExpiredError,
    LeaseHeldError,
    LeaseMismatchError,
    LeaseNotFoundError,
    LeaseReleasedError,
    MemoryStore,
    StaleLeaseError,
)
from blockstore.testing import wait_expired

BS = 512
NAMES = ("a", "b", "c")
HOLDERS = ("h1", "h2", "h3")
SHORT, LONG = 1e-6, 60.0


@dataclass
class MLease:
    lease_id: str
    epoch: int
    holder: str | None
    expired: bool
    num_blocks: int
    blocks: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Handle:
    lease: Lease
    name: str
    released: bool = False  # the model's view of the handle


def _pad(b: bytes) -> bytes:
    return b + bytes(BS - len(b))


class StoreMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.model: dict[str, MLease] = {}

    def make_store(self) -> BlockStore:
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.close()

    # -- model helpers ---------------------------------------------------------------------
    def _expect(self, exc: type[BaseException] | None, call) -> object:  # noqa: ANN001
        if exc is None:
            return call()
        try:
            call()
        except exc:
            return None
        except Exception as other:  # pragma: no cover - a failure report
            raise AssertionError(f"expected {exc.__name__}, got {other!r}") from other
        raise AssertionError(f"expected {exc.__name__}, nothing was raised")

    def _fence_error(self, h: Handle, *, allow_expired: bool) -> type[BaseException] | None:
        """What the store says to ``h`` about the lease's current epoch, or None if current."""
        if h.released:
            return LeaseReleasedError
        m = self.model.get(h.name)
        if m is None or m.lease_id != h.lease.lease_id:
            return LeaseNotFoundError
        if m.epoch != h.lease.epoch:
            return StaleLeaseError
        if m.holder is None:
            return LeaseReleasedError
        if m.expired and not allow_expired:
            return LeaseExpiredError
        return None

    def _hold(self, lease: Lease, ttl: float) -> None:
        if ttl == SHORT:
            wait_expired(self.store.lease_info(lease.lease_id))

    # -- rules -----------------------------------------------------------------------------
    @rule(target=handles, name=st.sampled_from(NAMES), holder=st.sampled_from(HOLDERS),
          short=st.booleans(), steal=st.booleans(), n=st.integers(0, 4))
    def acquire(self, name: str, holder: str, short: bool, steal: bool, n: int):  # noqa: ANN201
        ttl = SHORT if short else LONG
        m = self.model.get(name)
        if m is not None and m.holder is not None and not m.expired and not steal:
            self._expect(LeaseHeldError,
                         lambda: self.store.acquire(name, holder=holder, ttl=ttl, num_blocks=n))
            return multiple()
        lease = self.store.acquire(name, holder=holder, ttl=ttl, num_blocks=n, steal=steal)
        if m is None:
            assert lease.epoch == 1
            self.model[name] = MLease(lease.lease_id, 1, holder, short, n)
        else:
            assert (lease.lease_id, lease.epoch) == (m.lease_id, m.epoch + 1)
            m.epoch, m.holder, m.expired = lease.epoch, holder, short
        self._hold(lease, ttl)
        return Handle(lease, name)

    @rule(h=handles, items=st.dictionaries(st.integers(-1, 5),
                                           st.binary(max_size=BS + 1), min_size=1, max_size=4))
    def write(self, h: Handle, items: dict[int, bytes]) -> None:
        if h.released:
            err: type[BaseException] | None = LeaseReleasedError
        elif any(i < 0 for i in items) or any(len(d) > BS for d in items.values()):
            err = BlockError
        else:
            err = self._fence_error(h, allow_expired=False)
            if err is None and any(i >= self.model[h.name].num_blocks for i in items):
                err = BlockError
        self._expect(err, lambda: h.lease.write_blocks(items))
        if err is None:
            self.model[h.name].blocks.update({i: _pad(d) for i, d in items.items()})

    @rule(h=handles, short=st.booleans())
    def renew(self, h: Handle, short: bool) -> None:
        ttl = SHORT if short else LONG
        err = self._fence_error(h, allow_expired=True)
        self._expect(err, lambda: h.lease.renew(ttl))
        if err is None:
            self.model[h.name].expired = short
            self._hold(h.lease, ttl)

    @rule(h=handles)
    def release(self, h: Handle) -> None:
        err = self._fence_error(h, allow_expired=True)
        h.lease.release()  # never raises
        if err is None:
            m = self.model[h.name]
            m.holder, m.expired = None, False
        h.released = True
        assert h.lease.released

    @rule(h=handles, n=st.integers(0, 6))
    def resize(self, h: Handle, n: int) -> None:
        err = self._fence_error(h, allow_expired=False)
        self._expect(err, lambda: h.lease.resize(n))
        if err is None:
            m = self.model[h.name]
            m.num_blocks = n
            m.blocks = {i: b for i, b in m.blocks.items() if i < n}

    @rule(h=handles, n=st.integers(0, 6))
    def grow(self, h: Handle, n: int) -> None:
        err = self._fence_error(h, allow_expired=False)
        if err in (StaleLeaseError, LeaseExpiredError) or (
                err is LeaseReleasedError and not h.released):
            # Big enough already: grow asks nothing of the store's epoch.
            if n <= self.model[h.name].num_blocks:
                err = None
        self._expect(err, lambda: h.lease.grow(n))
        if err is None:
            m = self.model[h.name]
            m.num_blocks = max(m.num_blocks, n)

    @rule(h=handles)
    def flush(self, h: Handle) -> None:
        self._expect(self._fence_error(h, allow_expired=True), h.lease.flush)

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        m = self.model.get(name)
        if m is None:
            err: type[BaseException] | None = LeaseNotFoundError
        elif m.holder is not None and not m.expired:
            err = LeaseHeldError
        else:
            err = None
        self._expect(err, lambda: self.store.delete_lease(name))
        if err is None:
            del self.model[name]

    @rule(h=consumes(handles))
    def delete_as_holder(self, h: Handle) -> None:
        m = self.model.get(h.name)
        if m is None:
            err: type[BaseException] | None = LeaseNotFoundError
        elif m.lease_id != h.lease.lease_id:
            err = LeaseMismatchError  # a handle on an earlier lease of that name
        elif h.released:  # no right: like a delete without a handle
            err = LeaseHeldError if m.holder is not None and not m.expired else None
        else:
            err = self._fence_error(h, allow_expired=True)
        self._expect(err, lambda: self.store.delete_lease(h.name, lease=h.lease))
        if err is None:
            del self.model[h.name]
            h.released = True

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def records_and_blocks_match(self) -> None:
        infos = self.store.list_leases()
        assert [i.name for i in infos] == sorted(self.model)
        for info in infos:
            m = self.model[info.name]
            assert (info.lease_id, info.epoch, info.holder, info.num_blocks) == \
                (m.lease_id, m.epoch, m.holder, m.num_blocks)
            assert info.is_held() == (m.holder is not None and not m.expired)
            got = self.store.open_reader(info.name).read_blocks(range(m.num_blocks))
            assert got == [m.blocks.get(i, bytes(BS)) for i in range(m.num_blocks)]
        stats = self.store.stats()
        assert stats.blocks == sum(m.num_blocks for m in self.model.values())


class MemoryMachine(StoreMachine):
    def make_store(self) -> BlockStore:
        return MemoryStore(BS)


class FileMachine(StoreMachine):
    def make_store(self) -> BlockStore:
        self.tmp = tempfile.mkdtemp(prefix="bp-sm-")
        return FileStore(self.tmp, BS)

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.tmp, ignore_errors=True)


_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
MemoryMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50, **_common)
FileMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, **_common)

TestMemoryStoreMachine = MemoryMachine.TestCase
TestFileStoreMachine = FileMachine.TestCase
