"""``blockpoint gc STORE``: remove a store's garbage objects (object stores).

Only object stores make garbage: blocks of failed or fenced flushes, blocks replaced by a
later commit whose removal failed, records of deleted leases (see docs/FORMAT.md, section
6.4). The rule never removes an object a flush that may still succeed could publish, so this
is safe while stages run. File and memory stores overwrite blocks in place and keep none.
Exit status: 0 done, 2 the store cannot be opened.
"""

from __future__ import annotations

import argparse
import sys

from .table import print_rows

__all__ = ["register"]


def _cmd_gc(args: argparse.Namespace) -> int:
    from blockstore import BlockStoreError, ObjectStore, open_store

    try:
        store = open_store(args.store, create=False)
    except BlockStoreError as exc:
        print(f"blockpoint gc: {exc}", file=sys.stderr)
        return 2
    with store:
        if not isinstance(store, ObjectStore):
            print(f"nothing to collect: {store.url} overwrites blocks in place and keeps no "
                  "garbage")
            return 0
        try:
            report = store.gc()
        except BlockStoreError as exc:
            print(f"blockpoint gc: {exc}", file=sys.stderr)
            return 2
    row = {"store": store.url, "deleted_blocks": report.deleted_blocks,
           "deleted_records": report.deleted_records,
           "kept_unpublished": report.kept_unpublished}
    print_rows([row], list(row), as_json=args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("gc", help="remove garbage objects of an object store")
    sp.add_argument("store", help="store URL (s3://, gs://, az://) or directory")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=_cmd_gc)
