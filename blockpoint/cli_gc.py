"""``blockpoint gc STORE``: remove what interrupted operations left in a store.

A thin layer over :meth:`blockstore.BlockStore.gc`: the data and lock files of leases whose
record is gone (a crash inside ``delete_lease``) and stale temporary files of record writes.
Never a file a live lease uses; safe while stages run. ``--dry-run`` only lists them.
Exit status: 0 (done, or nothing to do), 2 (not a store, an I/O error, or a ``--min-age``
that is not a finite number of seconds >= 0).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from .progress import bar
from .table import human_bytes, print_rows

__all__ = ["register"]

COLUMNS = ["path", "kind", "lease", "size"]


def _cmd_gc(args: argparse.Namespace) -> int:
    from blockstore import BlockStoreError, open_store
    from blockstore.work import watch

    if not math.isfinite(args.min_age) or args.min_age < 0:
        # nan compares false with every age: every temporary file, a write's in progress
        # too, would count as old (and a negative age asks for the same)
        print(f"blockpoint gc: --min-age must be a finite number of seconds >= 0, not "
              f"{args.min_age:g}", file=sys.stderr)
        return 2
    try:
        with open_store(args.store, create=False) as store, \
                bar(None, "gc: listing", unit="obj", as_json=args.json) as progress, \
                watch(lambda kind, n: progress.update(n)):
            report = store.gc(dry_run=args.dry_run, min_age=args.min_age)
    except BlockStoreError as exc:
        print(f"blockpoint gc: {exc}", file=sys.stderr)
        return 2
    if args.json:
        rows: list[dict[str, Any]] = [{"path": i.path, "kind": i.kind, "lease_id": i.lease_id,
                                       "bytes": i.bytes, "removed": not report.dry_run}
                                      for i in report.removed]
    else:
        rows = [{"path": i.path, "kind": i.kind, "lease": i.lease_id or "-",
                 "size": human_bytes(i.bytes)} for i in report.removed]
    print_rows(rows, COLUMNS, as_json=args.json, empty=f"nothing to collect in {report.url}")
    if not args.json:
        verb = "would free" if report.dry_run else "freed"
        print(f"{len(report.removed)} item(s), {verb} {human_bytes(report.bytes_freed)}; "
              f"{report.live_leases} live lease(s) kept", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``gc`` to the ``blockpoint`` command (called by ``blockpoint.cli``)."""
    sp = subparsers.add_parser("gc", help="remove orphan files (crashed deletes, temp files)")
    sp.add_argument("store", help="store directory or URL")
    sp.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    sp.add_argument("--min-age", type=float, default=60.0, metavar="SECONDS",
                    help="only temporary files older than this (default 60; younger ones may "
                         "belong to a write in progress)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=_cmd_gc)
