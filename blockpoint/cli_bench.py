"""``blockpoint bench``: run the benchmarks that ship with the distribution, print tables.

Why lazily imported, and each one optional: the benchmarks live in the ``bench`` package,
written alongside the parts they measure and landing at different times; a missing one is
skipped with a note rather than breaking the command. Each bench module exposes ``run``;
most return a list of row dicts, ``bench.bench_manager.run`` returns ``{"cases": {...}}``,
and :func:`rows_of` turns either into rows.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .table import print_rows

__all__ = ["BENCHES", "register", "rows_of", "run_bench"]

#: Short name -> module, in the order they run.
BENCHES: dict[str, str] = {
    "store": "bench.bench_store",
    "checkpoint": "bench.bench_checkpoint",
    "incremental": "bench.bench_incremental",
    "keyed": "bench.bench_keyed_state",
    "manager": "bench.bench_manager",
    "peers": "bench.bench_peers",
    "actor": "bench.bench_actor",
    "async": "bench.bench_async",
    "pipeline": "bench.bench_pipeline",
    "engine": "bench.bench_engine",
    "parallel": "bench.bench_parallel",
    "batch": "bench.bench_batch",
    "langgraph": "bench.bench_langgraph",
    "objstore": "bench.bench_objstore",
    "scheduler": "bench.bench_scheduler",
}


def register(subparsers: Any) -> None:
    """Add ``bench [--quick] [--json] [--only NAME]`` to the ``blockpoint`` parser."""
    p = subparsers.add_parser("bench", help="run the benchmarks and print their tables")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--only", metavar="NAME", action="append", choices=sorted(BENCHES),
                   help="run only this bench (repeatable): " + ", ".join(BENCHES))
    p.set_defaults(func=_cmd_bench)


def _load(modname: str) -> Any | None:
    """The bench module, or ``None`` if it is not (yet) part of the distribution."""
    try:
        return __import__(modname, fromlist=["run"])
    except ModuleNotFoundError as exc:
        if exc.name not in (modname, "bench"):
            raise  # the bench exists but something it needs is missing: say so
        return None


def rows_of(result: Any) -> list[dict[str, Any]]:
    """Rows from whatever a bench's ``run`` returned.

    A list of mappings is taken as is; ``{"cases": {name: {...}}, **context}`` becomes one
    row per case (``case`` first, then the case's values, then the context such as
    ``n_stages``); any other mapping is one row.
    """
    if isinstance(result, Mapping):
        cases = result.get("cases")
        if isinstance(cases, Mapping):
            context = {k: v for k, v in result.items() if k != "cases"}
            return [{"case": name, **dict(values), **context} for name, values in cases.items()]
        return [dict(result)]
    return [dict(r) for r in result]


def run_bench(name: str, module: Any, quick: bool) -> list[dict[str, Any]]:
    """Run one bench module's ``run`` with the arguments it takes."""
    fn: Callable[..., Any] = module.run
    params = inspect.signature(fn).parameters
    if "quick" in params:
        return rows_of(fn(quick=quick))
    if name == "manager" or "n_stages" in params:
        # Issue 4's target size; quick only cuts the repeats.
        return rows_of(fn(n_stages=10_000, repeats=10 if quick else 50))
    return rows_of(fn())


def _cell(v: Any) -> str:
    """A table cell: floats to 4 significant digits (JSON output keeps them whole)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 10_000 else f"{v:.4g}"
    return str(v)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols and k != "bench")
    return cols


def _cmd_bench(args: argparse.Namespace) -> int:
    chosen = args.only or list(BENCHES)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in chosen:
        module = _load(BENCHES[name])
        if module is None:
            print(f"bench {name}: {BENCHES[name]} is not installed, skipped", file=sys.stderr)
            if args.only:
                return 2
            continue
        print(f"bench {name}: running{' (quick)' if args.quick else ''} ...", file=sys.stderr,
              flush=True)
        t0 = time.perf_counter()
        results[name] = run_bench(name, module, args.quick)
        print(f"bench {name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)
        if not args.json:
            print(f"\n== {name} ({BENCHES[name]})")
            rows = [{k: _cell(v) for k, v in r.items()} for r in results[name]]
            print_rows(rows, _columns(rows))
            sys.stdout.flush()
    if args.json:
        json.dump(results, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0
