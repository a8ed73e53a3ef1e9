"""The fault matrix (``docs/RELIABILITY.md``): reduced size by default, full size on demand.

``pytest tests/faults --faults-full`` runs every case of every row (every bit of every
covered byte, every truncation point...); the default runs a deterministic sample of each
row that still touches every block and every kind of structure, so ``make test`` stays fast.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--faults-full", action="store_true", default=False,
                     help="run the fault matrix at full size (slow)")


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    """Whether the matrix runs at full size."""
    return bool(request.config.getoption("--faults-full"))
