"""Property test of the object-store backend against the dict model of
tests/test_store_statemachine.py, extended with what ``publish_on_flush`` means.

The model keeps, per lease, what is published (flushed or released) and what the current
epoch wrote since. The store object that writes sees both ("read your writes"); after a
takeover the unflushed writes of the fenced epoch are gone; a second store object on the
same prefix (another process) sees exactly the published blocks, checked after every step.
"""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import consumes, invariant, rule

from blockstore import BlockStore, ObjectStore, open_store
from test_store_statemachine import (
    BS,
    HOLDERS,
    NAMES,
    Handle,
    StoreMachine,
    _pad,
)

pytestmark = pytest.mark.usefixtures("s3_server")
_SERVER: list[object] = []


@pytest.fixture(autouse=True)
def _bind_server(s3_server) -> None:  # type: ignore[no-untyped-def]
    _SERVER[:] = [s3_server]


class ObjectStoreMachine(StoreMachine):
    def make_store(self) -> BlockStore:
        self.url = _SERVER[0].url(f"sm-{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]
        self.published: dict[str, dict[int, bytes]] = {}
        self.unflushed: dict[str, dict[int, bytes]] = {}
        return open_store(self.url, block_size=BS)

    def _publish(self, name: str) -> None:
        self.published[name] = dict(self.model[name].blocks)
        self.unflushed.pop(name, None)

    @rule(target=StoreMachine.handles, name=st.sampled_from(NAMES),
          holder=st.sampled_from(HOLDERS), short=st.booleans(), steal=st.booleans(),
          n=st.integers(1, 4))
    def acquire(self, name: str, holder: str, short: bool, steal: bool, n: int):  # noqa: ANN201
        before = self.model.get(name)
        epoch = before.epoch if before is not None else None
        out = StoreMachine.acquire(self, name, holder, short, steal, n)
        m = self.model[name]
        if epoch is None:
            self.published[name], self.unflushed[name] = {}, {}
        elif m.epoch != epoch:  # takeover: the fenced epoch's unflushed writes are lost
            m.blocks = dict(self.published.get(name, {}))
            self.unflushed.pop(name, None)
        return out

    # Mostly valid writes (bad ones are the base machines' and the conformance suite's
    # subject): what matters here is unflushed data meeting takeovers and releases.
    @rule(h=StoreMachine.handles, items=st.dictionaries(
        st.integers(0, 2), st.binary(min_size=1, max_size=BS), min_size=1, max_size=2))
    def write(self, h: Handle, items: dict[int, bytes]) -> None:
        ok = not h.released and all(i >= 0 for i in items) and \
            all(len(d) <= BS for d in items.values()) and \
            self._fence_error(h, allow_expired=False) is None and \
            all(i < self.model[h.name].num_blocks for i in items)
        StoreMachine.write(self, h, items)
        if ok:
            self.unflushed.setdefault(h.name, {}).update({i: _pad(d) for i, d in items.items()})

    @rule(h=StoreMachine.handles)
    def flush(self, h: Handle) -> None:
        ok = self._fence_error(h, allow_expired=True) is None
        StoreMachine.flush(self, h)
        if ok:
            self._publish(h.name)

    @rule(h=StoreMachine.handles)
    def release(self, h: Handle) -> None:
        ok = self._fence_error(h, allow_expired=True) is None
        StoreMachine.release(self, h)
        if ok:  # release publishes the unflushed writes with it
            self._publish(h.name)

    @rule(h=StoreMachine.handles, n=st.integers(0, 6))
    def resize(self, h: Handle, n: int) -> None:
        ok = self._fence_error(h, allow_expired=False) is None
        StoreMachine.resize(self, h, n)
        if ok:
            for view in (self.published, self.unflushed):
                view[h.name] = {i: b for i, b in view.get(h.name, {}).items() if i < n}

    @rule(name=st.sampled_from(NAMES))
    def delete(self, name: str) -> None:
        StoreMachine.delete(self, name)
        if name not in self.model:
            self.published.pop(name, None)
            self.unflushed.pop(name, None)

    @rule(h=consumes(StoreMachine.handles))
    def delete_as_holder(self, h: Handle) -> None:
        StoreMachine.delete_as_holder(self, h)
        if h.name not in self.model:
            self.published.pop(h.name, None)
            self.unflushed.pop(h.name, None)

    @invariant()
    def another_process_sees_what_is_published(self) -> None:
        with ObjectStore(self.url) as other:
            infos = other.list_leases()
            assert [i.name for i in infos] == sorted(self.model)
            for info in infos:
                m = self.model[info.name]
                got = other.open_reader(info.name).read_blocks(range(m.num_blocks))
                pub = self.published.get(info.name, {})
                assert got == [pub.get(i, bytes(BS)) for i in range(m.num_blocks)]


ObjectStoreMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TestObjectStoreMachine = ObjectStoreMachine.TestCase
