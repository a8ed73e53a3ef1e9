"""Exactly once across node loss (A8) on a 3-node ``ray.cluster_utils.Cluster``, and the
user path onto a cluster: the demo submitted with ``ray job submit``.

The node running a stateful stage is removed without grace mid-run; the stage is relaunched
on another live node from its lease, every stage rolls back to the last committed step and
the source is replayed. The committed output must equal the failure-free reference.

The module's one Cluster has its head's job server on (``RAY_JOB_SERVER``) and runs Ray
2.60's token authentication (``RAY_TOKEN_AUTH``): a test submits ``python -m blockpoint
demo`` to it with the real ``ray job submit`` CLI, authenticated the way docs/OPERATIONS.md
says (``RAY_AUTH_MODE=token`` and the cluster's token in the client's environment; without
them the submission is refused), the project's sources as the job's working dir, the store
URL and the *path* of the checkpoint key file in the job's ``runtime_env`` (the key itself in
a 0600 file every node reads - one filesystem here, ``file_mounts`` on a real cluster - and
the S3 credentials in the environment the nodes were started with), and the store on the
loopback S3 server - the command docs/OPERATIONS.md shows. Another runs ``blockpoint demo
--address`` from a shell and then ``blockpoint inspect`` / ``scheduler status`` / ``scheduler
decisions`` with the store and namespace the demo printed. After both, neither the key nor the
driver's S3 secret is in anything Ray shows or keeps (review 19, F9): the job table
(``list_jobs(detail=True)``, the job API), nor any object of the store (the scheduler's
registry included), while every checkpoint generation still carries a MAC that verifies.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from stages.actors.actor import StageSpec
from stages.pipeline.pipeline import Pipeline, PipelineEvent, run_reference
from stages.checkpoint.policy import CheckpointPolicy
from stages.pipeline.sink import FileSink
from stages.pipeline.source import Enrich, GeneratedSource, RunningAggregate

# 900 s: the job-submit tests wait 120 + 240 s in sequence, past the suite-wide 300 s
pytestmark = [pytest.mark.ray, pytest.mark.multinode, pytest.mark.timeout(900)]

RAY_JOB_SERVER = True  # the ray_cluster fixture starts the head's job server
RAY_TOKEN_AUTH = True  # ... and runs Ray's token authentication (RAY_AUTH_MODE=token)
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend, path", [("file", "driver"), ("s3", "driver"),
                                           ("file", "push")])
def test_node_of_stateful_stage_removed_mid_run(s3_server: Any, ray_cluster: Any,
                                                tmp_path: Path, backend: str, path: str) -> None:
    """With the store in a directory, and on an S3-compatible server on loopback (no shared
    filesystem: the restored stage reads its checkpoint from the object store). The server
    (session-scoped) starts before the cluster, so every node has its credentials in the
    environment. ``push``: the stages send to each other and to the sink writer across the
    nodes (``data_path="push"``)."""
    cluster = ray_cluster
    store = (s3_server.url(f"pipeline-{tmp_path.name}") if backend == "s3"
             else str(tmp_path / "store"))
    # An object store is shared: pickle checkpoints there need a key or an explicit opt-out
    # (the cluster's nodes were started without a key in their environment; the key's way
    # to the workers, the job's runtime_env, is the job test's below).
    unauth = backend == "s3"
    specs = [StageSpec("agg", RunningAggregate, store, block_size=64 * 1024, lease_ttl=30.0,
                       allow_unauthenticated=unauth),
             StageSpec("seq", functools.partial(Enrich, False), store, block_size=64 * 1024,
                       lease_ttl=30.0, allow_unauthenticated=unauth)]
    head_id = cluster.head_node.node_id
    workers = [n for n in cluster.list_all_nodes() if n.node_id != head_id]
    victim = workers[0]
    removed: list[str] = []

    def on_event(ev: PipelineEvent) -> None:
        if ev.kind == "commit" and ev.step == 2 and not removed:
            assert p.node_of("agg") == victim.node_id
            removed.append(victim.node_id)
            cluster.remove_node(victim, allow_graceful=False)
            # Its actors may answer for a moment; let Ray declare the node dead first so the
            # loss lands mid-run rather than after a short stream has already finished.
            deadline = time.monotonic() + 120
            while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
                assert time.monotonic() < deadline, "node never declared dead"
                time.sleep(0.1)

    src = GeneratedSource(seed=5, n=4000, keys=9)
    sink = FileSink(tmp_path / "out", fsync=False)
    p = Pipeline(src, specs, sink, batch_size=50, max_in_flight=4,
                 policy=CheckpointPolicy(every_records=400),
                 placement={"agg": victim.node_id, "seq": workers[1].node_id},
                 on_event=on_event, ping_timeout=30.0, call_timeout=60.0, data_path=path)
    try:
        res = p.run()
    finally:
        cluster.add_node(num_cpus=2, object_store_memory=100 * 1024 * 1024)
    assert removed
    relaunched = [e for e in res.events if e.kind == "relaunched" and e.stage_id == "agg"]
    assert relaunched and relaunched[0].detail["from_node"] == victim.node_id
    assert p.node_of("agg") not in (None, victim.node_id)  # restored on another live node
    assert res.finished and res.records_in == 4000
    assert sink.read_all() == run_reference(src, specs)  # record for record


def _documented_job() -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """The client's exports, the runtime env and the entrypoint of docs/OPERATIONS.md's
    "The demo as a job"."""
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index("### The demo as a job"):], re.S)
    assert block, "docs/OPERATIONS.md lost its 'The demo as a job' command"
    lines = block.group(1).splitlines(keepends=True)
    exports: dict[str, str] = {}
    while lines and lines[0].startswith("export "):
        for word in shlex.split(lines.pop(0))[1:]:
            name, _, value = word.partition("=")
            exports[name] = value
    cmd = "".join(lines)
    assert cmd.startswith("ray job submit --address http://127.0.0.1:8265 --working-dir . ")
    env = re.search(r"--runtime-env-json '(.*?)'", cmd, re.S)
    assert env, cmd
    return exports, json.loads(env.group(1)), cmd.split(" -- ", 1)[1].split()


def _key_file(tmp_path: Path) -> tuple[str, str]:
    """A fresh checkpoint key in a 0600 file: ``(key, path)``."""
    key = secrets.token_hex(16)
    path = tmp_path / "checkpoint_key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, str(path)


def _assert_secrets_not_shown(cluster: Any, store_url: str, *shown: str) -> None:
    """None of ``shown`` is in Ray's job table (the state API's ``list_jobs(detail=True)``
    and the job API's list, runtime envs included) nor in any object of the store under the
    run's prefix (checkpoints, the scheduler's registry, lease records)."""
    import boto3
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_jobs
    from s3server import CREDENTIALS

    jobs = list_jobs(address=cluster.job_address, detail=True, limit=1000)
    assert jobs, "the job table lists the drivers that ran"
    table = repr(jobs) + repr(JobSubmissionClient(cluster.job_address).list_jobs())
    for secret in shown:
        assert secret not in table, "a secret is in Ray's job table"
    m = re.match(r"s3://([^/]+)/([^?]+)\?.*endpoint_url=([^&]+)", store_url)
    assert m, store_url
    s3 = boto3.client("s3", endpoint_url=m.group(3), region_name="us-east-1",
                      aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=m.group(1), Prefix=m.group(2)) for o in page.get("Contents", [])]
    assert keys, store_url
    for k in keys:
        body = s3.get_object(Bucket=m.group(1), Key=k)["Body"].read()
        for secret in shown:
            assert secret.encode() not in body, f"a secret is in the store object {k}"


def _client_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's auth settings (a user's shell), plus
    ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in _AUTH_VARS}, **extra}


def test_demo_submitted_with_ray_job_submit_on_s3(s3_server: Any, ray_cluster: Any,
                                                   tmp_path: Path) -> None:
    """``ray job submit`` of the demo against the S3 store: SUCCEEDED, exact, and every
    checkpoint generation it left in the bucket carries a MAC that verifies under the key of
    the job's key file (and not under another); the key is in no job table entry and no
    store object."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from blockstore import open_store
    from stages.checkpoint.reader import scan_slots

    assert ray_cluster.job_address
    # A copy of the project's sources, as a user's checkout would be uploaded.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"))
    key, key_path = _key_file(tmp_path)
    store = s3_server.url(f"job-{tmp_path.name}")
    # The documented command, its placeholders filled in with this server and a fresh key,
    # its client settings with this cluster's token.
    exports, doc_env, entrypoint = _documented_job()
    assert set(exports) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, exports
    assert exports["RAY_AUTH_MODE"] == "token", exports
    ray_exe = str(Path(sys.executable).with_name("ray"))
    # Without them the cluster refuses the submission (what the previous command met).
    refused = subprocess.run([ray_exe, "job", "submit", "--address", ray_cluster.job_address,
                              "--", "true"], capture_output=True, text=True, timeout=120,
                             env=_client_env())
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "Missing authentication token" in refused.stdout + refused.stderr, \
        (refused.stdout + refused.stderr)[-2000:]
    client_env = _client_env(**{**exports, "RAY_AUTH_TOKEN": ray_cluster.auth_token})
    assert set(doc_env) == {"excludes", "env_vars"}, doc_env
    # No secret in the documented runtime env: the key file's path, the store URL.
    assert set(doc_env["env_vars"]) == {"BLOCKPOINT_STORE_URL", "BLOCKPOINT_CHECKPOINT_KEY_FILE"}
    assert entrypoint == ["python", "-m", "blockpoint", "demo", "--quick"], entrypoint
    runtime_env = {"excludes": doc_env["excludes"],
                   "env_vars": {"BLOCKPOINT_STORE_URL": store,
                                "BLOCKPOINT_CHECKPOINT_KEY_FILE": key_path}}
    job_id = f"bp-demo-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    # The real CLI, as a user runs it; it waits for the job and follows its logs.
    proc = subprocess.run(
        [ray_exe, "job", "submit",
         "--address", ray_cluster.job_address, "--submission-id", job_id,
         "--working-dir", str(src), "--runtime-env-json", json.dumps(runtime_env),
         "--", sys.executable, *entrypoint[1:], "--events", "24000", "--sketch-mib", "4"],
        capture_output=True, text=True, timeout=240, env=client_env)
    job_s = time.monotonic() - t0
    client = JobSubmissionClient(ray_cluster.job_address)
    info = client.get_job_info(job_id)
    logs = client.get_job_logs(job_id)
    print(f"ray job submit: {job_s:.1f} s, rc {proc.returncode}, job "
          f"{((info.end_time or 0) - (info.start_time or 0)) / 1000:.1f} s\n{logs}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert info.status == JobStatus.SUCCEEDED, (info.status, info.message, logs[-4000:])
    # The driver ran the uploaded working dir, not the editable install of this checkout.
    m = re.search(r"^  driver runs blockpoint from (.+)$", logs, re.M)
    assert m and "runtime_resources" in m.group(1), logs[-4000:]
    m = re.search(r"^exact: ([\d,]+) records, 0 lost, 0 duplicated$", logs, re.M)
    assert m and int(m.group(1).replace(",", "")) == 24000, logs[-4000:]
    assert "killing the worker processes of stateful stage 'aggregate'" in logs, logs[-4000:]
    assert re.search(r"scheduler restored 'aggregate' on \S+ from its checkpoint", logs), \
        logs[-4000:]
    assert re.search(r"checkpoints authenticated\s+yes: \d+ of \d+ generations", logs), \
        logs[-4000:]
    # The stage leases are in the bucket, under the run's own prefix, and MAC'd.
    run_store = re.search(r"^  store (s3://\S+)$", logs, re.M)
    assert run_store, logs[-4000:]
    with open_store(run_store.group(1), create=False) as st:
        names = {i.name for i in st.list_leases()}
        assert {"normalize@0of2", "normalize@1of2", "aggregate", "score", "tally"} <= names, \
            names
        for name in ("normalize@0of2", "normalize@1of2", "aggregate", "score"):
            headers = [s.header for s in scan_slots(st.open_reader(name))[1] if s.header]
            assert headers and all(h.has_mac for h in headers), name
    _assert_secrets_not_shown(ray_cluster, run_store.group(1), key)
    exe = Path(sys.executable).with_name("blockpoint")
    for k, want in ((key, 0), ("not-the-key", 1)):
        env = {**os.environ, "BLOCKPOINT_CHECKPOINT_KEY": k}
        v = subprocess.run([str(exe), "verify", run_store.group(1)], capture_output=True,
                           text=True, timeout=120, env=env)
        assert v.returncode == want, v.stdout + v.stderr
        if want:
            assert "MAC mismatch" in v.stdout, v.stdout


def test_attached_driver_from_a_shell_hands_no_secret_to_the_workers(
        s3_server: Any, ray_cluster: Any, tmp_path: Path) -> None:
    """``blockpoint demo --address`` outside a job: the workers on every node get the key
    file's path (and read the key from it: same fingerprint) but none of the driver's
    secrets - its S3 keys stay behind (the workers open the store with their node's own
    credentials) and neither they nor the key are in the job table. A driver whose key is
    only in its environment is told to use a key file."""
    from blockstore import open_store

    store = s3_server.url("attached-creds")
    open_store(store, block_size=64 * 1024).close()  # created: the workers open it
    key, key_path = _key_file(tmp_path)
    aws_secret = f"SEKRIT-{secrets.token_hex(8)}"
    script = (
        "import os, ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "from blockpoint.demo_cluster import AttachedDemoCluster\n"
        "from blockpoint.demo_store import check_key_reaches, key_fingerprint\n"
        "from blockpoint.errors import DemoSetupError\n"
        f"c = AttachedDemoCluster({ray_cluster.address!r}, 'creds-check')\n"
        "c.start()\n"
        "nodes = [c.head_node_id, *c.workers]\n"
        f"check_key_reaches(nodes, key_fingerprint(), store_url={store!r})\n"
        "seen = ray.remote(num_cpus=0)(lambda: (os.environ.get('AWS_ACCESS_KEY_ID'),\n"
        "    os.environ.get('AWS_SECRET_ACCESS_KEY'), os.environ.get('BLOCKPOINT_CHECKPOINT_KEY')))\n"
        "got = ray.get([seen.options(scheduling_strategy=On(n, soft=False)).remote() "
        "for n in nodes])\n"
        "print('reaches', len(nodes), *sorted({g[0] for g in got}), *sorted({str(g[2]) for g in got}))\n"
        "assert not any(g[1] and g[1].startswith('SEKRIT') for g in got)\n"
        "try:\n"
        "    check_key_reaches(nodes, key_fingerprint({'BLOCKPOINT_CHECKPOINT_KEY': 'env-only'}))\n"
        "except DemoSetupError as exc:\n"
        "    print('REFUSED', exc)\n"
        "c.close()\n")
    env = {**os.environ, "BLOCKPOINT_CHECKPOINT_KEY_FILE": key_path,
           "AWS_ACCESS_KEY_ID": "from-the-driver-shell", "AWS_SECRET_ACCESS_KEY": aws_secret}
    env.pop("RAY_ADDRESS", None)
    env.pop("BLOCKPOINT_CHECKPOINT_KEY", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("reaches"))
    assert line.split() == ["reaches", "3", "testing", "None"], proc.stdout  # the nodes' own
    refused = next(x for x in proc.stdout.splitlines() if x.startswith("REFUSED"))
    assert "BLOCKPOINT_CHECKPOINT_KEY_FILE" in refused and "job table" in refused, refused
    _assert_secrets_not_shown(ray_cluster, store, key, aws_secret)


def test_demo_attached_from_a_shell_then_inspected(s3_server: Any, ray_cluster: Any,
                                                   tmp_path: Path) -> None:
    """``blockpoint demo --address --store`` as a user runs it from a shell on the cluster
    (RAY_AUTH_MODE=token and the token in its environment), then the commands it prints:
    ``blockpoint inspect`` of the store it printed lists the run's leases, ``scheduler
    status`` / ``decisions`` in the namespace it printed find its scheduler and its decisions
    (before, the store was printed but the scheduler lived in an anonymous namespace and was
    killed at the end)."""
    exe = str(Path(sys.executable).with_name("blockpoint"))
    key, key_path = _key_file(tmp_path)
    env = {**os.environ, "BLOCKPOINT_CHECKPOINT_KEY_FILE": key_path}
    env.pop("BLOCKPOINT_CHECKPOINT_KEY", None)
    env.pop("RAY_ADDRESS", None)
    env.pop("BLOCKPOINT_STORE_URL", None)
    demo = subprocess.run(
        [exe, "demo", "--quick", "--events", "24000", "--sketch-mib", "4",
         "--address", ray_cluster.address, "--store", s3_server.url(f"shell-{tmp_path.name}")],
        capture_output=True, text=True, timeout=300, env=env)
    print(demo.stdout[-3000:])
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-4000:]
    assert re.search(r"^exact: 24,000 records, 0 lost, 0 duplicated$", demo.stdout, re.M)
    store = re.search(r"^  store (s3://\S+/demo-\S+)$", demo.stdout, re.M)
    ns = re.search(r"^  namespace (demo-\d{8}-\d{6}-[0-9a-f]{6}) ", demo.stdout, re.M)
    assert store and ns, demo.stdout[-3000:]
    assert store.group(1).split("?")[0].endswith("/" + ns.group(1))
    assert f"blockpoint inspect {shlex.quote(store.group(1))}" in demo.stdout
    assert f"blockpoint scheduler status --namespace {ns.group(1)}" in demo.stdout

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120,
                              env=env)

    inspect = cli("inspect", "--json", store.group(1))
    assert inspect.returncode == 0, inspect.stderr
    assert {"normalize@0of2", "normalize@1of2", "aggregate", "score", "tally"} <= {
        r["name"] for r in json.loads(inspect.stdout)}, inspect.stdout
    status = cli("scheduler", "status", "--address", ray_cluster.address,
                 "--namespace", ns.group(1))
    assert status.returncode == 0, status.stderr
    assert f"scheduler 'blockpoint-scheduler' (namespace '{ns.group(1)}')" in status.stdout
    decisions = cli("scheduler", "decisions", "--json", "--address", ray_cluster.address,
                    "--namespace", ns.group(1))
    assert decisions.returncode == 0, decisions.stderr
    kinds = {d["kind"] for d in json.loads(decisions.stdout)}
    assert "preempt" in kinds and kinds & {"restore", "move"}, kinds
    assert re.search(r"checkpoints authenticated\s+yes: \d+ of \d+ generations", demo.stdout)
    _assert_secrets_not_shown(ray_cluster, store.group(1), key)


def test_demo_submitted_with_the_key_in_its_entrypoint_refused(s3_server: Any,
                                                                ray_cluster: Any,
                                                                tmp_path: Path) -> None:
    """``ray job submit -- env BLOCKPOINT_CHECKPOINT_KEY=... python -m blockpoint demo`` puts
    the key in the job's entrypoint, which Ray's job table keeps and shows (review 19,
    "Risk"): the driver reads its own job's entrypoint from Ray's job info and refuses the
    run (exit 2, FAILED) naming the variable and saying to rotate - never showing the key."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    src = tmp_path / "src"  # this checkout's sources: the driver runs them
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"))
    _, doc_env, _ = _documented_job()
    key = f"SEKRIT-{secrets.token_hex(8)}"
    job_id = f"bp-entry-{secrets.token_hex(4)}"
    runtime_env = {"excludes": doc_env["excludes"],
                   "env_vars": {"BLOCKPOINT_STORE_URL": s3_server.url(f"entry-{tmp_path.name}")}}
    proc = subprocess.run(  # noqa: PLW1510 - the job status is checked
        [str(Path(sys.executable).with_name("ray")), "job", "submit",
         "--address", ray_cluster.job_address, "--submission-id", job_id,
         "--working-dir", str(src), "--runtime-env-json", json.dumps(runtime_env),
         "--", "env", f"BLOCKPOINT_CHECKPOINT_KEY={key}", sys.executable, "-m", "blockpoint",
         "demo", "--quick", "--events", "2000"],
        capture_output=True, text=True, timeout=240,
        env=_client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_cluster.auth_token))
    client = JobSubmissionClient(ray_cluster.job_address)
    info = client.get_job_info(job_id)
    logs = client.get_job_logs(job_id)
    print(logs[-3000:])
    assert info.status == JobStatus.FAILED, (info.status, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "entrypoint carries $BLOCKPOINT_CHECKPOINT_KEY" in logs, logs[-3000:]
    assert "rotate" in logs and "BLOCKPOINT_CHECKPOINT_KEY_FILE" in logs, logs[-3000:]
    # named, never shown: the only line with the key is Ray's own echo of the entrypoint
    # at the top of the job's log (why the refusal says the job's log holds it too)
    shown = [ln for ln in logs.splitlines() if key in ln]
    assert len(shown) == 1 and shown[0].startswith("Running entrypoint for job"), shown
    assert "job's log" in logs
    assert "exactly once" not in logs.split("entrypoint carries")[1]  # no run after it


def test_demo_attached_without_the_token_is_a_refused_setup(s3_server: Any, ray_cluster: Any,
                                                            tmp_path: Path) -> None:
    """``blockpoint demo --address`` from a shell without the cluster's token (Ray 2.60's
    token auth): one line naming Ray's refusal and exit 2 (the docs' refused setup; it was a
    traceback, exit 1), and the store place it had made before attaching is gone again."""
    from blockstore import parse_store_url
    from blockstore.objectclient import ObjectClient

    exe = str(Path(sys.executable).with_name("blockpoint"))
    _, key_path = _key_file(tmp_path)
    env = _client_env(BLOCKPOINT_CHECKPOINT_KEY_FILE=key_path)
    for name in ("BLOCKPOINT_CHECKPOINT_KEY", "RAY_ADDRESS", "BLOCKPOINT_STORE_URL"):
        env.pop(name, None)
    store = s3_server.url(f"notoken-{tmp_path.name}")
    demo = subprocess.run([exe, "demo", "--quick", "--address", ray_cluster.address,
                           "--store", store], capture_output=True, text=True, timeout=300,
                          env=env)
    assert demo.returncode == 2, (demo.stdout + demo.stderr)[-4000:]
    assert demo.stderr.startswith(f"blockpoint demo: cannot attach to the Ray cluster at "
                                  f"{ray_cluster.address}: "), demo.stderr
    assert "Traceback" not in demo.stderr and demo.stderr.count("\n") == 1, demo.stderr
    client = ObjectClient(parse_store_url(store))
    try:
        assert [m["path"] for m in client.list("")] == []  # the demo-* place was removed
    finally:
        client.close()


def test_a_node_whose_workers_cannot_open_the_store_is_a_refused_setup(ray_cluster: Any,
                                                                        tmp_path: Path) -> None:
    """The demo's per-node check (one task pinned to each node, with the workers' own
    environment): a store the workers cannot open is a refused setup naming the nodes and
    what to do - never passing credentials in the job's runtime env."""
    from blockpoint.demo_store import check_key_reaches
    from blockpoint.errors import DemoSetupError

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    missing = str(tmp_path / "no-store-here")
    with pytest.raises(DemoSetupError) as err:
        check_key_reaches(nodes, None, store_url=missing)
    text = str(err.value)
    assert text.startswith("the workers on node(s) ") and f"cannot open the store {missing}: " \
        "StorePathError" in text, text
    assert all(n[:8] in text for n in nodes), text
    assert "never the job's runtime_env, which Ray shows in its job table" in text, text
    assert err.value.what == "store"
