"""``blockpoint demo``: the main job - on embedded defaults (local 3-node Ray, file store),
or on a running cluster (``--address`` / ``$RAY_ADDRESS``) against any store URL
(``--store`` / ``$BLOCKPOINT_STORE_URL``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from blockstore import StoreURLError

    from .demo import run_demo
    from .demo_store import STORE_ENV
    from .errors import DemoSetupError

    kw: dict[str, Any] = {}
    if args.quick:
        kw.update(events=80_000, sketch_mib=64, checkpoint_every=4_000)
    if args.events is not None:
        kw["events"] = args.events
    if args.sketch_mib is not None:
        kw["sketch_mib"] = args.sketch_mib
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    store = args.store or os.environ.get(STORE_ENV) or None
    if address:
        kw["address"] = address
    if store:
        kw["store"] = store
    try:
        result = run_demo(workdir=args.workdir, keep=args.keep,
                          out=sys.stderr if args.json else sys.stdout, **kw)
    except (DemoSetupError, StoreURLError) as exc:
        print(f"blockpoint demo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0 if result.exact else 1


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the main job: node loss + preemption, exactly once")
    p.add_argument("--quick", action="store_true", help="a smaller stream (CI)")
    p.add_argument("--events", type=_positive, default=None, help="events in the stream")
    p.add_argument("--sketch-mib", type=_positive, default=None,
                   help="MiB of the aggregation stage's state (its checkpoint size; default 64)")
    p.add_argument("--address", default=None,
                   help="attach to this running Ray cluster (HOST:PORT or 'auto'; default "
                        "$RAY_ADDRESS, which `ray job submit` sets) instead of starting one")
    p.add_argument("--store", default=None,
                   help="store URL (path, file://, s3://BUCKET/PREFIX?region=R...; default "
                        "$BLOCKPOINT_STORE_URL); each run writes under a fresh demo-* place "
                        "in it")
    p.add_argument("--workdir", default=None, help="keep store and output here")
    p.add_argument("--keep", action="store_true", help="do not delete the work dir")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_demo)
