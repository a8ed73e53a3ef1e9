"""The exactly-once Parquet sink on an object store (S3, GCS, Azure), by conditional writes.

``ParquetSink("s3://bucket/out?endpoint_url=...&region=...")`` builds this sink (an object-store
URL, ``blockstore/urls.py``; a path builds the local one, ``parquet_sink.py``). An object
store has no rename and no lock, so the local sink's "one directory rename publishes a step,
under an flock" becomes: the fencing record is one object changed only by conditional puts,
and a step is published by create-only puts of its files under their visible names.

Layout under the URL's prefix (``docs/FORMAT.md`` 7.3, "Parquet sink layout on an object store")::

    step-000000001/part-00000.parquet                   published (visible)
    _pending/step-000000002/<token>/part-00000.parquet  committed by the sink, hidden
    _fence.json                                          the fencing record

The fencing record holds the run id, the highest epoch seen, the published step and the
manifest of every hidden step (its commit token and each part's size and SHA-256). Every
change to it is a put conditional on the etag read (``If-Match``; ``If-None-Match: *`` for the
first), re-decided after a lost race, and every change checks the caller's token first, so
a driver whose epoch is older than the record's (taken over) is refused
(``SinkFencedError``) and changes nothing from then on.

The protocol (``sink.py``) maps onto it:

1. ``commit(N, batch)``: the parts are uploaded under a fresh ``<token>`` in ``_pending/``
   (hidden: readers skip ``_`` names), then the record's manifest names ``N -> token``
   (conditional put: a fenced driver's commit is never registered; its objects are garbage).
   Durable when ``commit`` returns, before the run's commit point.
2. the run commits ``N``;
3. ``publish(N)``: a conditional put of the record proves the token current; then every
   part of every manifest step ``<= N`` is put under its visible name with ``If-None-Match:
   *``. A put that finds the name taken (a replayed publish after a lost reply or a crash)
   reads the object and accepts it only if its SHA-256 is the manifest's - an object is
   never overwritten, never published twice. Then the record's published step moves to
   ``N`` (manifest entries dropped) and the hidden copies are deleted.

A crash between any two requests leaves a step hidden (manifest entry kept: the next
``fence`` publishes it if the run committed it, or deletes it) or published; a half-published
step (some parts visible) is finished by the next ``publish``/``fence`` with the same bytes.

What a reader listing the prefix sees (S3 gives no atomic multi-object visibility): only
steps the run committed, and each part object whole. A step of one part - the default
``rows_per_file`` of a million rows holds most steps - appears atomically; a step of several
parts appears part by part after the run committed it (the parts are put one at a time, in
key order, so a listing sees a prefix of the committed output, in step and part order: the
first parts of the last step, never an uncommitted step, never a part twice). A reader
that needs whole steps reads ``committed_steps()`` (the record's published step bounds it)
or waits for the run to finish.

Limits: the fencing check and the object writes are separate requests (no store offers a
condition across objects), so a driver paused between the record's conditional put and its
next object requests for longer than a takeover can still land those requests: publish puts
carry only the run-committed manifest bytes (the same bytes any driver publishes); a
``discard_after`` of a paused driver could delete objects its successor re-published.
Secrets: messages name the URL with its secret-bearing parts masked (``blockstore/redact.py``);
request errors come redacted from the object client.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from blockstore import canonical_json
from blockstore.errors import StorageIOError
from blockstore.objectclient import ObjectClient
from blockstore.redact import redact_url
from blockstore.urls import StoreURL, parse_store_url

from ..actors.batches import concat, num_rows, to_table
from .sink import FenceToken, check_fence

__all__ = ["ObjectParquetSink", "pending_prefix", "step_prefix"]

#: The fencing record's key (hidden from Parquet readers by its ``_``).
FENCE_KEY = "_fence.json"
#: The prefix of hidden (committed, unpublished) step objects.
PENDING = "_pending/"
#: Lost races in a row after which a record update gives up.
MAX_RACES = 64

Record = dict[str, Any]


def step_prefix(step: int) -> str:
    """The visible prefix of ``step``'s objects."""
    return f"step-{step:09d}/"


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


def pending_prefix(step: int, token: str | None = None) -> str:
    """The hidden prefix of ``step``'s objects (of one commit ``token``, if given)."""
    base = f"{PENDING}step-{step:09d}/"
    return base if token is None else f"{base}{token}/"


class ObjectParquetSink:
    """One prefix of Parquet objects per committed step, under an object-store URL.

    Built by :class:`~stages.pipeline.parquet_sink.ParquetSink` for an object-store URL (the
    one public way); arguments as there. ``client``: tests pass an
    :class:`~blockstore.objectclient.ObjectClient` whose requests they order.
    """

    def __init__(self, url: str | StoreURL, *, rows_per_file: int = 1_000_000,
                 row_group_size: int | None = None, compression: str = "zstd",
                 client: ObjectClient | None = None, fsync: bool = True,
                 file_mode: int | None = None) -> None:
        # fsync and file_mode are the local sink's; an object is durable when its put is
        # acknowledged and has no mode bits, so both are accepted and have no effect.
        del fsync, file_mode
        self.url = url if isinstance(url, StoreURL) else parse_store_url(url)
        if not self.url.is_object_store:
            raise ValueError(f"not an object-store URL: {redact_url(self.url.to_url())}")
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.rows_per_file = rows_per_file
        self.row_group_size = row_group_size
        self.compression = compression
        self._c = client if client is not None else ObjectClient(self.url)
        self._where = redact_url(self.url.to_url())
        self._cache: dict[tuple[int, str], list[bytes]] = {}  # this process's commits
        self._last: tuple[Record, str] | None = None  # the record this sink last wrote

    def __repr__(self) -> str:
        return f"ObjectParquetSink({self._where!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its client and cache (a new client is built where unpickled)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_c", "_cache", "_last")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._c = ObjectClient(self.url)
        self._cache = {}
        self._last = None

    @property
    def requests(self) -> Any:
        """Requests sent so far, by method (the client's counter)."""
        return self._c.requests

    # -- the sink protocol -----------------------------------------------------------------
    def fence(self, token: FenceToken, committed_step: int) -> None:
        """Refuse older tokens from now on, drop output after ``committed_step`` and publish
        the hidden steps up to it. A prefix fenced by another run is taken over."""
        def take(rec: Record | None) -> Record:
            if rec is not None and rec["run_id"] == token.run_id:
                self._check(token, rec)
            pending = {} if rec is None else {
                k: v for k, v in rec["pending"].items() if int(k) <= committed_step}
            return {"run_id": token.run_id, "epoch": token.epoch,
                    "step": committed_step, "pending": pending}

        rec = self._update(take)
        self._remove_after(committed_step, keep=rec["pending"])
        self._publish_upto(committed_step, token, rec)

    def commit(self, step: int, records: Sequence[Any], *,
               token: FenceToken | None = None) -> None:
        """Upload ``step``'s parts hidden and name them in the record (durable, not visible).
        A replayed commit of ``step`` replaces its hidden parts. Without a token on a
        never-fenced prefix, the parts are written visible at once."""
        datas = self._encode(records)
        got = self._last = self._get_record()  # read fresh: a fenced driver uploads nothing
        if got is None and token is None:
            for part, data in enumerate(datas):
                self._c.put(step_prefix(step) + part_name(part), data)
            return
        if got is not None and token is not None:
            self._check(token, got[0])
        tok = f"e{token.epoch if token else 0}-{secrets.token_hex(6)}"
        hidden = pending_prefix(step, tok)
        self._c.map(lambda kv: self._c.put(hidden + part_name(kv[0]), kv[1]),
                    list(enumerate(datas)))
        entry = {"token": tok, "parts": [[len(d), hashlib.sha256(d).hexdigest()]
                                         for d in datas]}
        old: list[str] = []

        def register(rec: Record | None) -> Record:
            if rec is None:  # a token, and no record yet: this driver starts it
                assert token is not None
                rec = {"run_id": token.run_id, "epoch": token.epoch, "step": -1,
                       "pending": {}}
            if token is not None:
                self._check(token, rec)
            prev = rec["pending"].get(str(step))
            # (our own entry if an earlier attempt of this put landed: nothing to replace)
            old[:] = [] if prev is None or prev["token"] == tok else [prev["token"]]
            pending = dict(rec["pending"], **{str(step): entry})
            epoch = rec["epoch"] if token is None else max(rec["epoch"], token.epoch)
            return dict(rec, epoch=epoch, pending=pending)

        self._update(register)
        self._cache[(step, tok)] = datas
        for t in old:  # the replaced hidden commit of this step
            self._delete_prefix(pending_prefix(step, t))
            self._cache.pop((step, t), None)

    def publish(self, step: int, *, token: FenceToken) -> None:
        """The run committed ``step``: publish every hidden step up to it."""
        rec = self._update(lambda r: self._claim(token, r))
        self._publish_upto(step, token, rec)

    def discard_after(self, step: int, *, token: FenceToken | None = None) -> list[int]:
        """Remove the output (visible and hidden) of steps ``> step``; return them."""
        def drop(rec: Record | None) -> Record | None:
            if rec is None:
                return None
            if token is not None:
                self._check(token, rec)
            pending = {k: v for k, v in rec["pending"].items() if int(k) <= step}
            return dict(rec, step=min(rec["step"], step), pending=pending)

        rec = self._update(drop, allow_missing=True)
        return self._remove_after(step, keep={} if rec is None else rec["pending"])

    # -- reads -----------------------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        """Steps with visible objects, up to the record's published step (every visible
        step on a never-fenced prefix), ascending."""
        got = self._get_record()
        limit = None if got is None else got[0]["step"]
        return [s for s in self._visible() if limit is None or s <= limit]

    def files(self, step: int) -> list[str]:
        """Keys (under the URL's prefix) of a visible step's part objects, in order."""
        return sorted(m["path"] for m in self._c.list(step_prefix(step))
                      if m["path"].endswith(".parquet"))

    def read_step(self, step: int) -> list[Any]:
        return self._read_step(step).to_pylist()

    def read_table(self, upto_step: int | None = None) -> Any:
        """Every committed row as one ``pyarrow.Table``, in step order."""
        tables = [self._read_step(s) for s in self.committed_steps()
                  if upto_step is None or s <= upto_step]
        return concat(tables) if tables else to_table([])

    def read_all(self, upto_step: int | None = None) -> list[Any]:
        return self.read_table(upto_step).to_pylist()

    def close(self) -> None:
        self._c.close()

    # -- internals -------------------------------------------------------------------------
    def _encode(self, records: Any) -> list[bytes]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = to_table(records)
        rows = num_rows(table)
        out = []
        for start in range(0, rows, self.rows_per_file):
            sink = pa.BufferOutputStream()
            pq.write_table(table.slice(start, self.rows_per_file), sink,
                           compression=self.compression, row_group_size=self.row_group_size)
            out.append(sink.getvalue().to_pybytes())
        return out

    def _read_step(self, step: int) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for key in self.files(step):
            got = self._c.get(key)
            if got is not None:
                tables.append(pq.read_table(pa.BufferReader(bytes(got[0]))))
        return concat(tables) if tables else to_table([])

    def _claim(self, token: FenceToken, rec: Record | None) -> Record:
        """The record unchanged but for the epoch: a conditional put of it proves ``token``
        current at that moment."""
        if rec is None:
            return {"run_id": token.run_id, "epoch": token.epoch, "step": -1, "pending": {}}
        self._check(token, rec)
        return dict(rec, epoch=max(rec["epoch"], token.epoch))

    def _publish_upto(self, step: int, token: FenceToken, rec: Record) -> None:
        """Put every part of every manifest step ``<= step`` under its visible name
        (create-only, checked if present), then record the step published and delete the
        hidden copies."""
        done = sorted(int(k) for k in rec["pending"] if int(k) <= step)
        for s in done:  # in order, one at a time: what is visible is a prefix
            entry = rec["pending"][str(s)]
            for part in range(len(entry["parts"])):
                self._publish_part(s, entry, part)

        def advance(r: Record | None) -> Record:
            r = self._claim(token, r)
            pending = {k: v for k, v in r["pending"].items()
                       if not (int(k) in done and v["token"] == rec["pending"][k]["token"])}
            return dict(r, step=max(r["step"], step), pending=pending)

        self._update(advance)
        hidden = []  # the manifest names them: no listing (strays go at the next fence)
        for s in done:
            entry = rec["pending"][str(s)]
            hidden += [pending_prefix(s, entry["token"]) + part_name(p)
                       for p in range(len(entry["parts"]))]
            self._cache.pop((s, entry["token"]), None)
        if hidden:
            self._c.delete(hidden)

    def _publish_part(self, step: int, entry: Record, part: int) -> None:
        size, digest = entry["parts"][part]
        key = step_prefix(step) + part_name(part)
        cached = self._cache.get((step, entry["token"]))
        if cached is not None:
            data: bytes | None = cached[part]
        else:
            got = self._c.get(pending_prefix(step, entry["token"]) + part_name(part))
            data = None if got is None else bytes(got[0])
        if data is not None:
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise StorageIOError(f"{self._where}: the hidden copy of step {step} part "
                                     f"{part} does not match its manifest", path=self._where)
            if self._c.put_new(key, data) is not None:
                return  # created now
        # The name exists (a replayed publish), or the hidden copy is gone (another
        # publisher finished this step): accept only the manifest's bytes.
        have = self._c.get(key)
        if have is None:
            raise StorageIOError(f"{self._where}: step {step} part {part} is neither hidden "
                                 "nor published (removed under the publish?)",
                                 path=self._where)
        if len(have[0]) != size or hashlib.sha256(have[0]).hexdigest() != digest:
            raise StorageIOError(f"{self._where}: {key} exists with other bytes than step "
                                 f"{step}'s commit; not overwritten", path=self._where)

    def _remove_after(self, step: int, keep: Record) -> list[int]:
        """Delete visible objects of steps ``> step`` and hidden ones not in ``keep`` (the
        record's manifest) or of steps ``> step``; return the steps removed."""
        gone: set[int] = set()
        doomed: list[str] = []
        for m in self._c.list(""):
            key = m["path"]
            parsed = _parse_key(key)
            if parsed is None:
                continue
            s, tok = parsed
            if tok is None and s > step:
                doomed.append(key)
                gone.add(s)
            elif tok is not None:
                live = keep.get(str(s))
                if s > step or live is None or live["token"] != tok:
                    doomed.append(key)
                    if s > step:
                        gone.add(s)
        if doomed:
            self._c.delete(doomed)
        for k in [k for k in self._cache if k[0] > step]:
            del self._cache[k]
        return sorted(gone)

    def _delete_prefix(self, prefix: str) -> None:
        keys = [m["path"] for m in self._c.list(prefix)]
        if keys:
            self._c.delete(keys)

    def _visible(self) -> list[int]:
        steps = set()
        for m in self._c.list(""):  # obstore lists by path segments: no "step-" prefix
            parsed = _parse_key(m["path"])
            if parsed is not None and parsed[1] is None:
                steps.add(parsed[0])
        return sorted(steps)

    def _check(self, token: FenceToken, rec: Record) -> None:
        check_fence(token, rec, sink=self._where, path=f"{self._where.split('?')[0]}/{FENCE_KEY}")

    def _get_record(self) -> tuple[Record, str] | None:
        got = self._c.get(FENCE_KEY)
        if got is None:
            return None
        data, meta = got
        try:
            raw = json.loads(bytes(data))
            rec = {"run_id": str(raw["run_id"]), "epoch": int(raw["epoch"]),
                   "step": int(raw["step"]), "pending": dict(raw.get("pending") or {}),
                   "nonce": str(raw.get("nonce", ""))}
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageIOError(f"{self._where}: {FENCE_KEY} is not a fencing record",
                                 path=self._where) from exc
        return rec, meta["e_tag"] or ""

    def _update(self, change: Callable[[Record | None], Record | None], *,
                allow_missing: bool = False) -> Any:
        """Apply ``change`` to the record by a conditional put, re-deciding after each lost
        race (a retried put whose first attempt landed is recognised by its nonce).
        ``change`` may raise (fencing): nothing is written. Returns the record written."""
        got = self._last  # what this sink last wrote: if it is stale, its put fails
        for _ in range(MAX_RACES):
            if got is None:
                got = self._get_record()
            new = change(None if got is None else {k: v for k, v in got[0].items()
                                                   if k != "nonce"})
            if new is None:
                if allow_missing:
                    return None
                raise StorageIOError(f"{self._where}: no fencing record", path=self._where)
            new = dict(new, nonce=secrets.token_hex(8))
            body = canonical_json(new)
            etag = (self._c.put_new(FENCE_KEY, body) if got is None
                    else self._c.put_if(FENCE_KEY, body, got[1]))
            if etag is None:
                got = self._get_record()
                if got is not None and got[0]["nonce"] == new["nonce"]:
                    etag = got[1]  # a retry of a put that had landed
            if etag is not None:
                self._last = (new, etag) if etag else None
                return new
        raise StorageIOError(f"{self._where}: lost {MAX_RACES} races in a row for "
                             f"{FENCE_KEY}", path=self._where)


def _parse_key(key: str) -> tuple[int, str | None] | None:
    """``(step, None)`` of a visible part key, ``(step, token)`` of a hidden one."""
    parts = key.split("/")
    try:
        if len(parts) == 2 and parts[0].startswith("step-"):
            return int(parts[0][5:]), None
        if len(parts) == 4 and parts[0] == PENDING[:-1] and parts[1].startswith("step-"):
            return int(parts[1][5:]), parts[2]
    except ValueError:
        return None
    return None
