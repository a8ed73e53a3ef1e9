"""Shared fixtures: real Ray (local and a several-node Cluster) and real store directories.

Ray is expensive here (``ray.init`` ~3 s, a 3-node Cluster ~7-14 s), so each is shared per
test module. Ray writes its session files under ``RAY_TMPDIR``, pointed at a short private
directory so tests never touch the user's ``/tmp/ray`` (socket paths must stay short).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from blockpoint.demo_cluster import LOCAL_HEALTH_CHECKS

_RAY_TMP = tempfile.mkdtemp(prefix="bpray", dir="/tmp")
os.environ.setdefault("RAY_TMPDIR", _RAY_TMP)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs on pytest-xdist workers, which inherit the controller's RAY_TMPDIR:
    # each needs its own, or a worker's `ray.init()` finds the Cluster another worker started
    # (Ray connects to the newest cluster recorded under its temp dir) and fails.
    os.environ["RAY_TMPDIR"] = _RAY_TMP
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tests take over leases right after they expire (TTLs of milliseconds); on one machine there
# is no clock skew to guard against. The margin itself is tested with explicit values
# (tests/test_store_security.py); everything else runs without it (and so do the Ray workers
# and subprocesses the tests start: they inherit this environment).
os.environ.setdefault("BLOCKPOINT_CLOCK_MARGIN", "0")

#: Fast failure detection that a loaded machine does not trip (see the demo's, the same).
FAST_HEALTH = dict(LOCAL_HEALTH_CHECKS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


@pytest.fixture
def store_dir(tmp_path) -> str:
    """A fresh, not-yet-created file store directory."""
    return str(tmp_path / "store")


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``BLOCKPOINT_CHECKPOINT_KEY`` in the environment for the test (a module that wants
    unauthenticated checkpoints whatever the caller's shell holds uses it for every test:
    ``pytestmark = pytest.mark.usefixtures("no_env_key")``)."""
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local single-node Ray for the module (4 logical CPUs so actors can co-exist)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[object]:
    """A 3-node ``ray.cluster_utils.Cluster`` (head + 2 workers) with fast failure detection.

    The head has 1 CPU, each worker 2; a removed node is declared dead in ~5-7 s
    (``FAST_HEALTH``), a live but slow one never. Tests that remove
    nodes may add replacements with ``cluster.add_node(...)``. A module that sets
    ``RAY_JOB_SERVER = True`` gets the head with the dashboard and its job server on a free
    loopback port (``cluster.job_address``, ``http://127.0.0.1:PORT``, for ``ray job submit``).
    A module that sets ``RAY_TOKEN_AUTH = True`` gets a cluster that runs Ray's token
    authentication (``RAY_AUTH_MODE=token``, a fresh token in ``RAY_AUTH_TOKEN``, set in this
    process for the module so its nodes, its driver and the clients it starts carry it;
    ``cluster.auth_token``): every request without the token is refused.
    """
    import ray
    from ray.cluster_utils import Cluster

    from s3server import free_ports

    if ray.is_initialized():
        ray.shutdown()
    auth = _TokenAuth() if getattr(request.module, "RAY_TOKEN_AUTH", False) else None
    head: dict[str, object] = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024,
                               "_system_config": FAST_HEALTH}
    job_port = None
    if getattr(request.module, "RAY_JOB_SERVER", False):
        job_port, agent_port = free_ports(2)
        # The job server is part of the dashboard (head); the job agent on the head takes a
        # free port too, not the fixed default another Ray on this machine may hold.
        head.update(include_dashboard=True, dashboard_host="127.0.0.1",
                    dashboard_port=job_port, dashboard_agent_listen_port=agent_port)
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head)
        cluster.job_address = f"http://127.0.0.1:{job_port}" if job_port else None
        cluster.auth_token = auth.token if auth else None
        for _ in range(2):
            cluster.add_node(num_cpus=2, object_store_memory=100 * 1024 * 1024)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
    finally:
        if auth is not None:
            auth.restore()


class _TokenAuth:
    """Ray's token authentication on for this process and what it starts, until
    :meth:`restore` (Ray reads ``RAY_AUTH_MODE`` into its cached config: refreshed both
    ways, as Ray's own tests do)."""

    VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def __init__(self) -> None:
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token,
        )

        self._saved = {k: os.environ.get(k) for k in self.VARS}
        self.token = generate_new_authentication_token()
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self._refresh()

    @staticmethod
    def _refresh() -> None:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def restore(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._refresh()


@pytest.fixture
def sched(ray_local: None, tmp_path) -> Iterator[tuple[object, str, str]]:
    """A fresh scheduler actor (unique name) and its store on the module's local Ray, as
    ``(handle, name, store_url)``; killed with its stages after the test (the scheduler
    tests on one node: ``tests/schedstages.py``)."""
    from schedstages import local_scheduler

    with local_scheduler(tmp_path) as handle_name_store:
        yield handle_name_store


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    """A real S3-compatible server (moto's standalone server) on a free loopback port, for
    the session; see tests/s3server.py. Skips only if moto is not installed (``.[test]``)."""
    pytest.importorskip("moto", reason="moto[server] is a test dependency (pip install -e '.[test]')")
    pytest.importorskip("obstore", reason="obstore is a test dependency (pip install -e '.[test]')")
    from s3server import MotoServer

    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()
