"""The fault matrix (``docs/RELIABILITY.md``): reduced size by default, full size on demand.

``pytest tests/faults --faults-full`` (or ``BLOCKPOINT_FAULTS_FULL=1``, which the option
sets for modules that size their parametrization at import) runs every case of every row
(every bit of every covered byte, every truncation point, more kill points...); the default
runs a deterministic sample of each row that still touches every block and every kind of
structure, so ``make test`` stays fast.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--faults-full", action="store_true", default=False,
                     help="run the fault matrix at full size (slow)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--faults-full", default=False):
        os.environ["BLOCKPOINT_FAULTS_FULL"] = "1"


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    """Whether the matrix runs at full size."""
    return bool(request.config.getoption("--faults-full")) \
        or os.environ.get("BLOCKPOINT_FAULTS_FULL") == "1"
