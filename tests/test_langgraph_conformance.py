"""LangGraph's own conformance suite against ``BlockpointSaver``, one store URL at a time.

The suite (``langgraph-checkpoint-conformance``) detects which capabilities a saver
overrides and runs each one's tests against a fresh saver from the factory. Ours must pass
all base and all extended capabilities on every backend; LangGraph's ``InMemorySaver`` runs
in the same test as the reference (5/5 base, the 3 extended ones not implemented).

``STORE_URLS`` is the list of backends; each entry turns a fresh temporary directory into a
store URL (the object store: a prefix of its own on the loopback S3 server of
``tests/s3server.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    BASE_CAPABILITIES,
    EXTENDED_CAPABILITIES,
)
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.checkpoint.memory import InMemorySaver

from blockpoint_langgraph import BlockpointSaver

STORE_URLS: dict[str, Callable[[Path], str]] = {
    "file": lambda tmp: f"file://{tmp / 'store'}",
    "memory": lambda tmp: f"memory://langgraph-conformance-{uuid.uuid4().hex}",
    "s3": lambda tmp: "",          # filled from the s3_server fixture
}


def _counts(report: CapabilityReport) -> tuple[int, int]:
    """(base capabilities passed, extended capabilities passed)."""
    def passed(caps: frozenset) -> int:
        return sum(1 for c in caps if report.results[c.value].passed is True)
    return passed(BASE_CAPABILITIES), passed(EXTENDED_CAPABILITIES)


def _run(factory: Callable[[], AsyncIterator[object]], name: str) -> CapabilityReport:
    registered = checkpointer_test(name=name)(factory)
    report = asyncio.run(validate(registered))
    report.print_report()
    return report


@pytest.mark.parametrize("backend", sorted(STORE_URLS))
def test_conformance_full(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "s3":
        url = request.getfixturevalue("s3_server").url(f"langgraph-{uuid.uuid4().hex[:8]}")
    else:
        url = STORE_URLS[backend](tmp_path)

    async def ours() -> AsyncIterator[BlockpointSaver]:
        # an object store is shared: documents there are MAC'd (unkeyed ones are refused)
        key = "conformance-key" if backend == "s3" else None
        saver = BlockpointSaver(url, block_size=64 * 1024, key=key)
        try:
            yield saver
        finally:
            saver.close()

    async def reference() -> AsyncIterator[InMemorySaver]:
        yield InMemorySaver()

    report = _run(ours, f"BlockpointSaver[{backend}]")
    failures = {k: r.failures for k, r in report.results.items() if r.failures}
    assert report.passed_all_base(), failures
    assert report.passed_all() and report.conformance_level() == "FULL", failures
    assert _counts(report) == (5, 3)

    ref = _run(reference, "InMemorySaver")
    assert ref.passed_all_base()
    assert _counts(ref) == (5, 0)
    assert not any(ref.results[c.value].detected for c in EXTENDED_CAPABILITIES)
