"""Durable save and load of the same states by blockpoint and by its peers, in one run.

Every row is a median of ``repeat`` timed runs on the same data, and a ratio to the physical
limits measured in the same run: a raw in-place overwrite + fsync of the same bytes, a raw
write of a new file + fsync (``fsync`` of the directory too), and a raw read into
``np.empty``. "Durable" means what a checkpoint must be: on stable storage when the call
returns, so every peer's save is followed by ``fsync`` of what it wrote.

Peers: ``np.save``, ``pickle`` (protocol 5), ``torch.save`` and
``torch.distributed.checkpoint`` (when torch is installed: ``pip install torch==2.13.0``),
Ray Train's ``Checkpoint.from_directory`` persisted to a storage path (when
``ray[train]`` is installed), and blockpoint's synchronous and asynchronous checkpoints
(the stall and the whole flush). States: a 256 MiB float32 array, a dict of 1 M small
tuples, a mixed state (arrays and small objects), and a 1 GiB float32 array - measured
with fewer repeats (:data:`BIG_REPEAT`, said in each row's ``note``): 1 GiB x every peer x
5 medians takes many minutes on a 2-core VM. ``quick`` skips it. The raw limits come from
:func:`bench.limits.raw_limits`, the same helper every table uses.
A missing peer is reported as a row with ``note`` = "not installed". blockpoint's rows are
steady state (its lease already holds both retained generations and is rewritten in place);
every peer rewrites its own file or directory.
"""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.limits import MiB, fsync_tree, median, ratio, raw_limits

__all__ = ["BIG_REPEAT", "run"]

BLOCK = 1 << 20
#: Repeats for the 1 GiB state (each row says so).
BIG_REPEAT = 2
BIG = "numpy 1 GiB"

def _states(full: bool, quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = (16 if quick else 256) * MiB // 4
    out: dict[str, Any] = {"numpy 256 MiB" if not quick else "numpy 16 MiB":
                           {"weights": rng.random(n, dtype=np.float32)}}
    small = 100_000 if quick else 1_000_000
    out[f"{small:,} small tuples"] = {i: (i, f"k{i % 1000}", i * 0.5) for i in range(small)}
    out["mixed"] = {"emb": rng.random(n // 4, dtype=np.float32),
                    "ids": np.arange(n // 16, dtype=np.int64),
                    "meta": {f"user{i}": [i, i * 2] for i in range(small // 10)}}
    if full:
        out[BIG] = {"weights": rng.random(1024 * MiB // 4, dtype=np.float32)}
    return out


def _nbytes(state: Any) -> int:
    from stages.checkpoint import codec as codecs

    return codecs.encode(state, "pickle").length  # what a checkpoint writes (pickle-5 framed)


def _peers(root: str, state: Any) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]] | str]:
    """name -> (durable save, load), or the reason it cannot run."""
    out: dict[str, tuple[Callable[[], Any], Callable[[], Any]] | str] = {}
    arr = state.get("weights") if isinstance(state, dict) and len(state) == 1 else None
    if isinstance(arr, np.ndarray):
        npy = os.path.join(root, "s.npy")

        def np_save() -> None:
            with open(npy, "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
        out["np.save"] = (np_save, lambda: np.load(npy))
    pkl = os.path.join(root, "s.pkl")

    def pk_save() -> None:
        with open(pkl, "wb") as f:
            pickle.dump(state, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())

    def pk_load() -> Any:
        with open(pkl, "rb") as f:
            return pickle.load(f)
    out["pickle"] = (pk_save, pk_load)
    try:
        import torch
        import torch.distributed.checkpoint as dcp
    except ImportError:
        out["torch.save"] = out["torch DCP"] = "not installed"
    else:
        tensors = ({k: torch.from_numpy(v) for k, v in state.items()}
                   if isinstance(state, dict) and all(isinstance(v, np.ndarray)
                                                      for v in state.values()) else None)
        pt = os.path.join(root, "s.pt")

        def t_save() -> None:
            with open(pt, "wb") as f:
                torch.save(tensors if tensors is not None else state, f)
                f.flush()
                os.fsync(f.fileno())
        out["torch.save"] = (t_save, lambda: torch.load(pt, weights_only=False))
        if tensors is not None:
            dcp_dir = os.path.join(root, "dcp")

            def d_save() -> None:
                shutil.rmtree(dcp_dir, ignore_errors=True)
                dcp.save(tensors, checkpoint_id=dcp_dir)
                fsync_tree(dcp_dir)

            def d_load() -> None:
                target = {k: torch.empty_like(v) for k, v in tensors.items()}
                dcp.load(target, checkpoint_id=dcp_dir)
            out["torch DCP"] = (d_save, d_load)
        else:
            out["torch DCP"] = "tensors only"
    try:
        from ray.train import Checkpoint
    except ImportError:
        out["Ray Train Checkpoint"] = "not installed"
    else:
        local = os.path.join(root, "rt-local")
        storage = os.path.join(root, "rt-storage")

        def rt_save() -> None:
            shutil.rmtree(local, ignore_errors=True)
            shutil.rmtree(storage, ignore_errors=True)
            os.makedirs(local)
            with open(os.path.join(local, "state.pkl"), "wb") as f:
                pickle.dump(state, f, protocol=5)
            Checkpoint.from_directory(local).to_directory(storage)   # persist
            fsync_tree(storage)

        def rt_load() -> Any:
            back = os.path.join(root, "rt-back")
            shutil.rmtree(back, ignore_errors=True)
            Checkpoint.from_directory(storage).to_directory(back)
            with open(os.path.join(back, "state.pkl"), "rb") as f:
                return pickle.load(f)
        out["Ray Train Checkpoint"] = (rt_save, rt_load)
    return out


def _ours(root: str, state: Any) -> tuple[Callable[[], Any], Callable[[], Any],
                                         Callable[[], Any], list[float]]:
    from blockstore import open_store
    from stages import CheckpointedStageState

    store = open_store(os.path.join(root, "bp"), block_size=BLOCK)
    lease = store.acquire("bench")
    css = CheckpointedStageState(state, lease)
    css.checkpoint()  # steady state: the lease sized for both retained generations, as a
    #                   stage's lease is after its first checkpoints (median() warms up once more)
    reader = store.open_reader("bench")
    stalls: list[float] = []

    def sync() -> None:
        css.checkpoint()

    def asynchronous() -> None:
        pending = css.checkpoint_async()
        stalls.append(pending.stall_s)
        pending.wait()

    def load() -> Any:
        return CheckpointedStageState.restore(reader).state
    return sync, asynchronous, load, stalls


def run(quick: bool = False, full: bool = True, repeat: int | None = None
        ) -> list[dict[str, Any]]:
    """Rows: state, op, seconds, ratio to the raw limits of the same bytes.

    ``full`` (default) includes the 1 GiB state, with :data:`BIG_REPEAT` repeats; ``quick``
    uses small states, two repeats and never the 1 GiB one.
    """
    base_repeat = repeat or (2 if quick else 5)
    rows: list[dict[str, Any]] = []
    for label, state in _states(full and not quick, quick).items():
        rep = min(base_repeat, BIG_REPEAT) if label == BIG else base_repeat
        tag = f"median of {rep}" if label == BIG else ""
        root = tempfile.mkdtemp(prefix="bp-peers-")
        try:
            nbytes = _nbytes(state)
            raw = raw_limits(root, nbytes, rep)

            def row(op: str, secs: float | None, note: str = "") -> dict[str, Any]:
                r: dict[str, Any] = {"state": label, "MiB": round(nbytes / MiB, 1), "op": op,
                                     "seconds": None if secs is None else round(secs, 4)}
                if secs is not None and op.startswith("load"):
                    r["/ raw read"] = ratio(secs, raw.read)
                elif secs is not None:
                    r["/ raw new file"] = ratio(secs, raw.new)
                    r["/ raw overwrite"] = ratio(secs, raw.overwrite)
                note = "; ".join(x for x in (note, tag) if x)
                if note:
                    r["note"] = note
                return r

            rows += [row("raw new file + fsync", raw.new),
                     row("raw overwrite + fsync", raw.overwrite),
                     row("load: raw read into np.empty", raw.read)]
            sync, asynchronous, load, stalls = _ours(root, state)
            t_sync = median(sync, rep)
            t_async = median(asynchronous, rep)
            stall = statistics.median(stalls[1:])  # the first one is the warm-up
            rows += [row("blockpoint checkpoint", t_sync),
                     row("blockpoint async: stall", stall,
                         note=f"{stall / t_sync:.3f}x the sync one"),
                     row("blockpoint async: whole flush", t_async,
                         note=f"{t_async / t_sync:.3f}x the sync one"),
                     row("load: blockpoint restore (verified)", median(load, rep))]
            for name, peer in _peers(root, state).items():
                if isinstance(peer, str):
                    rows.append(row(name, None, note=peer))
                    continue
                save, peer_load = peer
                rows.append(row(name, median(save, rep)))
                rows.append(row(f"load: {name}", median(peer_load, rep)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


COLUMNS = ["state", "MiB", "op", "seconds", "/ raw new file", "/ raw overwrite", "/ raw read",
           "note"]


def main() -> None:
    import argparse

    from blockpoint.table import print_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-big", action="store_true", help="skip the 1 GiB state")
    args = p.parse_args()
    print_rows(run(quick=args.quick, full=not args.no_big), COLUMNS)


if __name__ == "__main__":
    main()
