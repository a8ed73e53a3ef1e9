"""``blockpoint verify STORE [LEASE]``: check every checkpoint generation, decode nothing.

Every header slot of every lease (or of LEASE) is verified: header CRC, block map, every data
chunk's CRC-32C and, when a key is configured, the MAC. Nothing is unpickled. Leases that
hold no ``PCHK`` header at all (not checkpoint leases, or never checkpointed) are listed as
"not a checkpoint" and do not fail the run. The ``shared`` column counts the chunks a
generation shares with others (incremental checkpoints) and names them. Without a key, a
generation that carries a MAC is verified by its checksums only and says so (``ok, MAC not
checked (no key)``, and a line on stderr): ``ok`` alone means everything it carries was
checked. ``--max-state-bytes N`` applies a restore's bound (``max_state_bytes``,
``docs/FORMAT.md`` 2.7 step 3a): a generation declaring more state fails without its payload
being read, as a restore with that bound would refuse it. Exit status: 0 all committed
generations verify, 1 at least one is corrupt, 2 the store or lease cannot be opened or read
(a bad URL, a missing or unreachable store: one line on stderr, as ``inspect`` and ``gc``
print it).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from .progress import bar
from .table import human_bytes, print_rows

__all__ = ["register"]

#: What ``--key-env`` takes: the name of an environment variable (POSIX portable names).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: A variable name as people write them (capitals, digits, ``_``; with an ``_`` or at most 20
#: characters - an all-capitals base32 or hex key is longer and has none): shown when unset;
#: any other name may be a key pasted where its name goes, and is not.
_CONVENTIONAL_NAME = re.compile(r"(?=[A-Z0-9_]*_|[A-Z0-9_]{1,20}\Z)[A-Z_][A-Z0-9_]*\Z")

COLUMNS = ["lease", "slot", "generation", "step", "size", "codec", "ratio", "shared", "status"]


def _cmd_verify(args: argparse.Namespace) -> int:
    from blockstore import BlockStoreError

    try:
        return _verify(args)
    except BlockStoreError as exc:  # a bad URL, no store there, unreachable, unreadable
        print(f"blockpoint verify: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    from blockstore import open_store
    from blockstore.keys import (
        KEY_ENV,
        KEY_FILE_ENV,
        KeyRing,
        env_keys,
        not_shown,
        resolve_keys,
    )

    try:
        ring = resolve_keys()  # $BLOCKPOINT_CHECKPOINT_KEY and the rotated-out old keys
    except ValueError as exc:
        print(f"blockpoint verify: {exc}", file=sys.stderr)
        return 2
    if args.lease == "":
        print("blockpoint verify: the LEASE argument is empty: give a lease name or id, or "
              "leave it out to verify every lease", file=sys.stderr)
        return 2
    if args.key_env is not None:
        if not args.key_env:
            print("blockpoint verify: --key-env is empty: give the name of the environment "
                  "variable that holds the key (or leave the option out)", file=sys.stderr)
            return 2
        if not _ENV_NAME.match(args.key_env):  # perhaps the key itself, pasted: not echoed
            print(f"blockpoint verify: --key-env takes the name of the environment variable "
                  f"that holds the key, and {not_shown(args.key_env)} is not a variable "
                  f"name; if you pasted the key itself, treat it as exposed (a CI log, the "
                  f"shell's history) and put the new key in a 0600 file named by "
                  f"${KEY_FILE_ENV}", file=sys.stderr)
            return 2
        key = os.environ.get(args.key_env)
        if not key and not _CONVENTIONAL_NAME.match(args.key_env):
            # a name like this may be the key pasted (base64 without + or /): not echoed
            print(f"blockpoint verify: the variable --key-env names "
                  f"({not_shown(args.key_env)}) is not set; if you pasted the key itself, "
                  f"treat it as exposed and put the new key in a 0600 file named by "
                  f"${KEY_FILE_ENV}", file=sys.stderr)
            return 2
        if not key:
            print(f"blockpoint verify: ${args.key_env} is not set", file=sys.stderr)
            return 2
        try:  # read as $BLOCKPOINT_CHECKPOINT_KEY is: stripped, the raw value an old key
            current, *raw = env_keys(key, f"${args.key_env}")
        except ValueError as exc:  # KeySettingError: names the variable, never the key
            print(f"blockpoint verify: {exc}", file=sys.stderr)
            return 2
        ring = KeyRing(current, (*raw, *(ring.all if ring is not None else ())))
    store = open_store(args.store, create=False)
    rows: list[dict[str, Any]] = []
    corrupt = False
    unchecked = 0  # generations whose MAC was not checked (no key)
    with store:
        if args.lease:
            infos, unreadable = [store.lease_info(args.lease)], ()
        else:  # every readable lease is verified; each unreadable record is a failed row
            scan = store.scan_leases()
            infos, unreadable = list(scan.leases), scan.unreadable
        for err in unreadable:
            corrupt = True
            print(f"blockpoint verify: {err}", file=sys.stderr)
            rows.append({"lease": "?", "lease_id": os.path.basename(err.path or "?")
                         .removesuffix(".json"), "slot": "-", "generation": "-", "step": "-",
                         "size": "-", "codec": "-", "ratio": "-", "shared": "-",
                         "status": f"UNREADABLE RECORD {err.path}"})
        reports_of = _verify_all(store, infos, ring, args.json, args.max_state_bytes)
        for info in infos:
            reports = reports_of[info.lease_id]
            if reports is None:
                rows.append({"lease": info.name, "lease_id": info.lease_id, "slot": "-",
                             "generation": "-", "step": "-", "size": "-", "codec": "-",
                             "ratio": "-", "shared": "-", "status": "not a checkpoint"})
                continue
            for r in reports:
                corrupt |= r.corrupt
                not_checked = r.ok and bool(r.has_mac) and not r.mac_checked
                unchecked += not_checked
                if args.json:
                    rows.append({"lease": info.name, **r.to_dict()})
                    continue
                rows.append({"lease": info.name, "slot": r.slot,
                             "generation": "-" if r.generation is None else r.generation,
                             "step": "-" if r.step is None else r.step,
                             "size": "-" if r.size is None else human_bytes(r.size),
                             "codec": r.codec or "-",
                             "ratio": "-" if r.ratio is None else f"{r.ratio:.2f}",
                             "shared": _shared(r),
                             "status": "ok, MAC not checked (no key)" if not_checked
                             else r.status})
        print_rows(rows, COLUMNS, as_json=args.json, empty=f"no leases in {store.url}")
    if unchecked:
        print(f"blockpoint verify: {unchecked} generation(s) carry a MAC that was NOT "
              f"checked - no key is set; their checksums verify. Set ${KEY_FILE_ENV} (a "
              f"0600 key file) or ${KEY_ENV}, or pass --key-env VAR, to check who wrote "
              "them", file=sys.stderr)
    return 1 if corrupt else 0


def _verify_all(store: Any, infos: list[Any], ring: Any, as_json: bool,
                max_state_bytes: int | None) -> dict[str, Any]:
    """Every lease's reports (``None``: not a checkpoint), with a bar of the bytes read."""
    from blockstore.work import watch
    from stages import NoCheckpointError, verify_lease

    out: dict[str, Any] = {}
    seen = done = 0  # bytes the bar shows; bytes of the leases verified so far

    def step(kind: str, n: int) -> None:
        nonlocal seen
        if kind == "verify_bytes":
            seen += n
            progress.update(n)

    with bar(sum(i.num_blocks for i in infos) * store.block_size, "verify",
             as_json=as_json) as progress, watch(step):
        for info in infos:
            progress.note(info.name)
            try:
                out[info.lease_id] = verify_lease(store.open_reader(info.lease_id), key=ring,
                                                  max_state_bytes=max_state_bytes)
            except NoCheckpointError:
                out[info.lease_id] = None
            # The lease's headers, free and shared blocks: the bar ends at 100 %.
            done += info.num_blocks * store.block_size
            progress.update(max(0, done - seen))
            seen = max(seen, done)
    return out


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
                    help="check MACs with the key in $VAR (the variable's name, not the "
                         "key; default: $BLOCKPOINT_CHECKPOINT_KEY "
                         "if set); the old keys in $BLOCKPOINT_CHECKPOINT_OLD_KEYS are "
                         "accepted too")
    sp.add_argument("--max-state-bytes", metavar="N", type=_max_state_bytes, default=None,
                    help="the largest state a generation may declare before it is read "
                         "(default: unbounded for headers a key authenticates, else "
                         "max(256 MiB, 100 x the lease's data bytes)); a generation declaring "
                         "more fails ('not read: ...'), as a restore would refuse it")
    sp.set_defaults(func=_cmd_verify)


def _max_state_bytes(text: str) -> int:
    """``--max-state-bytes``: an int >= 0 (bytes; ``_`` separators allowed)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
