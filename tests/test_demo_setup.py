"""``blockpoint demo``'s setup on a cluster, refused or prepared before any Ray starts: a
fresh store place per run, a shared store without a key, stores and addresses no stage can
use. (The runs themselves: tests/test_demo.py locally, tests/test_pipeline_cluster.py as a
``ray job submit`` job.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blockpoint.demo_store import key_fingerprint, run_store_url
from blockpoint.errors import DemoSetupError
from blockstore import StoreURLError, parse_store_url


def test_each_run_takes_a_fresh_place_under_the_store(tmp_path: Path) -> None:
    s3 = "s3://bucket-a/ckpt/team?endpoint_url=http://127.0.0.1:9000&region=us-east-1"
    u = parse_store_url(run_store_url(s3, "demo-1"))
    assert (u.scheme, u.location, u.prefix) == ("s3", "bucket-a", "ckpt/team/demo-1")
    assert u.option("endpoint_url") == "http://127.0.0.1:9000" and u.option("region") == "us-east-1"
    assert parse_store_url(run_store_url("s3://bucket-a", "demo-1")).prefix == "demo-1"
    assert run_store_url(str(tmp_path), "demo-1") == str(tmp_path / "demo-1")
    assert run_store_url(f"file://{tmp_path}", "demo-1") == str(tmp_path / "demo-1")
    a, b = run_store_url(str(tmp_path)), run_store_url(str(tmp_path))
    assert a != b and Path(a).name.startswith("demo-")
    with pytest.raises(DemoSetupError, match="memory store lives in one process"):
        run_store_url("memory://x")
    with pytest.raises(StoreURLError):
        run_store_url("s3://A_bad_bucket/x")


def test_key_fingerprint_names_no_secret() -> None:
    fp = key_fingerprint({"BLOCKPOINT_CHECKPOINT_KEY": "k" * 32})
    assert fp and len(fp) == 12 and "k" not in fp
    assert fp == key_fingerprint({"BLOCKPOINT_CHECKPOINT_KEY": "k" * 32})
    assert fp != key_fingerprint({"BLOCKPOINT_CHECKPOINT_KEY": "j" * 32})
    assert key_fingerprint({}) is None
    with pytest.raises(DemoSetupError, match="OLD_KEYS"):
        key_fingerprint({"BLOCKPOINT_CHECKPOINT_OLD_KEYS": "a"})


def _demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("blockpoint")
    return subprocess.run([str(exe), "demo", "--quick", *args], check=False, capture_output=True,
                          text=True, timeout=120, env=env)


def test_removing_a_refused_run_s_place_touches_only_a_run_s_directory(tmp_path: Path) -> None:
    """``remove_run_place`` on a file store removes a ``demo-*`` directory and nothing else:
    a store's own directory (or one above it) given by mistake stays (it had no guard; the
    object-store branch had one)."""
    from blockpoint.demo_store import remove_run_place

    store = tmp_path / "store"
    (store / "leases").mkdir(parents=True)
    remove_run_place(str(store))
    remove_run_place(f"file://{tmp_path}")
    assert (store / "leases").is_dir()
    run = Path(run_store_url(str(store)))
    (run / "leases").mkdir(parents=True)
    remove_run_place(str(run))
    assert not run.exists() and (store / "leases").is_dir()


def test_shared_store_without_key_is_refused_before_anything_runs(s3_server: Any) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("BLOCKPOINT_CHECKPOINT_KEY", "RAY_ADDRESS")}
    env["BLOCKPOINT_STORE_URL"] = s3_server.url("demo-nokey")
    proc = _demo(env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is shared" in proc.stderr and "BLOCKPOINT_CHECKPOINT_KEY" in proc.stderr
    assert "starting a 3-node" not in proc.stdout  # refused before a cluster started
    assert "Traceback" not in proc.stderr
    # the store was opened (to learn it is shared) before the refusal: the fresh demo-*
    # place it made is gone again (review attack19b F4)
    from blockstore import parse_store_url
    from blockstore.objectclient import ObjectClient

    client = ObjectClient(parse_store_url(s3_server.url("demo-nokey")))
    try:
        assert [m["path"] for m in client.list("")] == []
    finally:
        client.close()


@pytest.mark.parametrize("args, extra, why", [
    (["--store", "memory://m"], {}, "memory store lives in one process"),
    (["--address", "http://127.0.0.1:8265", "--store", "/tmp/x"], {}, "dashboard"),
    (["--address", "auto"], {}, "needs a store every node reaches"),
    ([], {"RAY_ADDRESS": "127.0.0.1:1"}, "needs a store every node reaches"),
    (["--store", "s3://bp-test/x?region=us-east-1&endpoint_url=http://127.0.0.1:1"], {},
     "cannot open the store"),
    (["--store", "s3://x/y"], {}, "bucket"),
])
def test_setups_no_stage_could_use_are_refused(args: list[str], extra: dict[str, str],
                                               why: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    env.update(extra)
    env["BLOCKPOINT_CHECKPOINT_KEY"] = "k" * 32
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    proc = _demo(*args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_cluster_nobody_answers_for_is_a_refused_setup(tmp_path: Path) -> None:
    """``--address`` where no Ray listens: one line and exit 2 (was a traceback, exit 1)."""
    from s3server import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "store").mkdir()
    work = tmp_path / "work"
    proc = _demo("--address", address, "--store", str(tmp_path / "store"),
                 "--workdir", str(work), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"blockpoint demo: cannot attach to the Ray cluster at "
                                  f"{address}: ConnectionError: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    # a refused setup leaves nothing it made: the demo-* store place it had created before
    # attaching, the work dir and its ray-processes.log (review attack19b F4)
    assert list((tmp_path / "store").iterdir()) == [] and not work.exists()


def test_a_refused_setup_keeps_what_was_there(tmp_path: Path) -> None:
    """A work dir that existed keeps its files (an earlier run's log too); only what the
    refused run made goes."""
    from s3server import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    proc = _demo("--address", f"127.0.0.1:{free_port()}", "--store", str(tmp_path / "store"),
                 "--workdir", str(work), env=env)
    assert proc.returncode == 2 and "cannot attach" in proc.stderr, proc.stdout + proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]
    (work / "ray-processes.log").write_text("an earlier run's log\n")
    proc = _demo("--store", "memory://m", "--workdir", str(work), env=env)
    assert proc.returncode == 2 and "memory store" in proc.stderr, proc.stdout + proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt", "ray-processes.log"]
    assert (work / "ray-processes.log").read_text() == "an earlier run's log\n"


def test_a_job_whose_runtime_env_carries_a_secret_is_refused() -> None:
    """Under ``ray job submit`` the driver sees the job's runtime env (Ray's JSON in its
    environment): a secret there is already in Ray's job table - refused, saying what to do
    (a key file, node credentials) and to rotate it; a key file's path is not a secret."""
    import json

    from blockpoint.demo_cluster import (
        FORWARDED_ENV,
        refuse_secrets_in_runtime_env,
        secrets_in_job_runtime_env,
    )

    def job(env_vars: dict[str, str]) -> dict[str, str]:
        return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
            {"runtime_env": {"env_vars": env_vars}, "metadata": {}})}

    assert secrets_in_job_runtime_env({}) == []                       # not a job
    assert secrets_in_job_runtime_env(job({"BLOCKPOINT_CHECKPOINT_KEY_FILE": "/k",
                                           "BLOCKPOINT_STORE_URL": "s3://b/p"})) == []
    found = secrets_in_job_runtime_env(job({"BLOCKPOINT_CHECKPOINT_KEY": "SEKRIT",
                                            "AWS_SECRET_ACCESS_KEY": "SEKRIT2"}))
    assert set(found) == {"BLOCKPOINT_CHECKPOINT_KEY", "AWS_SECRET_ACCESS_KEY"}
    with pytest.raises(DemoSetupError) as err:
        refuse_secrets_in_runtime_env(found)
    text = str(err.value)
    assert "job table" in text and "BLOCKPOINT_CHECKPOINT_KEY_FILE" in text and "rotate" in text
    assert "SEKRIT" not in text and err.value.what == "key"
    refuse_secrets_in_runtime_env([])                                 # nothing to refuse
    from blockstore.redact import SECRET_ENV
    assert not set(FORWARDED_ENV) & set(SECRET_ENV)
    assert "AWS_ACCESS_KEY_ID" not in FORWARDED_ENV  # half of a pair the nodes have their own of


def test_secrets_in_the_job_entrypoint_named_never_shown() -> None:
    """``ray job submit -- env BLOCKPOINT_CHECKPOINT_KEY=... blockpoint demo`` (or a secret
    pasted as an argument) puts the secret in the job's entrypoint, which Ray's job table
    keeps and shows as it does the runtime env (review 19, "Risk"): found by name when
    assigned there, by value when this driver's secret appears in it; refused like the
    runtime env, naming the variable, never the value."""
    from blockpoint.demo_cluster import (
        refuse_secrets_in_runtime_env,
        secrets_in_job_entrypoint,
    )

    key, aws = "SEKRIT-checkpoint-key-0123", "SEKRIT-aws-secret-4567"
    env = {"BLOCKPOINT_CHECKPOINT_KEY": key, "AWS_SECRET_ACCESS_KEY": aws,
           "BLOCKPOINT_CHECKPOINT_OLD_KEYS": "SEKRIT-old-key-89ab, short"}
    assert secrets_in_job_entrypoint(
        f"env BLOCKPOINT_CHECKPOINT_KEY={key} blockpoint demo --quick", env) == [
            "BLOCKPOINT_CHECKPOINT_KEY"]
    assert secrets_in_job_entrypoint(
        "AWS_SECRET_ACCESS_KEY='x' BLOCKPOINT_CHECKPOINT_KEY=$(cat k) python -m blockpoint demo",
        {}) == ["AWS_SECRET_ACCESS_KEY", "BLOCKPOINT_CHECKPOINT_KEY"]
    assert secrets_in_job_entrypoint(f"python run.py --secret {aws}", env) == [
        "AWS_SECRET_ACCESS_KEY"]                                       # pasted: by value
    assert secrets_in_job_entrypoint("demo --k SEKRIT-old-key-89ab", env) == [
        "BLOCKPOINT_CHECKPOINT_OLD_KEYS"]                              # one of the old keys
    # not secrets: a key file's path, the store URL, a short value seen by chance
    assert secrets_in_job_entrypoint(
        "env BLOCKPOINT_CHECKPOINT_KEY_FILE=/k/key BLOCKPOINT_STORE_URL=s3://b/p "
        "python -m blockpoint demo --short", env) == []
    assert secrets_in_job_entrypoint("", env) == []                    # not a job
    with pytest.raises(DemoSetupError) as err:
        refuse_secrets_in_runtime_env(["BLOCKPOINT_CHECKPOINT_KEY"], where="entrypoint")
    text = str(err.value)
    assert "entrypoint carries $BLOCKPOINT_CHECKPOINT_KEY" in text and "job table" in text
    assert "rotate" in text and "BLOCKPOINT_CHECKPOINT_KEY_FILE" in text
    assert "SEKRIT" not in text and err.value.what == "key"


_PASSWORD = "Pa55w0rd-SECRET"


@pytest.mark.parametrize("args, extra", [
    (["--address", f"https://admin:{_PASSWORD}@ray.example.com:8265"], {}),
    (["--address", f"admin:{_PASSWORD}@127.0.0.1:1"], {}),
    ([], {"RAY_ADDRESS": f"admin:{_PASSWORD}@127.0.0.1:1"}),
])
def test_a_password_in_the_ray_address_is_never_shown(tmp_path: Path, args: list[str],
                                                      extra: dict[str, str]) -> None:
    """User information in ``--address`` / ``$RAY_ADDRESS`` (a dashboard behind an
    authenticating proxy, ``user:token@host``) is masked in the refusal, the "attaching"
    line and "cannot attach" (review attack19b F3: printed whole)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    env.update(extra)
    proc = _demo(*args, "--store", str(tmp_path / "store"), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _PASSWORD not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "***@" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_password_in_the_ray_address_is_not_in_the_error_or_its_pickle() -> None:
    import pickle

    from blockstore.redact import redact_address
    from blockpoint.demo_cluster import AttachedDemoCluster

    with pytest.raises(DemoSetupError) as err:
        AttachedDemoCluster(f"https://admin:{_PASSWORD}@ray.example.com:8265")
    assert "dashboard" in str(err.value) and "https://***@ray.example.com:8265" in str(err.value)
    assert _PASSWORD not in str(err.value) and _PASSWORD.encode() not in pickle.dumps(err.value)
    cluster = AttachedDemoCluster(f"ray://admin:{_PASSWORD}@10.0.0.1:10001")
    assert _PASSWORD not in cluster.intro() and "ray://***@10.0.0.1:10001" in cluster.intro()
    assert redact_address(f"u:{_PASSWORD}@h:6379")[0] == "***@h:6379"
    assert redact_address("10.0.0.1:6379") == ("10.0.0.1:6379", ())
    assert redact_address("auto") == ("auto", ())


def test_auto_with_a_password_in_ray_address_is_a_masked_refusal(tmp_path: Path) -> None:
    """``--address auto`` reads $RAY_ADDRESS; with ``user:pw@h:p?password=...`` Ray's
    ``ValueError`` quoted it whole: a traceback with the password, exit 1, and the setup
    left behind (review of the 19b fixes). Now one line, exit 2, masked, nothing left."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    secret = "Pa55w0rd-SECRET"
    env["RAY_ADDRESS"] = f"user:{secret}@127.0.0.1:1?password={secret}"
    (tmp_path / "store").mkdir()
    work = tmp_path / "work"
    proc = _demo("--address", "auto", "--store", str(tmp_path / "store"),
                 "--workdir", str(work), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "auto ($RAY_ADDRESS=***@127.0.0.1:1?password=***)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert list((tmp_path / "store").iterdir()) == [] and not work.exists()


def test_a_refused_setup_removes_only_what_it_made(tmp_path: Path) -> None:
    """Found by a review: a refused demo removed its whole new work dir with ``rmtree`` -
    also what another process had put there meanwhile - and wrote Ray's log through a
    symlink at ``ray-processes.log``. Now only its log and the empty directories it made
    go, and a symlinked log is a refused setup."""
    from s3server import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BLOCKPOINT_STORE_URL")}
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not Ray's log\n")
    (work / "ray-processes.log").symlink_to(victim)
    proc = _demo("--address", f"127.0.0.1:{free_port()}", "--store", str(tmp_path / "store"),
                 "--workdir", str(work), env=env)
    assert proc.returncode == 2 and "ray-processes.log" in proc.stderr, proc.stderr
    assert "symlink" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert victim.read_text() == "not Ray's log\n"
    assert (work / "ray-processes.log").is_symlink()  # what was there stays
