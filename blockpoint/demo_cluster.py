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

__all__ = ["LOCAL_HEALTH_CHECKS", "STORE_CREDENTIAL_ENV", "AttachedDemoCluster", "DemoCluster",
           "LocalDemoCluster", "cluster_for", "start"]

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


#: The object-store client's credentials and region (docs/OPERATIONS.md, "Credentials and
#: IAM"), handed to the workers of an attached driver with the key.
STORE_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_SERVICE_ACCOUNT",
                        "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_KEY")


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
        if address.startswith(("http://", "https://")):
            raise DemoSetupError(
                f"Ray address {address!r} is a dashboard (job API) address: submit the demo "
                "with `ray job submit --address <it> -- blockpoint demo ...`, or give the "
                "cluster's GCS address (HOST:6379, or 'auto') here", what="address")
        self.address = address

    def intro(self) -> str:
        return f"  attaching to the Ray cluster at {self.address}...\n"

    def start(self) -> None:
        import ray

        from blockstore.keys import KEY_ENV, OLD_KEYS_ENV

        kw: dict[str, Any] = {}
        # A driver started from a shell (not by `ray job submit`, whose runtime_env the driver
        # inherits and may not restate) hands its checkpoint key and its store credentials to
        # the job's workers: the stages open the store there, and a worker without the
        # credentials would fall back to the cloud metadata address and fail mid-run.
        from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
        if RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:
            env = {k: os.environ[k] for k in (KEY_ENV, OLD_KEYS_ENV, *STORE_CREDENTIAL_ENV)
                   if os.environ.get(k)}
            if env:
                kw["runtime_env"] = {"env_vars": env}
        try:
            _check_reachable(self.address)
            ray.init(address=self.address, namespace=self.namespace, log_to_driver=False,
                     logging_level="ERROR", **kw)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as exc:
            raise DemoSetupError(f"cannot attach to the Ray cluster at {self.address}: "
                                 f"{type(exc).__name__}: {_first_line(exc)}",
                                 what="address") from exc
        alive = [n for n in ray.nodes() if n.get("Alive")]
        heads = [n["NodeID"] for n in alive if _HEAD_RESOURCE in n.get("Resources", {})]
        if not heads:
            raise DemoSetupError(f"no live head node in the cluster at {self.address}",
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
