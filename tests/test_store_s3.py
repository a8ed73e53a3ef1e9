"""The conformance suite against the object-store backend on a real S3 server (moto on
loopback), plus what only an object store has: the layout, reopening, errors per cause."""

from __future__ import annotations

import uuid

import pytest

from blockstore import ObjectStore, open_store
from blockstore.testing import StoreConformance


@pytest.fixture(autouse=True)
def _server(s3_server) -> None:  # type: ignore[no-untyped-def]
    pass


class TestObjectStore(StoreConformance):
    @pytest.fixture(autouse=True)
    def _bind(self, s3_server) -> None:  # type: ignore[no-untyped-def]
        self.server = s3_server

    def make_store(self, block_size: int) -> ObjectStore:
        store = open_store(self.server.url(f"conf-{uuid.uuid4().hex[:12]}"),
                           block_size=block_size)
        assert isinstance(store, ObjectStore)
        return store
