"""Client mixes, the known races, and running one seed.

:data:`KNOWN_RACES` is the one switch for the four data-loss races of issue 18 that today's
code has (their fixes land separately). While a race is listed, its targeted scenario is an
expected failure (tests/sim/test_sim.py) and the random mixes leave out the clients or
faults that trigger it; remove it once its fix is merged and both the scenario and the
random mixes cover it again.

Replay a seed exactly (the trace shows every step)::

    PYTHONPATH=. .venv/bin/python -m tests.sim.replay SEED            # a random mix
    PYTHONPATH=. .venv/bin/python -m tests.sim.replay SEED --race gc_vs_new_lease
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blockstore.errors import BlockStoreError

from . import clients as cl
from .clients import Sim, Spec
from .invariants import Violation
from .scheduler import Faults, World
from .store import Request

__all__ = ["KNOWN_RACES", "RACES", "Mix", "Outcome", "random_mix", "run_mix"]

#: Races of today's code (issue 18 item 1), each with its scenario in RACES.
KNOWN_RACES: frozenset[str] = frozenset({
    # All four fixed and merged (objfix): "gc_vs_new_lease" (gc judged blocks against a
    # listing older than a new lease's flush), "release_vs_next_holder" (release collected
    # with its own released record), "delete_vs_recreate" (delete ended with an unconditional
    # delete of the record), "flush_lost_reply_takeover" (a flush of unknown outcome deleted
    # what it published). Put a name back to see its scenario find the race again.
})

#: What the random mixes still leave out (a name as in KNOWN_RACES); empty: nothing. The
#: findings of the fixed code with nothing left out are fixed (simfind): seeds 1081/1108
#: lost-commit ("flush_lost_reply_takeover": a flush took its generation in a record for
#: proof that its put landed), 1408/1999 unexpected-error (delete_lease(lease=) on a
#: deleted and re-created lease: now LeaseMismatchError), 1915 reachable-deleted
#: ("delete_vs_recreate": gc's tombstone DELETE resent after a lost reply; now sent once).
OPEN_FINDINGS: frozenset[str] = frozenset()


@dataclass
class Mix:
    """What one run is: clients, faults, and leases prepared before the run."""

    label: str
    specs: list[Spec]
    faults: Faults = field(default_factory=Faults)
    prepared: dict[str, bool] = field(default_factory=dict)  # lease -> released
    fault_ok: Callable[[Request, str], bool] | None = None

    def describe(self) -> str:
        prep = ",".join(f"{k}{'' if v else '(held)'}" for k, v in self.prepared.items())
        return (f"{self.label}: " + " ".join(s.describe() for s in self.specs)
                + (f" prepared={prep}" if prep else ""))


@dataclass
class Outcome:
    seed: int
    mix: Mix
    violation: Violation | None
    steps: int
    results: dict[str, Any]
    trace: str

    def report(self) -> str:
        head = f"seed {self.seed} ({self.mix.describe()}): "
        head += "ok" if self.violation is None else f"VIOLATION {self.violation}"
        ends = ", ".join(f"{k}: {v}" for k, v in self.results.items())
        return f"{head}\n  clients: {ends}\n  steps: {self.steps}\n{self.trace}"


def no_lost_record_replies(req: Request, fault: str) -> bool:
    """Lost replies everywhere except on lease-record puts (race 4 needs one)."""
    return not (fault.startswith("lost-reply") and req.op == "PUT"
                and req.key.startswith("leases/"))


def only_lost_record_replies(req: Request, fault: str) -> bool:
    return fault.startswith("lost-reply") and req.op == "PUT" and \
        req.key.startswith("leases/")


def run_mix(seed: int, mix: Mix) -> Outcome:
    """Run ``mix`` under ``seed``: a setup phase without faults, then every client."""
    world = World(seed, Faults.none())
    sim = Sim(world)
    sim.setup_store()
    for lease, released in mix.prepared.items():
        cl.prepare(sim, lease, release=released)
    violation = None
    try:
        world.run()
        world.faults, world.fault_ok = mix.faults, mix.fault_ok or world.fault_ok
        for spec in mix.specs:
            world.add_client(spec.name, lambda name, p=spec.program: p(sim, name))
        world.run()
    except Violation as exc:
        violation = exc
    if violation is None:
        for c in world.clients.values():
            if c.error is not None and not isinstance(c.error, BlockStoreError):
                violation = Violation("unexpected-error", f"{c.name} raised "
                                      f"{type(c.error).__name__}: {c.error}\n{c.error_text}")
                break
    results = {c.name: (f"stopped by {type(c.error).__name__}" if c.error else c.result)
               for c in world.clients.values()}
    return Outcome(seed, mix, violation, world.step, results, world.format_trace())


# -- the four races, one scenario each -------------------------------------------------------
def _race_gc(rng: random.Random) -> Mix:
    return Mix("gc_vs_new_lease",
               [Spec("gc", cl.gc(rounds=2)),
                Spec("h1", cl.holder("a", cycles=1, end="abandon"))], Faults.none())


def _race_release(rng: random.Random) -> Mix:
    return Mix("release_vs_next_holder",
               [Spec("h1", cl.holder("a", cycles=1, flush=False, end="release")),
                Spec("h2", cl.holder("a", cycles=1, end="abandon"))],
               Faults.none(), prepared={"a": True})


def _race_delete(rng: random.Random) -> Mix:
    return Mix("delete_vs_recreate",
               [Spec("del", cl.deleter("a")),
                Spec("h1", cl.holder("a", cycles=1, end="abandon"))],
               Faults.none(), prepared={"a": True})


def _race_lost_reply(rng: random.Random) -> Mix:
    return Mix("flush_lost_reply_takeover",
               [Spec("h1", cl.holder("a", cycles=3, end="abandon")),
                Spec("h2", cl.holder("a", steal=True, cycles=1, end="abandon",
                                     wait_first=rng.randint(2, 12)))],
               Faults(lost_reply=0.5, lost_reply_error=0.0, dropped=0.0, dropped_error=0.0,
                      stale=0.0, crash=0.0),
               prepared={"a": True}, fault_ok=only_lost_record_replies)


RACES: dict[str, Callable[[random.Random], Mix]] = {
    "gc_vs_new_lease": _race_gc,
    "release_vs_next_holder": _race_release,
    "delete_vs_recreate": _race_delete,
    "flush_lost_reply_takeover": _race_lost_reply,
}


# -- random mixes ----------------------------------------------------------------------------
def _contend(rng: random.Random, known: frozenset[str]) -> Mix:
    """Two or three holders on one lease (waiting, stealing, expiring), a reader, and -
    unless a known race forbids it - a gc and a deleter of that lease."""
    ends = ["release", "abandon"] + ([] if "delete_vs_recreate" in known else ["delete"])
    specs = [Spec(f"h{k}", cl.holder(
        "a", steal=rng.random() < 0.4, cycles=rng.randint(1, 3), end=rng.choice(ends),
        ttl=rng.choice([5.0, 60.0]), flush=rng.random() < 0.85,
        flush_before_release="release_vs_next_holder" in known))
        for k in range(1, rng.randint(2, 3) + 1)]
    specs.append(Spec("rd", cl.reader("a", rounds=rng.randint(2, 4))))
    if "gc_vs_new_lease" not in known and rng.random() < 0.5:
        specs.append(Spec("gc", cl.gc(rounds=rng.randint(1, 2), min_age=rng.choice([0, 60]))))
    if "delete_vs_recreate" not in known and rng.random() < 0.3:
        specs.append(Spec("del", cl.deleter("a")))
    prepared = {"a": rng.random() < 0.7} if rng.random() < 0.7 else {}
    fault_ok = no_lost_record_replies if "flush_lost_reply_takeover" in known else None
    return Mix("contend", specs, prepared=prepared, fault_ok=fault_ok)


def _solo(rng: random.Random, known: frozenset[str]) -> Mix:
    """One holder per lease, every fault (lost replies on records included), readers, a
    deleter of a lease of its own, and a gc when the known races allow it."""
    specs = [Spec("h1", cl.holder("a", cycles=rng.randint(1, 3),
                                  end=rng.choice(["release", "abandon", "delete"]),
                                  flush_before_release="release_vs_next_holder" in known)),
             Spec("h2", cl.holder("b", cycles=rng.randint(1, 3),
                                  end=rng.choice(["release", "abandon"]),
                                  flush_before_release="release_vs_next_holder" in known)),
             Spec("rd", cl.reader(rng.choice("ab"), rounds=rng.randint(1, 3))),
             Spec("del", cl.deleter("c"))]
    if "gc_vs_new_lease" not in known:
        specs.append(Spec("gc", cl.gc(rounds=rng.randint(1, 2), min_age=rng.choice([0, 60]))))
    return Mix("solo", specs, prepared={"b": rng.random() < 0.5, "c": True})


def _collect(rng: random.Random, known: frozenset[str]) -> Mix:
    """gc rounds against takeovers of a held lease, a deleter and readers."""
    gc_safe = "gc_vs_new_lease" in known  # holders then never create nor re-acquire
    ends = ["abandon"] if gc_safe else ["abandon", "release"]
    specs = [Spec("gc", cl.gc(rounds=rng.randint(1, 3), min_age=rng.choice([0, 60]))),
             Spec("h1", cl.holder("b", steal=gc_safe or rng.random() < 0.5,
                                  cycles=rng.randint(1, 2), end=rng.choice(ends),
                                  ttl=rng.choice([5.0, 60.0]),
                                  flush_before_release="release_vs_next_holder" in known)),
             Spec("del", cl.deleter("c")),
             Spec("rd", cl.reader("b", rounds=rng.randint(1, 2)))]
    if rng.random() < 0.5:
        specs.append(Spec("rd2", cl.reader("c")))
    return Mix("collect", specs, prepared={"b": False, "c": True})


FAMILIES = {"contend": _contend, "solo": _solo, "collect": _collect}


def random_mix(seed: int, known: frozenset[str] = KNOWN_RACES | OPEN_FINDINGS) -> Mix:
    rng = random.Random(f"mix-{seed}")
    family = sorted(FAMILIES)[seed % len(FAMILIES)]
    return FAMILIES[family](rng, known)
