"""Benchmark: a checkpoint and a restore on the object-store backend against a plain
parallel upload and download of the same bytes, with the same client to the same server.

Issues 10 and 23 ask for these ratios and for the requests a checkpoint and a restore cost.
The plain side is the least an object store can do for the same bytes: ``MiB`` objects of
1 MiB put in parallel through the backend's own client and pool (:class:`blockstore.
objectclient.ObjectClient`), then fetched in parallel into a preallocated array. The backend
side is ``CheckpointedStageState.checkpoint()`` of a float32 array of the same size on a
lease of 1 MiB blocks (two record puts: the data commit and the header commit) and a
verified ``restore`` (CRC of every chunk, and the MACs) from a fresh store object.

Keyed by default, as every pickle checkpoint on an object store (a shared store) must be:
the key is the configured one, read as the stages read it (the key file, or
``$BLOCKPOINT_CHECKPOINT_KEY`` stripped), else a random one for the run. Requests
are counted per kind around each operation; the restore row compares its GETs with the
block objects the generation has. Each pair (put and checkpoint, get and restore) runs
back to back, its order turned every round; the seconds are medians of ``repeats`` rounds
and each ratio is the median of the rounds' own ratios (the two sides of a round meet the
same server and machine load, which on a shared 2-core machine drifts by more than the
difference measured).

Run ``python -m bench.bench_objstore --url 's3://BUCKET/PREFIX?endpoint_url=...'``; without
``--url`` (and in ``blockpoint bench --only objstore``) it starts moto's standalone server on
loopback (a test dependency; without it the bench says so in a row and measures nothing).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["run"]

MIB = 1 << 20


@contextmanager
def _loopback_s3() -> Iterator[str]:
    """moto's standalone server on a free port, with a bucket; yields its store URL base."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import http.client
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("PUT", "/bench-bucket")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield f"s3://bench-bucket/run?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"
    finally:
        proc.kill()
        proc.wait()


def _with_prefix(url: str, prefix: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rstrip('/')}/{prefix}" + (f"?{query}" if query else "")


def run(url: str | None = None, mib: int = 256, repeats: int = 9, *, quick: bool = False,
        key: bytes | None = None) -> list[dict[str, Any]]:
    """Rows: seconds of each contender (median of ``repeats`` rounds), ratios, requests.

    ``url`` None: a moto server on loopback for the run. ``quick``: 16 MiB, one repeat.
    """
    if quick:
        mib, repeats = 16, 1
    if url is None:
        try:
            import moto.server  # noqa: F401
            import obstore  # noqa: F401
        except ImportError as exc:
            return [{"what": "object store bench", "note": f"{exc.name} not installed "
                     "(pip install -e '.[test]'), skipped"}]
        with _loopback_s3() as loop_url:
            return _measure(loop_url, mib, repeats, key)
    return _measure(url, mib, repeats, key)


def _count(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Requests by kind sent between two snapshots of ``ObjectStore.requests``."""
    diff = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in diff.items() if v}


def _fmt(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _measure(url: str, mib: int, repeats: int, key: bytes | None) -> list[dict[str, Any]]:
    from blockstore import ObjectStore, open_store
    from blockstore.keys import resolve_keys
    from blockstore.objectclient import ObjectClient
    from blockstore.urls import parse_store_url
    from stages import CheckpointedStageState

    if key is None:
        ring = resolve_keys()  # as the stages read it: the key file, or the stripped env
        key = ring.current if ring is not None else os.urandom(32)

    state = np.random.default_rng(0).random(mib * MIB // 4, dtype=np.float32)
    raw = memoryview(state).cast("B")
    times: dict[str, list[float]] = {"plain put": [], "plain get": [], "checkpoint": [],
                                     "restore": []}
    requests: dict[str, int] = {}
    restore_requests: dict[str, int] = {}
    objects = 0
    for rep in range(repeats):
        tag = f"{uuid.uuid4().hex[:8]}-{rep}"
        client = ObjectClient(parse_store_url(_with_prefix(url, f"plain-{tag}")))
        store_url = _with_prefix(url, f"store-{tag}")
        out = np.empty_like(state)
        omv = memoryview(out).cast("B")

        def plain_put() -> None:
            t0 = time.perf_counter()
            client.map(lambda i: client.put(f"o/{i}", raw[i * MIB:(i + 1) * MIB]), range(mib))
            times["plain put"].append(time.perf_counter() - t0)

        def get(i: int) -> None:
            got = client.get(f"o/{i}")
            assert got is not None
            omv[i * MIB:(i + 1) * MIB] = got[0]

        def plain_get() -> None:
            t0 = time.perf_counter()
            client.map(get, range(mib))
            times["plain get"].append(time.perf_counter() - t0)
            assert np.array_equal(out, state)

        def checkpoint() -> None:
            nonlocal requests, objects
            with open_store(store_url, block_size=MIB) as st:
                assert isinstance(st, ObjectStore)
                lease = st.acquire("bench", ttl=600)
                css = CheckpointedStageState(state, lease, key=key)
                before = st.requests
                t0 = time.perf_counter()
                info = css.checkpoint(step=1)
                times["checkpoint"].append(time.perf_counter() - t0)
                requests = _count(before, st.requests)
                objects = info.blocks + 1  # data and map blocks, and the header slot

        def restore() -> None:
            nonlocal restore_requests
            with ObjectStore(store_url) as st2:
                reader = st2.open_reader("bench")
                before = st2.requests
                t0 = time.perf_counter()
                back = CheckpointedStageState.restore(reader, key=key)
                times["restore"].append(time.perf_counter() - t0)
                restore_requests = _count(before, st2.requests)
                assert np.array_equal(back.state, state)

        # Each pair back to back, the order turned every round: neither side always meets
        # the server (and the machine) fresher.
        for first, second in ((plain_put, checkpoint), (plain_get, restore)):
            for fn in ((first, second) if rep % 2 == 0 else (second, first)):
                fn()
        client.close()
    best = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)
    size = f"{mib} MiB"
    gets = restore_requests.get("GET", 0)
    return [
        {"what": "plain parallel put", "mib": mib, "seconds": round(best["plain put"], 4),
         "requests": f"PUT={mib}"},
        {"what": "checkpoint() with a key", "mib": mib, "seconds": round(best["checkpoint"], 4),
         "ratio": ratio("checkpoint", "plain put"),
         "requests": _fmt(requests), "note": f"/ plain parallel put of {size}"},
        {"what": "plain parallel get", "mib": mib, "seconds": round(best["plain get"], 4),
         "requests": f"GET={mib}"},
        {"what": "restore() verified, with a key", "mib": mib,
         "seconds": round(best["restore"], 4),
         "ratio": ratio("restore", "plain get"),
         "requests": _fmt(restore_requests),
         "note": f"/ plain parallel get; {gets} GETs for {objects} block objects "
                 f"({gets / objects:.2f} per object)"},
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="s3:// (gs://, az://) store URL; default: loopback moto")
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="16 MiB, one repeat")
    args = p.parse_args(argv)
    rows = run(args.url, args.mib, args.repeats, quick=args.quick)
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
