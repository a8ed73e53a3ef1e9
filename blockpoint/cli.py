"""The ``blockpoint`` command: a thin layer over the packages' APIs.

Subcommands: ``inspect STORE`` (leases), ``verify STORE [LEASE]`` (checkpoints),
``history STORE LEASE`` (one lease's generations), ``gc STORE`` (orphan files, object-store
garbage), ``demo`` (the main job), ``bench``
(benchmarks), ``scheduler status|decisions``.
Every listing prints a readable table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from .table import print_rows
from .table import printable as _printable

__all__ = ["main"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    from blockstore import BlockStoreError, open_store

    try:
        store = open_store(args.store, create=False)
        with store:
            scan = store.scan_leases()
    except BlockStoreError as exc:  # not a store, or corrupt store metadata
        print(f"blockpoint inspect: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    rows: list[dict[str, object]] = []
    for i in scan.leases:
        if i.holder is None:
            expiry = "released"
        elif i.expires_at <= now:
            expiry = f"expired {now - i.expires_at:.0f}s ago"
        else:
            expiry = f"in {i.expires_at - now:.0f}s"
        rows.append({"name": _printable(i.name), "id": i.lease_id,
                     "holder": _printable(i.holder or "-"),
                     "epoch": i.epoch, "blocks": i.num_blocks, "expiry": expiry}
                    if not args.json else i.to_dict())
    for err in scan.unreadable:  # listed, not hidden: one bad record must not hide the rest
        lease_id = os.path.basename(err.path or "?").removesuffix(".json")
        rows.append({"name": "?", "id": lease_id, "holder": "-", "epoch": "-", "blocks": "-",
                     "expiry": "UNREADABLE RECORD"} if not args.json else
                    {"lease_id": lease_id, "path": err.path, "error": str(err)})
        print(f"blockpoint inspect: {err}", file=sys.stderr)
    print_rows(rows, ["name", "id", "holder", "epoch", "blocks", "expiry"],
               as_json=args.json, empty=f"no leases in {store.url}")
    return 1 if scan.unreadable else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blockpoint",
        description="Durable, crash-safe checkpoints for stateful Ray pipeline stages.")
    p.add_argument("--log-format", choices=("kv", "json"), default=None,
                   help="print blockpoint's log records to stderr as key=value or JSON lines "
                        "(default: $BLOCKPOINT_LOG_FORMAT, else Python's default logging)")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("inspect", help="list the leases of a store")
    sp.add_argument("store", help="store directory or URL")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=_cmd_inspect)
    # Other subcommands register themselves here as their packages land.
    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list:
    out = []
    for modname in ("blockpoint.cli_verify", "blockpoint.cli_history", "blockpoint.cli_gc",
                    "blockpoint.cli_scheduler",
                    "blockpoint.cli_demo", "blockpoint.cli_bench"):
        try:
            mod = __import__(modname, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        out.append(mod.register)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_format:
        from blockstore.logs import configure

        configure(args.log_format)
    else:
        from blockstore.logs import configure_from_env

        configure_from_env()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
