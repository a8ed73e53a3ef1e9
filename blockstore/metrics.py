"""Metrics: every figure blockpoint reports, declared once, exported to Ray and to listeners.

Each figure is declared in :data:`METRICS` (name, kind, description, tag keys, buckets);
``docs/OPERATIONS.md`` lists them and ``docs/grafana/blockpoint.json`` graphs them - tests
check the three against each other. Library code records through :func:`record`:

* inside Ray (``ray.is_initialized()`` in this process: a driver or any worker), through
  ``ray.util.metrics``; Ray's metrics agent exports them to Prometheus as
  ``ray_blockpoint_<name>``, adding the node's address, the worker and the session as labels
  (so every figure is tagged by node without blockpoint asking which node it is on);
* to every listener added with :func:`listen` (a context manager): tests, a user's own
  exporter, a log - each on its own thread (:class:`_Delivery`), never in the caller's;
* to a ``prometheus_client`` registry given to :func:`export_to_prometheus` - for plain
  library use outside Ray. ``prometheus_client`` is optional: nothing imports it otherwise.

Guarantees: recording never raises and never blocks on I/O (Ray's recorder aggregates in
process and its agent pulls); an unknown name or a missing tag is a programming error and
raises :class:`ValueError` at once (tests cover every call site); a failing exporter or
listener is logged once and then skipped.

Why listeners run on their own threads: figures are recorded inside a checkpoint (its
flush mark held, the scheduler not allowed to preempt the stage) and right after its commit.
Called inline, a listener that blocked (an exporter's network call) held the flush mark and
stalled the checkpoint, and one that raised a ``BaseException`` (``SystemExit`` from a
library, a ``KeyboardInterrupt`` delivered in it) escaped ``checkpoint()`` after the commit,
so the caller took a committed generation for a failed one. Now ``record`` only puts the
figure in each listener's bounded queue: a slow listener delays only itself, and past
:data:`LISTENER_QUEUE` pending figures it loses the newest ones (counted, logged once); a
listener that raises anything is logged once and removed. Delivery is in recording order,
per listener. :func:`flush_listeners` waits until what was recorded has been delivered
(tests; a user's exporter before it reads its totals); leaving :func:`listen` does the same,
bounded by ``drain_timeout``.

Why Ray export is retried, not switched off: one error of Ray's recorder (a worker not yet
connected, a transient failure of the core worker) switched Ray export off for the whole
process, silently losing every later figure. Now a failing figure is skipped for a
back-off (0.5 s doubling to 60 s, per figure), then tried again with a fresh instrument;
the first failure of a streak is logged with its traceback, later ones only counted, and
the recovery is logged once with how many figures were lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["LISTENER_QUEUE", "METRICS", "MetricSpec", "export_to_prometheus",
           "flush_listeners", "listen", "record"]

log = logging.getLogger(__name__)

PREFIX = "blockpoint_"

# Seconds: 1 ms .. 10 min, roughly x2.5 apart (checkpoints of KiB to GiB, acks to drains).
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One figure: ``kind`` is ``counter`` (added to), ``gauge`` (set) or ``histogram``."""

    name: str
    kind: str
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()


def _specs(*rows: tuple[str, str, str, tuple[str, ...]]) -> dict[str, MetricSpec]:
    return {name: MetricSpec(name, kind, text, tags, SECONDS if kind == "histogram" else ())
            for name, kind, text, tags in rows}


S = ("stage",)
#: Every figure, by name (without the ``blockpoint_`` prefix Prometheus shows).
METRICS: Mapping[str, MetricSpec] = _specs(
    # -- one state's checkpoints (stages/checkpoint) ----------------------------------------
    ("checkpoint_seconds", "histogram", "time from a checkpoint's start to its durable "
     "header (serialise, write, two flushes)", S),
    ("checkpoint_stall_seconds", "histogram", "time an asynchronous checkpoint held the "
     "caller (the snapshot)", S),
    ("checkpoints_total", "counter", "generations committed", S),
    ("checkpoint_failures_total", "counter", "checkpoints that failed, by the error's type",
     ("stage", "cause")),
    ("checkpoint_written_bytes_total", "counter", "bytes handed to the store by commits "
     "(data, spilled map, erased slots, header)", S),
    ("checkpoint_payload_bytes", "gauge", "serialised size of the newest generation", S),
    ("checkpoint_stored_bytes", "gauge", "stored (compressed) size of the newest generation",
     S),
    ("checkpoint_compression_ratio", "gauge", "payload / stored bytes of the newest "
     "generation", S),
    ("checkpoint_generations", "gauge", "committed generations the lease retains", S),
    ("lease_bytes", "gauge", "storage the stage's lease occupies (blocks x block size)", S),
    ("restore_seconds", "histogram", "time a restore took (scan, verify, decode)", S),
    ("restores_total", "counter", "restores that returned a generation", S),
    ("restore_fallbacks_total", "counter", "newer generations a restore passed over because "
     "they did not verify (not the torn header of a commit a crash cut short)", S),
    # -- the flush mark, seen from the stage (scheduler/observer.py) -------------------------
    ("flush_ack_seconds", "histogram", "time the scheduler took to acknowledge a flush start "
     "(the checkpoint waits for it)", S),
    ("flush_ack_missed_total", "counter", "flush starts the scheduler did not acknowledge in "
     "time (the flush went ahead unprotected)", S),
    ("flush_mark_seconds", "histogram", "time a stage's flush mark was held (start to "
     "completion reported)", S),
    # -- the scheduler (scheduler/decisions.py) ----------------------------------------------
    ("scheduler_decisions_total", "counter", "decisions the scheduler logged: preempt, "
     "restore, relaunch, drain, lost, flush, by outcome and reason", ("kind", "outcome",
                                                                      "reason")),
    ("preemption_wait_seconds", "histogram", "time a preemption waited for its victims' "
     "flushes before acting", ("reason",)),
    ("scheduler_victims_total", "counter", "stages named by the scheduler's decisions, by "
     "kind and outcome", ("kind", "outcome")),
    # -- pipelines (stages/pipeline/pipeline.py) ---------------------------------------------
    ("pipeline_steps_committed_total", "counter", "steps a pipeline committed", ("run",)),
    ("pipeline_records_in_total", "counter", "source records in committed steps", ("run",)),
    ("pipeline_records_out_total", "counter", "output records in committed steps", ("run",)),
    ("pipeline_records_replayed_total", "counter", "source records read again after a "
     "rollback", ("run",)),
    ("pipeline_failures_total", "counter", "stage failures a pipeline recovered from",
     ("run",)),
    ("pipeline_recovery_seconds", "histogram", "time from noticing a failure to every stage "
     "rolled back", ("run",)),
)

Listener = Callable[[str, float, Mapping[str, str]], None]

#: Figures a listener may have pending; past this a slow listener loses the newest ones.
LISTENER_QUEUE = 10_000
#: Seconds a Ray export of a figure is skipped after its first failure (doubling per failure
#: in a row, up to :data:`RAY_RETRY_MAX`).
RAY_RETRY_MIN = 0.5
RAY_RETRY_MAX = 60.0


class _Delivery:
    """One listener's queue and the thread that calls it, in recording order.

    ``offer`` never blocks; the thread ends when the listener raises (anything: logged with
    its traceback, the listener removed) or at ``close``.
    """

    _STOP = object()

    def __init__(self, fn: Listener) -> None:
        self.fn = fn
        self._q: queue.Queue[Any] = queue.Queue(LISTENER_QUEUE)
        self._cv = threading.Condition()
        self._offered = 0
        self._done = 0  # delivered, skipped (broken) or dropped
        self.dropped = 0
        self.broken = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"blockpoint-metrics-listener-{id(fn):x}")
        self._thread.start()

    def offer(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        with self._cv:
            if self.broken:
                return
            self._offered += 1
        try:
            self._q.put_nowait((name, value, labels))
        except queue.Full:
            with self._cv:
                self.dropped += 1
                self._done += 1
                first = self.dropped == 1
                self._cv.notify_all()
            if first:
                log.warning("metrics listener %r is %d figures behind; dropping new ones "
                            "until it catches up", self.fn, LISTENER_QUEUE)

    def wait(self, timeout: float) -> bool:
        """Until every figure offered so far is delivered (or dropped); False on timeout."""
        with self._cv:
            target = self._offered
            return self._cv.wait_for(lambda: self._done >= target or self.broken, timeout)

    def close(self, timeout: float) -> bool:
        """Deliver what is pending (up to ``timeout``), then stop the thread."""
        drained = self.wait(timeout)
        try:
            self._q.put_nowait(self._STOP)
        except queue.Full:  # still far behind: it stops when it reaches the end
            pass
        return drained

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is self._STOP:
                return
            if not self.broken:
                try:
                    self.fn(*item)
                except BaseException:  # nothing a listener raises leaves its thread
                    log.exception("metrics listener %r failed on %s; removed", self.fn,
                                  item[0])
                    self._remove()
            with self._cv:
                self._done += 1
                self._cv.notify_all()
            if self.broken:
                self._discard()
                return

    def _remove(self) -> None:
        with self._cv:
            self.broken = True
            self._cv.notify_all()
        with _lock:
            if self in _listeners:
                _listeners.remove(self)

    def _discard(self) -> None:
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return


_lock = threading.Lock()
_listeners: list[_Delivery] = []
_prometheus: list[tuple[Any, dict[str, Any]]] = []  # (registry, name -> instrument)
_ray_instruments: dict[str, Any] = {}
_ray_session: Any = None


@dataclass(slots=True)
class _Failing:
    """A figure whose Ray export failed and has not worked since."""

    failures: int  # tries that failed in a row (the back-off doubles with each)
    lost: int  # figures not exported: the failed ones and those skipped in the back-off
    retry_at: float  # time.monotonic() of the next try


_ray_failing: dict[str, _Failing] = {}


def record(name: str, value: float, **tags: Any) -> None:
    """Record ``value`` for the figure ``name`` (add, set or observe, by its kind).

    ``tags`` must be exactly the figure's tag keys; values are turned into strings. Never
    raises for exporter failures; raises ``ValueError`` for an unknown name or wrong tags.
    """
    spec = METRICS.get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r} (declare it in blockstore.metrics.METRICS)")
    if set(tags) != set(spec.tags):
        raise ValueError(f"metric {name!r} takes tags {spec.tags}, got {tuple(sorted(tags))}")
    labels = {k: str(v) for k, v in tags.items()}
    value = float(value)
    _to_ray(spec, value, labels)
    with _lock:
        listeners = list(_listeners)
        proms = list(_prometheus)
    for delivery in listeners:
        delivery.offer(name, value, labels)
    for registry, instruments in proms:
        try:
            _to_prometheus(registry, instruments, spec, value, labels)
        except Exception:  # noqa: BLE001
            log.exception("prometheus export of %s failed; registry dropped", name)
            with _lock:
                _prometheus[:] = [p for p in _prometheus if p[0] is not registry]


@contextmanager
def listen(fn: Listener, *, drain_timeout: float = 10.0) -> Iterator[Listener]:
    """Call ``fn(name, value, tags)`` for every figure recorded in this process while open.

    ``fn`` runs on a thread of its own, in recording order, never in the recording thread
    (see the module docstring); anything it raises is logged and removes it. On exit, the
    figures recorded while open are delivered first (waiting at most ``drain_timeout``).
    """
    delivery = _Delivery(fn)
    with _lock:
        _listeners.append(delivery)
    try:
        yield fn
    finally:
        with _lock:
            if delivery in _listeners:
                _listeners.remove(delivery)
        if not delivery.close(drain_timeout):
            log.warning("metrics listener %r did not take its figures within %.1f s",
                        fn, drain_timeout)


def flush_listeners(timeout: float = 10.0) -> bool:
    """Wait until every listener has been handed the figures recorded so far (or dropped
    them, or failed); False if ``timeout`` seconds passed first."""
    end = time.monotonic() + timeout
    with _lock:
        deliveries = list(_listeners)
    return all(d.wait(max(end - time.monotonic(), 0.0)) for d in deliveries)


def export_to_prometheus(registry: Any) -> None:
    """Also export every figure to a ``prometheus_client.CollectorRegistry`` (plain library use).

    Names and labels are those of ``docs/OPERATIONS.md``, without Ray's ``ray_`` prefix and
    node labels. Needs the optional ``prometheus_client`` package.
    """
    import prometheus_client  # noqa: F401 - fail here, not at the first record

    with _lock:
        if all(r is not registry for r, _ in _prometheus):
            _prometheus.append((registry, {}))


def _to_prometheus(registry: Any, instruments: dict[str, Any], spec: MetricSpec, value: float,
                   labels: Mapping[str, str]) -> None:
    import prometheus_client as pc

    inst = instruments.get(spec.name)
    if inst is None:
        full = PREFIX + spec.name
        if spec.kind == "counter":
            # prometheus_client appends _total itself.
            inst = pc.Counter(full.removesuffix("_total"), spec.description, spec.tags,
                              registry=registry)
        elif spec.kind == "gauge":
            inst = pc.Gauge(full, spec.description, spec.tags, registry=registry)
        else:
            inst = pc.Histogram(full, spec.description, spec.tags, buckets=spec.buckets,
                                registry=registry)
        instruments[spec.name] = inst
    child = inst.labels(**labels) if spec.tags else inst
    if spec.kind == "counter":
        child.inc(value)
    elif spec.kind == "gauge":
        child.set(value)
    else:
        child.observe(value)


def _to_ray(spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
    global _ray_session
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a required dependency
        return
    if not ray.is_initialized():
        return
    try:
        # Instruments belong to one connection to Ray: a process that shut Ray down and
        # initialised it again (tests do) makes new ones.
        session = ray.get_runtime_context().get_job_id(), _worker_identity(ray)
        with _lock:
            if session != _ray_session:
                _ray_instruments.clear()
                _ray_failing.clear()
                _ray_session = session
            failing = _ray_failing.get(spec.name)
            if failing is not None and time.monotonic() < failing.retry_at:
                failing.lost += 1
                return
            inst = _ray_instruments.get(spec.name)
            if inst is None:
                inst = _ray_instruments[spec.name] = _ray_instrument(spec)
        if spec.kind == "counter":
            if value > 0:
                inst.inc(value, tags=dict(labels))
        elif spec.kind == "gauge":
            inst.set(value, tags=dict(labels))
        else:
            inst.observe(value, tags=dict(labels))
    except Exception:  # noqa: BLE001 - metrics never break a checkpoint
        _ray_failed(spec.name)
        return
    if failing is not None:
        with _lock:
            _ray_failing.pop(spec.name, None)
        log.warning("recording %s through Ray works again (%d figure(s) of it lost)",
                    spec.name, failing.lost)


def _ray_failed(name: str) -> None:
    """A Ray export of ``name`` failed: skip it for a back-off, then retry afresh.

    Logged with its traceback at the first failure of a streak only; the instrument is
    dropped so the retry makes a new one (a broken one would fail forever).
    """
    with _lock:
        failing = _ray_failing.setdefault(name, _Failing(0, 0, 0.0))
        failing.failures += 1
        failing.lost += 1
        delay = min(RAY_RETRY_MIN * 2 ** (failing.failures - 1), RAY_RETRY_MAX)
        failing.retry_at = time.monotonic() + delay
        _ray_instruments.pop(name, None)
        first = failing.failures == 1
    if first:
        log.exception("recording %s through Ray failed; skipped for %.1f s, then retried "
                      "(later failures of it are not logged until it works again)", name,
                      delay)


def _worker_identity(ray: Any) -> int:
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    core = getattr(getattr(worker, "global_worker", None), "core_worker", None)
    return id(core)


def _ray_instrument(spec: MetricSpec) -> Any:
    from ray.util import metrics as rm

    # Ray appends nothing: the exported name is ray_ + this name.
    name = PREFIX + spec.name
    if spec.kind == "counter":
        return rm.Counter(name, description=spec.description, tag_keys=spec.tags)
    if spec.kind == "gauge":
        return rm.Gauge(name, description=spec.description, tag_keys=spec.tags)
    return rm.Histogram(name, description=spec.description, boundaries=list(spec.buckets),
                        tag_keys=spec.tags)
