"""``blockpoint verify STORE [LEASE]``: check every checkpoint generation, decode nothing.

Every header slot of every lease (or of LEASE) is verified: header CRC, block map, every data
chunk's CRC-32C and, when a key is configured, the MAC. Nothing is unpickled. Leases that
hold no ``PCHK`` header at all (not checkpoint leases, or never checkpointed) are listed as
"not a checkpoint" and do not fail the run. The ``shared`` column counts the chunks a
generation shares with others (incremental checkpoints) and names them. Exit status: 0 all committed generations verify,
1 at least one is corrupt, 2 the store or lease cannot be opened.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .table import human_bytes, print_rows

__all__ = ["register"]

COLUMNS = ["lease", "slot", "generation", "step", "size", "codec", "ratio", "shared", "status"]


def _cmd_verify(args: argparse.Namespace) -> int:
    from blockstore import LeaseNotFoundError, StorePathError, open_store
    from stages import NoCheckpointError, verify_lease
    from blockstore.keys import KeyRing, resolve_keys

    try:
        ring = resolve_keys()  # $BLOCKPOINT_CHECKPOINT_KEY and the rotated-out old keys
    except ValueError as exc:
        print(f"blockpoint verify: {exc}", file=sys.stderr)
        return 2
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            print(f"blockpoint verify: ${args.key_env} is not set", file=sys.stderr)
            return 2
        try:
            current = resolve_keys(key).current  # type: ignore[union-attr]
        except ValueError as exc:  # KeySettingError: not UTF-8; names no key
            print(f"blockpoint verify: ${args.key_env}: {exc}", file=sys.stderr)
            return 2
        ring = KeyRing(current, ring.all if ring is not None else ())
    try:
        store = open_store(args.store, create=False)
    except StorePathError as exc:
        print(f"blockpoint verify: {exc}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    corrupt = False
    with store:
        try:
            infos = [store.lease_info(args.lease)] if args.lease else store.list_leases()
        except LeaseNotFoundError as exc:
            print(f"blockpoint verify: {exc}", file=sys.stderr)
            return 2
        for info in infos:
            reader = store.open_reader(info.lease_id)
            try:
                reports = verify_lease(reader, key=ring)
            except NoCheckpointError:
                rows.append({"lease": info.name, "lease_id": info.lease_id, "slot": "-",
                             "generation": "-", "step": "-", "size": "-", "codec": "-",
                             "ratio": "-", "shared": "-", "status": "not a checkpoint"})
                continue
            for r in reports:
                corrupt |= r.corrupt
                if args.json:
                    rows.append({"lease": info.name, **r.to_dict()})
                    continue
                rows.append({"lease": info.name, "slot": r.slot,
                             "generation": "-" if r.generation is None else r.generation,
                             "step": "-" if r.step is None else r.step,
                             "size": "-" if r.size is None else human_bytes(r.size),
                             "codec": r.codec or "-",
                             "ratio": "-" if r.ratio is None else f"{r.ratio:.2f}",
                             "shared": _shared(r), "status": r.status})
        print_rows(rows, COLUMNS, as_json=args.json, empty=f"no leases in {store.url}")
    return 1 if corrupt else 0


def _shared(r: Any) -> str:
    """``"250 chunks with gen 4, 3"`` for incremental generations; ``"-"`` when none."""
    if not r.shared:
        return "-"
    return f"{r.shared} chunks with gen {', '.join(map(str, r.shared_with))}"


def register(subparsers: Any) -> None:
    """Add ``verify`` to the ``blockpoint`` command (called by ``blockpoint.cli``)."""
    sp = subparsers.add_parser("verify", help="verify every checkpoint generation of a store")
    sp.add_argument("store", help="store directory or URL")
    sp.add_argument("lease", nargs="?", default=None, help="only this lease (name or id)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument("--key-env", metavar="VAR", default=None,
                    help="check MACs with the key in $VAR (default: $BLOCKPOINT_CHECKPOINT_KEY "
                         "if set); the old keys in $BLOCKPOINT_CHECKPOINT_OLD_KEYS are "
                         "accepted too")
    sp.set_defaults(func=_cmd_verify)
