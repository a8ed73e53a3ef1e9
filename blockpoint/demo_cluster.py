"""Where ``blockpoint demo`` runs, and how it stages the loss of its stateful stage.

Two places, one story:

* :class:`LocalDemoCluster` - the demo's own 3-node ``ray.cluster_utils.Cluster`` on this
  machine (``make demo``, no arguments). The loss is the removal of the stage's node
  without grace (``remove_node(allow_graceful=False)``): every process on it dies at once.
* :class:`AttachedDemoCluster` - a running cluster: ``--address``, or ``$RAY_ADDRESS`` as
  ``ray job submit`` sets it for the driver. The demo cannot take a machine away there, so
  it stages the loss as the crash of the stage's worker process: ``SIGKILL`` of the
  actor's process (and of the ``@checkpointed`` actor's, when it shares the node) by a
  zero-CPU task pinned to that node - what an OOM kill or a segfault does. The pipeline
  finds the stage gone and has the scheduler restore it on another node (the node it was
  lost on is excluded) from its checkpoint, taking over its lease with an epoch bump: the
  path of a node loss, without the node's other processes. Nothing else on the cluster is
  touched; the demo's scheduler actor (in the run's own Ray namespace, printed) stays up
  after the run with its decision log, for ``blockpoint scheduler status/decisions``.

Node names in the story: ``head`` (the node with Ray's head resource) and ``worker-1``...
(the others, in Ray's order).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from .cli_scheduler import _check_reachable
from .errors import DemoSetupError

__all__ = ["FORWARDED_ENV", "LOCAL_HEALTH_CHECKS", "AttachedDemoCluster", "DemoCluster",
           "LocalDemoCluster", "cluster_for", "job_entrypoint", "refuse_secrets_in_runtime_env",
           "secrets_in_job_entrypoint", "secrets_in_job_runtime_env", "start"]

_HEAD_RESOURCE = "node:__internal_head__"

#: Ray's node health checks for a cluster of local nodes (the demo's, the tests'): a node
#: whose raylet is gone is declared dead after ~5 failed checks a second apart (a dead
#: raylet refuses at once), where Ray's defaults take 15-25 s. A live node is never
#: declared dead for being slow: that takes 5 checks in a row each unanswered for 3 s - on
#: a 2-core machine with other work, a raylet can miss a 0.5 s deadline three times
#: running, and a false node death kills every actor on it.
LOCAL_HEALTH_CHECKS: dict[str, int] = {
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 5,
    "health_check_timeout_ms": 3000,
}


class DemoCluster:
    """What the demo needs of a cluster: its nodes, named, and a way to lose a stage.

    Attributes:
        head_node_id: the head node's id.
        workers: the other live nodes' ids (``workers[0]`` gets the stateful stage).
        short: node id -> name in the story.
        removes_nodes: the loss takes the whole node away (else only processes die).
    """

    head_node_id: str
    workers: list[str]
    short: dict[str, str]
    removes_nodes: bool

    def loss_target(self, node_id: str) -> str:
        """The node whose loss stages the loss of a stage running on ``node_id``."""
        return node_id

    def lose(self, node_id: str, procs: Callable[[], Mapping[str, int]],
             say: Callable[[str], None]) -> None:
        """Stage the loss of the stateful stage on ``node_id`` (a :meth:`loss_target`),
        telling the story through ``say``.

        ``procs()`` gives ``{actor name: pid}`` of the demo's actors on that node (asked
        only by clusters that kill processes).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect, and stop whatever this object started (idempotent)."""
        raise NotImplementedError


class LocalDemoCluster(DemoCluster):
    """A 3-node local Ray cluster started (and shut down) by the demo."""

    removes_nodes = True

    def __init__(self) -> None:
        self._own_ray_tmp: str | None = None
        if not os.environ.get("RAY_TMPDIR"):
            # Ray's session files go to a private directory (removed at the end), not
            # /tmp/ray; it sits directly under /tmp because Ray's socket paths must stay short.
            self._own_ray_tmp = tempfile.mkdtemp(prefix="bpdemo", dir="/tmp")
            os.environ["RAY_TMPDIR"] = self._own_ray_tmp
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        self._cluster: Any = None

    @staticmethod
    def intro() -> str:
        return "  starting a 3-node local Ray cluster (head + 2 workers)...\n"

    def start(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "object_store_memory": 150 * 1024 * 1024,
            "_system_config": dict(LOCAL_HEALTH_CHECKS)})
        self._nodes = [self._cluster.add_node(num_cpus=2, object_store_memory=150 * 1024 * 1024)
                       for _ in range(2)]
        ray.init(address=self._cluster.address, log_to_driver=False, logging_level="ERROR")
        self._cluster.wait_for_nodes()
        self.head_node_id = self._cluster.head_node.node_id
        self.workers = [w.node_id for w in self._nodes]
        self.short = {self.head_node_id: "head", self.workers[0]: "worker-1",
                      self.workers[1]: "worker-2"}

    def loss_target(self, node_id: str) -> str:
        # The head cannot be removed: a stage there costs a worker node instead.
        return node_id if node_id in self.workers else self.workers[0]

    def lose(self, node_id: str, procs: Callable[[], Mapping[str, int]],
             say: Callable[[str], None]) -> None:
        victim = next(w for w in self._nodes if w.node_id == node_id)
        say(f"killing {self.short.get(victim.node_id, victim.node_id[:8])}, the node of "
            "stateful stage 'aggregate' (no grace)")
        self._cluster.remove_node(victim, allow_graceful=False)

    def close(self) -> None:
        try:
            import ray
            if ray.is_initialized():
                ray.shutdown()
        finally:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None
            if self._own_ray_tmp is not None:
                os.environ.pop("RAY_TMPDIR", None)
                shutil.rmtree(self._own_ray_tmp, ignore_errors=True)
                self._own_ray_tmp = None


#: What an attached driver started from a shell hands to the job's workers through the
#: job's runtime env: settings that are not secrets (a path, a region). Ray keeps a job's
#: runtime env in its job table, shown by the dashboard and the state API (``ray list jobs
#: --detail``), so a secret (:data:`blockstore.redact.SECRET_ENV`: the checkpoint keys, S3
#: secret keys and session tokens, Azure keys) never goes there: the workers take the key
#: from the key file on their node and the store credentials from their node's own chain
#: (docs/OPERATIONS.md, Security and "Credentials and IAM").
FORWARDED_ENV = ("BLOCKPOINT_CHECKPOINT_KEY_FILE", "AWS_REGION", "AWS_DEFAULT_REGION")


def secrets_in_job_runtime_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret variables (names) that this driver's job carries in its runtime env, when
    it runs under ``ray job submit`` (Ray passes the job's config to the driver as JSON);
    empty outside a job."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from blockstore.redact import SECRET_ENV

    raw = (os.environ if environ is None else environ).get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not raw:
        return []
    try:
        env_vars = (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return []
    return [k for k in SECRET_ENV if k in env_vars]


#: The shortest environment value looked for in a job's entrypoint (a shorter one would
#: be found by chance in any command line; a real key or secret is far longer).
_MIN_SECRET_SEEN = 8


def secrets_in_job_entrypoint(entrypoint: str,
                              environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret variables (names) that a job's ``entrypoint`` carries: assigned there
    (``ray job submit -- env BLOCKPOINT_CHECKPOINT_KEY=... blockpoint demo``, ``NAME=...
    cmd``), or whose value in ``environ`` (default ``os.environ``: what the entrypoint gave
    this driver) appears in it - e.g. the key pasted as an argument. Values of fewer than
    8 characters are not looked for. Names only, never a value."""
    import re

    from blockstore.redact import SECRET_ENV

    env = os.environ if environ is None else environ
    found = []
    for name in SECRET_ENV:
        values = [v.strip() for v in env.get(name, "").split(",")] \
            if name.endswith("_KEYS") else [env.get(name, "").strip()]
        if (re.search(rf"(?<![A-Za-z0-9_]){name}\s*=", entrypoint)
                or any(len(v) >= _MIN_SECRET_SEEN and v in entrypoint for v in values)):
            found.append(name)
    return found


def job_entrypoint() -> str | None:
    """The entrypoint of the job this driver runs as (``ray job submit -- ENTRYPOINT``), as
    Ray's job table keeps it and shows it (``ray list jobs --detail``, the dashboard); None
    outside a submitted job or when it cannot be read. Needs ``ray.init`` done."""
    import json

    from ray._private import ray_constants
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.dashboard.modules.job.common import (
        JOB_ID_METADATA_KEY,
        JobInfoStorageClient,
    )
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        config = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
        submission_id = (config.get("metadata") or {}).get(JOB_ID_METADATA_KEY)
        if not submission_id:
            return None
        raw = _internal_kv_get(JobInfoStorageClient.JOB_DATA_KEY.format(job_id=submission_id),
                               namespace=ray_constants.KV_NAMESPACE_JOB)
        entrypoint = json.loads(raw).get("entrypoint") if raw else None
    except Exception:  # noqa: BLE001 - the check is best effort, never the run's failure
        return None
    return entrypoint if isinstance(entrypoint, str) else None


def refuse_secrets_in_runtime_env(names: Sequence[str], where: str = "runtime_env") -> None:
    """Refuse a job whose runtime env (or, ``where="entrypoint"``, entrypoint) carries
    secrets (``names``), saying what to do instead.

    Raises:
        DemoSetupError: ``names`` is not empty.
    """
    if not names:
        return
    listed = ", ".join(f"${n}" for n in names)
    kept = ("runtime env in its job table" if where == "runtime_env" else
            "entrypoint in its job table and echoes it at the top of the job's log")
    raise DemoSetupError(
        f"the job's {where} carries {listed}: Ray keeps a job's {kept}, "
        "where the dashboard and `ray list jobs --detail` show it to anyone who "
        "reaches them - treat those values as exposed and rotate them. Give the nodes their "
        "secrets instead: the checkpoint key in a file (mode 0600, the same path on every "
        "node, e.g. cluster.yaml's file_mounts) named by $BLOCKPOINT_CHECKPOINT_KEY_FILE "
        "(a path may go in the runtime env), the store credentials from each node's own "
        "chain (instance profile, ~/.aws/credentials, its environment) - docs/OPERATIONS.md, "
        "Security", what="key" if any("CHECKPOINT" in n for n in names) else "store")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _kill_pids(pids: Sequence[int]) -> list[int]:
    """SIGKILL each of ``pids`` on this node; the ones that were alive."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


class AttachedDemoCluster(DemoCluster):
    """A running Ray cluster the demo attaches to (and leaves running)."""

    removes_nodes = False

    def __init__(self, address: str, namespace: str | None = None) -> None:
        self.namespace = namespace
        # Every message shows the address redacted: user information may hold a password.
        from blockstore.redact import redact_ray_address

        # ("auto": shown with $RAY_ADDRESS, whose secrets are masked too)
        self.shown_address, self._address_spans = redact_ray_address(address)
        if address.startswith(("http://", "https://")):
            raise DemoSetupError(
                f"Ray address {self.shown_address!r} is a dashboard (job API) address: submit the demo "
                "with `ray job submit --address <it> -- blockpoint demo ...`, or give the "
                "cluster's GCS address (HOST:6379, or 'auto') here", what="address")
        self.address = address

    def intro(self) -> str:
        return f"  attaching to the Ray cluster at {self.shown_address}...\n"

    def start(self) -> None:
        import ray

        kw: dict[str, Any] = {}
        # Under `ray job submit` the driver inherits the job's runtime_env (and may not
        # restate it); a secret in it is already in Ray's job table: refused, with what to do.
        # A driver started from a shell hands the job's workers only FORWARDED_ENV (the key
        # file's path, the region): never a secret, which Ray would keep in its job table.
        # The workers find the key and the store credentials on their own node; the per-node
        # check (demo_store.check_key_reaches) says what to do when they do not.
        from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
        if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ:
            refuse_secrets_in_runtime_env(secrets_in_job_runtime_env())
        else:
            env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
            if env.get("BLOCKPOINT_CHECKPOINT_KEY_FILE"):  # the workers' cwd is not ours
                env["BLOCKPOINT_CHECKPOINT_KEY_FILE"] = os.path.abspath(
                    env["BLOCKPOINT_CHECKPOINT_KEY_FILE"])
            if env:
                kw["runtime_env"] = {"env_vars": env}
        try:
            _check_reachable(self.address)
            ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                     logging_level="ERROR", **kw)
        except (ConnectionError, RuntimeError, ValueError,
                ray.exceptions.AuthenticationError) as exc:
            from blockstore.redact import redact_text

            err = DemoSetupError(
                f"cannot attach to the Ray cluster at {self.shown_address}: "
                f"{type(exc).__name__}: {redact_text(_first_line(exc), self._address_spans)}",
                what="address")
            # Ray's own text (the cause, in a logged traceback) may repeat the address.
            raise err from (None if self._address_spans else exc)
        if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ:  # the entrypoint is in the job table too
            names = secrets_in_job_entrypoint(job_entrypoint() or "")
            if names:
                ray.shutdown()
                refuse_secrets_in_runtime_env(names, where="entrypoint")
        alive = [n for n in ray.nodes() if n.get("Alive")]
        heads = [n["NodeID"] for n in alive if _HEAD_RESOURCE in n.get("Resources", {})]
        if not heads:
            raise DemoSetupError(f"no live head node in the cluster at {self.shown_address}",
                                 what="address")
        self.head_node_id = heads[0]
        self.workers = [n["NodeID"] for n in alive if n["NodeID"] != self.head_node_id]
        self.short = {self.head_node_id: "head",
                      **{n: f"worker-{i}" for i, n in enumerate(self.workers, 1)}}

    def describe(self) -> str:
        # Which copy of the code this driver runs: under `ray job submit --working-dir` it
        # is the uploaded one (Ray's runtime_resources), not an installed package.
        here = os.path.dirname(os.path.abspath(__file__))
        return (f"  attached: {1 + len(self.workers)} nodes (head + {len(self.workers)} "
                "workers); the loss is staged by killing processes (the cluster keeps its "
                f"nodes)\n  driver runs blockpoint from {here}\n")

    def lose(self, node_id: str, procs: Callable[[], Mapping[str, int]],
             say: Callable[[str], None]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        victims = dict(procs())
        names = " and ".join(f"{'stateful stage' if n == 'aggregate' else 'actor'} {n!r}"
                             for n in victims)
        say(f"killing the worker processes of {names} on "
            f"{self.short.get(node_id, node_id[:8])} (SIGKILL, no grace)")
        task = ray.remote(num_cpus=0, max_retries=0)(_kill_pids).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        ray.get(task.remote(list(victims.values())), timeout=60)

    def close(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()


def cluster_for(address: str | None,
                namespace: str | None = None) -> LocalDemoCluster | AttachedDemoCluster:
    """The demo's cluster, not started yet: attached to ``address`` (in Ray namespace
    ``namespace``) if given, else a local one (whose constructor points ``RAY_TMPDIR`` at a
    private directory before Ray loads)."""
    return AttachedDemoCluster(address, namespace) if address else LocalDemoCluster()


def start(cluster: LocalDemoCluster | AttachedDemoCluster, out: TextIO) -> None:
    """Write the intro line to ``out``, then start or attach (slow); closed on failure."""
    out.write(cluster.intro())
    out.flush()
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    if isinstance(cluster, AttachedDemoCluster):
        out.write(cluster.describe())
        out.flush()
