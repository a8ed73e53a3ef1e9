"""``blockpoint scheduler status|decisions``: look at a running scheduler actor.

A thin layer over :class:`scheduler.Scheduler`: it connects to the cluster (``--address``,
default ``auto``), finds the named scheduler actor in ``--namespace`` and prints its
``status()`` (stages with node, marks and last checkpoint; nodes with free CPU and drains)
or ``decisions()`` (the decision log) as readable tables, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .table import human_bytes, local_time, print_rows

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``scheduler status`` and ``scheduler decisions`` to the ``blockpoint`` parser."""
    sp = subparsers.add_parser("scheduler", help="inspect the scheduler actor")
    sub = sp.add_subparsers(dest="scheduler_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default="auto",
                       help="Ray cluster address (default: auto, the local cluster)")
        p.add_argument("--namespace", default=None, help="Ray namespace of the scheduler")
        p.add_argument("--name", default="blockpoint-scheduler", help="scheduler actor name")
        p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    st = sub.add_parser("status", help="stages, nodes, marks, last checkpoints")
    common(st)
    st.set_defaults(func=_cmd_status)
    de = sub.add_parser("decisions", help="the decision log, newest first")
    common(de)
    de.add_argument("--limit", type=int, default=50, help="at most this many entries")
    de.set_defaults(func=_cmd_decisions)


def _connect(args: argparse.Namespace) -> Any:
    import ray

    from scheduler.actor import get_scheduler
    from scheduler.errors import SchedulerUnavailableError

    try:
        if not ray.is_initialized():
            _check_reachable(args.address)
            try:
                ray.init(address=args.address, namespace=args.namespace, log_to_driver=False,
                         logging_level="ERROR")
            # ValueError: "Invalid address format: <the address, whole>"; RuntimeError:
            # "Module: redis does not exist. This module was parsed from Address: <it>"
            except (ValueError, RuntimeError) as exc:
                raise ConnectionError(str(exc)) from None
        return get_scheduler(args.name, args.namespace)
    except SchedulerUnavailableError as exc:
        print(f"blockpoint scheduler: {exc}", file=sys.stderr)
    except ConnectionError as exc:
        from blockstore.redact import redact_ray_address, redact_text

        shown, spans = redact_ray_address(args.address)
        print(f"blockpoint scheduler: cannot reach Ray at {shown}: "
              f"{redact_text(' '.join(str(exc).split()), spans)}", file=sys.stderr)
    return None


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an explicit ``host:port`` nobody listens on (Ray would retry forever)."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"{exc}") from exc


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "-"
    d = now - t
    return f"{d:.0f}s ago" if d >= 0 else f"in {-d:.0f}s"


def _cmd_status(args: argparse.Namespace) -> int:
    handle = _connect(args)
    if handle is None:
        return 2
    import ray

    status = ray.get(handle.status.remote())
    if args.json:
        json.dump(status, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    now = time.time()
    rows = []
    for s in status["stages"]:
        ck = s.get("checkpoint") or {}
        rows.append({
            "stage": s["stage_id"],
            "status": s["status"],
            "node": (s.get("node_id") or "-")[:12],
            "prio": s.get("priority", "-"),
            "epoch": s.get("epoch", "-"),
            "marks": ",".join(s.get("reasons") or []) or "-",
            "generation": ck.get("generation", "-"),
            "checkpoint": _ago(ck.get("committed_at"), now),
            "flush": _flush(s, now),
            "size": human_bytes(ck["size_bytes"]) if ck.get("size_bytes") else "-",
            "work_since": f"{s.get('work_records', 0)} rec/{s.get('work_seconds', 0.0):.0f}s",
        })
    print(f"scheduler {status['name']!r} (namespace {status['namespace']!r}), "
          f"{len(rows)} stage(s)")
    print_rows(rows, ["stage", "status", "node", "prio", "epoch", "marks", "generation",
                      "checkpoint", "flush", "size", "work_since"], empty="no stages registered")
    print()
    nodes = []
    for n in status["nodes"]:
        if "error" in n:
            nodes.append({"node": "?", "state": n["error"]})
            continue
        dl = n.get("draining_deadline")
        nodes.append({
            "node": n["node_id"][:12],
            "state": ("alive" if n["alive"] else "dead") + (" head" if n.get("is_head") else ""),
            "cpu_free": f"{n['free'].get('CPU', 0):g}/{n['total'].get('CPU', 0):g}"
            if n["alive"] else "-",
            "draining": "-" if dl is None else ("no deadline" if dl == 0 else _ago(dl, now)),
            "stages": sum(1 for s in status["stages"] if s.get("node_id") == n["node_id"]),
        })
    print_rows(nodes, ["node", "state", "cpu_free", "draining", "stages"], empty="no nodes")
    return 0


def decision_rows(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table rows of ``scheduler decisions``: one per entry, whatever it lacks.

    Entries come from the scheduler's log and from its persisted registry, which an older
    version, a damaged document or a hand edit may have left without a field: a missing
    ``at`` (or one no clock gives) shows ``?``, a missing ``seq``, ``kind`` or ``outcome``
    ``?``; one odd entry never hides the others (it raised ``KeyError`` before).
    """
    rows = []
    for d in entries:
        notes = "; ".join(f"{k}: {v}" for k, v in _pairs(d.get("notes")))
        plan = d.get("plan")
        if isinstance(plan, Mapping) and not notes:
            picked = [c for c in plan.get("candidates") or []
                      if isinstance(c, Mapping) and c.get("verdict") != "skipped"][:3]
            notes = "; ".join(f"{c.get('stage_id', '?')}: {c.get('why', '')}" for c in picked)
        rows.append({
            "seq": d.get("seq", "?"),
            "time": local_time(d.get("at"), "%H:%M:%S"),
            "kind": d.get("kind") or "?",
            "outcome": d.get("outcome") or "?",
            "reason": d.get("reason") or "-",
            "stages": ",".join(map(str, d.get("victims") or [])) or "-",
            "notes": notes[:120] or "-",
        })
    return rows


def _pairs(notes: Any) -> list[tuple[Any, Any]]:
    """A decision's notes as (stage id, text) pairs; a malformed note is shown whole."""
    out = []
    for n in notes or []:
        if isinstance(n, (list, tuple)) and len(n) == 2:
            out.append((n[0], n[1]))
        else:
            out.append(("?", n))
    return out


def _flush(stage: dict[str, Any], now: float) -> str:
    """``"flushing 3s"`` while a flush mark is set, else the last checkpoint's duration."""
    since = stage.get("flushing_since")
    if since is not None:
        return f"flushing {max(now - since, 0):.0f}s"
    took = stage.get("checkpoint_s")
    return "-" if took is None else f"{took:.2f}s"


def _cmd_decisions(args: argparse.Namespace) -> int:
    handle = _connect(args)
    if handle is None:
        return 2
    import ray

    entries = ray.get(handle.decisions.remote(args.limit))
    if args.json:
        print_rows(entries, [], as_json=True)
        return 0
    rows = decision_rows(entries)
    print_rows(rows, ["seq", "time", "kind", "outcome", "reason", "stages", "notes"],
               empty="no decisions logged")
    return 0
