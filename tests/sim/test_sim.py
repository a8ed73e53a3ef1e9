"""The deterministic simulation of the object-store protocol (issue 18 item 3).

``test_random_mixes`` runs ``$BLOCKPOINT_SIM_SEEDS`` seeds (default 2000; e.g. 100000 for a
long run, ``$BLOCKPOINT_SIM_SEED_START`` to move the window) of random client mixes, and
``test_document_mixes`` and ``test_langgraph_saver_mixes`` a quarter as many each of
slotted-document savers and loaders and of LangGraph-saver writers and readers; each
race in ``scenarios.KNOWN_RACES`` has a targeted scenario that is an expected failure until
its fix lands (then remove it from the set). A failure prints the seed, the mix, each
client's end and the trace of every step, and the command that replays it exactly.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from .documents import document_mix
from .lgsaver import saver_mix
from .scenarios import KNOWN_RACES, OPEN_FINDINGS, RACES, Outcome, random_mix, run_mix

SEEDS = int(os.environ.get("BLOCKPOINT_SIM_SEEDS", "2000"))
SEED_START = int(os.environ.get("BLOCKPOINT_SIM_SEED_START", "0"))
#: Seeds each race scenario runs (each finds its race within its first 12 seeds on
#: today's code; see docs/RELIABILITY.md).
RACE_SEEDS = int(os.environ.get("BLOCKPOINT_SIM_RACE_SEEDS", "300"))
#: Seeds of slotted-document and of LangGraph-saver mixes (a quarter of SEEDS each).
DOC_SEEDS = int(os.environ.get("BLOCKPOINT_SIM_DOC_SEEDS", str(max(SEEDS // 4, 1))))


class SeedFailed(AssertionError):
    """A seed broke an invariant: the message is its full report."""


def _fail(outcome: Outcome, replay: str) -> None:
    raise SeedFailed(f"{outcome.report()}\n\nreplay: PYTHONPATH=. .venv/bin/python -m "
                     f"tests.sim.replay {replay}")


def test_random_mixes() -> None:
    t0 = time.monotonic()
    steps = 0
    for seed in range(SEED_START, SEED_START + SEEDS):
        out = run_mix(seed, random_mix(seed))
        steps += out.steps
        if out.violation is not None:
            _fail(out, str(seed))
    print(f"sim: {SEEDS} seeds from {SEED_START}, {steps} steps, "
          f"{time.monotonic() - t0:.1f}s; left out: {sorted(KNOWN_RACES | OPEN_FINDINGS)}")


def test_document_mixes() -> None:
    """Savers and loaders of one slotted document (blockstore/document.py): every load is a
    document some saver saved, never older than the newest save that returned."""
    t0 = time.monotonic()
    for seed in range(SEED_START, SEED_START + DOC_SEEDS):
        out = run_mix(seed, document_mix(seed))
        if out.violation is not None:
            _fail(out, f"{seed} --documents")
    print(f"sim: {DOC_SEEDS} document seeds, {time.monotonic() - t0:.1f}s")


def test_langgraph_saver_mixes() -> None:
    """Writers (takeover and refuse) and a reader of one LangGraph thread through
    ``BlockpointSaver``: the newest checkpoint read is one a writer put, and every put that
    returned is found by later reads."""
    t0 = time.monotonic()
    for seed in range(SEED_START, SEED_START + DOC_SEEDS):
        out = run_mix(seed, saver_mix(seed))
        if out.violation is not None:
            _fail(out, f"{seed} --langgraph")
    print(f"sim: {DOC_SEEDS} langgraph seeds, {time.monotonic() - t0:.1f}s")


@pytest.mark.parametrize("race", [
    pytest.param(r, marks=pytest.mark.xfail(strict=True, raises=SeedFailed,
                                            reason=f"known race {r} (issue 18 item 1); fix "
                                                   "on its own branch"))
    if r in KNOWN_RACES else r for r in sorted(RACES)])
def test_race_scenario(race: str) -> None:
    """The scenario that finds ``race`` on today's code holds its invariants over
    ``RACE_SEEDS`` seeds once the race is fixed."""
    for seed in range(RACE_SEEDS):
        out = run_mix(seed, RACES[race](random.Random(seed)))
        if out.violation is not None:
            _fail(out, f"{seed} --race {race}")


def test_a_seed_replays_exactly() -> None:
    """Same seed, same run: the trace (every request, fault and reply) is identical, for a
    clean random mix and for a run that breaks an invariant."""
    for seed, make in [(7, lambda s: random_mix(s)),
                       (0, lambda s: RACES["delete_vs_recreate"](random.Random(s)))]:
        a, b = run_mix(seed, make(seed)), run_mix(seed, make(seed))
        assert a.trace == b.trace and a.results == b.results
        assert str(a.violation) == str(b.violation)
        assert a.steps > 20
