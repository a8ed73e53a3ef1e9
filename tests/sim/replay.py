"""Replay one seed of the simulation and print its report and trace, or sweep many seeds
(see tests/sim/scenarios.py)::

    python -m tests.sim.replay SEED [--race NAME | --documents | --langgraph] [--all-mixes]
    python -m tests.sim.replay --sweep 100000 [--start N] [--all-mixes] [--race NAME]
"""

from __future__ import annotations

import argparse
import collections
import random
import time

from .documents import document_mix
from .lgsaver import saver_mix
from .scenarios import KNOWN_RACES, OPEN_FINDINGS, RACES, Mix, random_mix, run_mix


def _mix(seed: int, race: str | None, all_mixes: bool, kind: str = "") -> Mix:
    known = frozenset() if all_mixes else KNOWN_RACES | OPEN_FINDINGS
    if kind == "documents":
        return document_mix(seed, known)
    if kind == "langgraph":
        return saver_mix(seed, known)
    if race:
        return RACES[race](random.Random(seed))
    return random_mix(seed, known)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seed", type=int, nargs="?")
    ap.add_argument("--race", choices=sorted(RACES), help="the scenario of a known race")
    ap.add_argument("--all-mixes", action="store_true",
                    help="random mixes as if no race were known")
    ap.add_argument("--documents", dest="kind", action="store_const", const="documents",
                    default="", help="slotted-document mixes")
    ap.add_argument("--langgraph", dest="kind", action="store_const", const="langgraph",
                    help="LangGraph-saver mixes")
    ap.add_argument("--sweep", type=int, metavar="N", help="run N seeds, summarise")
    ap.add_argument("--start", type=int, default=0)
    a = ap.parse_args()
    if a.sweep is None:
        if a.seed is None:
            ap.error("give a seed or --sweep N")
        print(run_mix(a.seed, _mix(a.seed, a.race, a.all_mixes, a.kind)).report())
        return
    t0, steps = time.monotonic(), 0
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    first: dict[tuple[str, str], int] = {}
    for seed in range(a.start, a.start + a.sweep):
        out = run_mix(seed, _mix(seed, a.race, a.all_mixes, a.kind))
        steps += out.steps
        if out.violation is not None:
            key = (out.mix.label, out.violation.kind)
            found[key] += 1
            first.setdefault(key, seed)
    print(f"{a.sweep} seeds from {a.start}: {steps} steps in {time.monotonic() - t0:.1f}s")
    for key, n in sorted(found.items()):
        print(f"  {key[0]}: {key[1]} in {n} seeds, first seed {first[key]}")
    if not found:
        print("  no invariant broken")


if __name__ == "__main__":
    main()
