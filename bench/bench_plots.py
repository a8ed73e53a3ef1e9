"""Time against state size for blockpoint and its peers, and the async stall, as PNG plots.

``python -m bench.bench_plots [OUT_DIR]`` measures durable saves of float32 arrays of
16-256 MiB (medians of 3; blockpoint sync and async, ``np.save``, ``pickle``, ``torch.save``
when installed, raw new-file write + fsync) and writes ``save_time_vs_size.png`` and
``stall_vs_size.png`` (needs matplotlib; the rows are returned without it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from bench.bench_peers import _ours, _peers
from bench.limits import MiB, median, raw_limits

__all__ = ["plot", "sweep"]


def sweep(sizes_mib: tuple[int, ...] = (16, 64, 128, 256), repeat: int = 3
          ) -> list[dict[str, Any]]:
    """Rows: size, op, seconds."""
    rows: list[dict[str, Any]] = []
    for size in sizes_mib:
        state = {"weights": np.random.default_rng(size).random(size * MiB // 4,
                                                                dtype=np.float32)}
        root = tempfile.mkdtemp(prefix="bp-plot-")
        try:
            raw = raw_limits(root, size * MiB, repeat)
            rows.append({"MiB": size, "op": "raw new file + fsync", "seconds": raw.new})
            rows.append({"MiB": size, "op": "raw overwrite + fsync", "seconds": raw.overwrite})
            sync, asynchronous, _, stalls = _ours(root, state)
            rows.append({"MiB": size, "op": "blockpoint sync", "seconds": median(sync, repeat)})
            whole = median(asynchronous, repeat)
            rows.append({"MiB": size, "op": "blockpoint async (stall)",
                         "seconds": float(np.median(stalls[1:]))})
            rows.append({"MiB": size, "op": "blockpoint async (whole flush)", "seconds": whole})
            for name, peer in _peers(root, state).items():
                if name in ("np.save", "pickle", "torch.save") and not isinstance(peer, str):
                    rows.append({"MiB": size, "op": name, "seconds": median(peer[0], repeat)})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def plot(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    """Write the two PNGs; return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    ops = list(dict.fromkeys(r["op"] for r in rows))
    paths = []
    for name, chosen, title in (
            ("save_time_vs_size.png", [o for o in ops if "stall" not in o],
             "Durable save of a float32 array (median of 3)"),
            ("stall_vs_size.png", ["blockpoint sync", "blockpoint async (stall)"],
             "Time the caller is stalled: sync vs async checkpoint")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for op in chosen:
            pts = [(r["MiB"], r["seconds"]) for r in rows if r["op"] == op]
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=op)
        ax.set_xlabel("state size (MiB)")
        ax.set_ylabel("milliseconds")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("bench", "plots")
    data = sweep()
    for r in data:
        print(f"{r['MiB']:>5} MiB  {r['op']:<32} {r['seconds'] * 1e3:9.1f} ms")
    print("\n".join(plot(data, out)))
