"""``blockpoint history STORE LEASE``: a stage's checkpoint generations, oldest first, verified.

One row per retained generation (the lease keeps ``retention`` of them; the long history of
every checkpoint is in the metrics, ``docs/OPERATIONS.md``): generation, step, when it was
written, how long the checkpoint took, payload and stored size, compression ratio, full or
incremental, and whether it verifies now (checksums, map and - with a key - the MAC; nothing
is decoded). Exit status: 0 every generation verifies, 1 one does not, 2 the store, the lease
or the key cannot be opened.

The lease may be live: a generation its stage dropped while this read it is shown as
recycled, not as a failure. A header's time fields are only as trustworthy as the header
(without a key its CRC is no proof against a forger): a time or duration no clock could have
produced (not finite, negative, beyond the platform's calendar) is shown as ``?`` and given
as ``null`` in ``--json``, never a traceback or a non-JSON ``NaN``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from .table import human_bytes, local_time, print_rows

__all__ = ["register"]

COLUMNS = ["generation", "step", "written", "took", "size", "stored", "ratio", "kind",
           "verified"]


def _cmd_history(args: argparse.Namespace) -> int:
    from blockstore import BlockStoreError, open_store
    from blockstore.keys import resolve_keys
    from stages import NoCheckpointError, verify_lease

    try:
        ring = resolve_keys()
        store = open_store(args.store, create=False)
    except (ValueError, BlockStoreError) as exc:
        print(f"blockpoint history: {exc}", file=sys.stderr)
        return 2
    with store:
        try:
            reader = store.open_reader(args.lease)
            reports = verify_lease(reader, key=ring)
        except NoCheckpointError:
            print(f"blockpoint history: lease {args.lease!r} holds no checkpoint",
                  file=sys.stderr)
            return 2
        except BlockStoreError as exc:
            print(f"blockpoint history: {exc}", file=sys.stderr)
            return 2
    gens = sorted((r for r in reports if r.generation is not None and r.step is not None),
                  key=lambda r: r.generation or 0)
    bad = any(r.corrupt for r in reports)
    if args.json:
        print_rows([{**r.to_dict(), "verified": r.ok, "mac_checked": ring is not None}
                    for r in gens], [], as_json=True)
        return 1 if bad else 0
    rows: list[dict[str, Any]] = []
    for r in gens:
        rows.append({
            "generation": r.generation, "step": r.step,
            "written": _when(r.created_at),
            "took": _took(r.duration_s),
            "size": "-" if r.size is None else human_bytes(r.size),
            "stored": "-" if r.stored is None else human_bytes(r.stored),
            "ratio": "-" if r.ratio is None else f"{r.ratio:.2f}",
            "kind": "full" if not r.depth else f"incremental ({r.depth})",
            "verified": ("yes" if ring is not None else "yes (MAC not checked: no key)")
            if r.ok else "recycled while reading (not corruption)"
            if r.status.startswith("recycled") else f"NO: {r.status}",
        })
    print(f"lease {args.lease!r} in {store.url}: {len(rows)} generation(s) retained")
    print_rows(rows, COLUMNS, empty="no committed generation")
    return 1 if bad else 0


def _when(t: float | None) -> str:
    """A header's wall-clock time as local time; ``?`` for one no clock gives."""
    return "-" if t is None else local_time(t)


def _took(d: float | None) -> str:
    if d is None:
        return "-"
    return f"{d:.3f}s" if math.isfinite(d) and d >= 0 else "?"


def register(subparsers: Any) -> None:
    """Add ``history`` to the ``blockpoint`` command (called by ``blockpoint.cli``)."""
    sp = subparsers.add_parser("history", help="a lease's checkpoint generations, verified")
    sp.add_argument("store", help="store directory or URL")
    sp.add_argument("lease", help="the lease (stage id or lease id)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.set_defaults(func=_cmd_history)
