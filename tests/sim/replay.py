"""Replay one seed of the simulation and print its trace (see tests/sim/scenarios.py)."""

from __future__ import annotations

import argparse
import random

from .scenarios import KNOWN_RACES, RACES, random_mix, run_mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("seed", type=int)
    ap.add_argument("--race", choices=sorted(RACES), help="the scenario of a known race")
    ap.add_argument("--all-mixes", action="store_true",
                    help="random mixes as if no race were known")
    a = ap.parse_args()
    if a.race:
        mix = RACES[a.race](random.Random(a.seed))
    else:
        mix = random_mix(a.seed, frozenset() if a.all_mixes else KNOWN_RACES)
    print(run_mix(a.seed, mix).report())


if __name__ == "__main__":
    main()
