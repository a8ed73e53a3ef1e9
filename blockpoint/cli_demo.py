"""``blockpoint demo``: the main job on embedded defaults (local 3-node Ray, file store)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    kw: dict[str, Any] = {}
    if args.quick:
        kw.update(events=80_000, sketch_mib=64, checkpoint_every=4_000)
    if args.events is not None:
        kw["events"] = args.events
    result = run_demo(workdir=args.workdir, keep=args.keep,
                      out=sys.stderr if args.json else sys.stdout, **kw)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0 if result.exact else 1


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the main job: node loss + preemption, exactly once")
    p.add_argument("--quick", action="store_true", help="a smaller stream (CI)")
    p.add_argument("--events", type=int, default=None, help="events in the stream")
    p.add_argument("--workdir", default=None, help="keep store and output here")
    p.add_argument("--keep", action="store_true", help="do not delete the work dir")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_demo)
