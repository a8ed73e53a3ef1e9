"""The README's code examples run as written (paths moved into a temporary directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    m = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert m, f"no python block after {heading!r}"
    return m.group(1)


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = code.replace('"/tmp/', f'"{tmp_path}/')
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)


@pytest.mark.parametrize("heading", ["## The block store in 10 lines",
                                     "## Checkpoints of any state"])
def test_storage_examples_run(heading: str, tmp_path: Path) -> None:
    proc = _run(_block(heading), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _run_ray(heading: str, tmp_path: Path, cpus: int = 2) -> subprocess.CompletedProcess[str]:
    code = _block(heading).replace("ray.init()", f"ray.init(num_cpus={cpus}, "
                                                 "include_dashboard=False, log_to_driver=False)")
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.ray
def test_pipeline_example_runs(tmp_path: Path) -> None:
    proc = _run_ray("## A user pipeline in 20 lines", tmp_path)
    committed_step, records_out, recoveries = proc.stdout.split()[-3:]
    assert int(records_out) == 100_000 and int(committed_step) >= 5


@pytest.mark.ray
def test_dag_example_runs(tmp_path: Path) -> None:
    # four actors of one CPU each (a laptop has them; this machine's 2 cores are shared)
    proc = _run_ray("### A DAG: fan-out, fan-in, a sink per output", tmp_path, cpus=4)
    committed_step, records_out = proc.stdout.split()[-2:]
    assert int(committed_step) >= 4 and 35_000 < int(records_out) < 45_000


@pytest.mark.ray
def test_parquet_example_runs(tmp_path: Path) -> None:
    proc = _run_ray("## Parquet in, Parquet out", tmp_path)
    assert proc.stdout.split()[-1] == "100000"


@pytest.mark.ray
def test_checkpointed_actor_example_runs(tmp_path: Path) -> None:
    proc = _run_ray("## A checkpointed Ray actor in 15 lines", tmp_path)
    assert proc.stdout.split()[-1] in {"None", "10", "11"}  # ray.kill is asynchronous


def test_install_docs_name_the_extras() -> None:
    """The install commands name every extra a user needs (an ``s3://`` store needs ``s3``),
    and each extra they name exists in pyproject.toml."""
    import tomllib

    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    text = README.read_text()
    named = set(re.findall(r'pip install -e "\.\[(\w+)\]"', text))
    assert {"s3", "langgraph"} <= named and named <= set(extras), named
    ops = (README.parent / "docs" / "OPERATIONS.md").read_text()
    assert 'pip install -e ".[s3]"' in ops


def test_readme_uses_no_ray_argument_ray_ignores() -> None:
    """Ray 2.60 warns that ``ray.kill(..., no_restart=False)`` is ignored: the actor
    example crashes the actor's process instead (Ray then restarts it)."""
    assert "no_restart=False" not in README.read_text()
