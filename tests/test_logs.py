"""Structured logs (issue 22 item 3): key=value and JSON lines with the record's fields, one
logger per package, and no print() in library code."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockstore import FileStore
from blockstore.logs import PACKAGES, configure
from stages import CheckpointedStageState

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("blockstore", "stages", "scheduler", "blockpoint_langgraph")


@pytest.fixture
def restore_logging():
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in PACKAGES}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _skip_a_generation(root: Path) -> None:
    """Two generations, the newest damaged: the restore logs that it skipped it."""
    with FileStore(root, 4096) as store, store.acquire("agg") as lease:
        css = CheckpointedStageState({"n": 1, "pad": "y" * 9000}, lease, codec="msgpack")
        css.checkpoint(step=1)
        css.checkpoint(step=2)
        newest = max(css._slots, key=lambda s: s.header.generation if s.header else -1)
        block = min(newest.blocks - {0, 1})
        data = bytearray(lease.read_block(block))
        data[7] ^= 0x55
        lease.write_block(block, bytes(data))
        lease.flush()
        CheckpointedStageState.restore(lease)


def test_json_lines_carry_the_records_fields(tmp_path: Path, restore_logging) -> None:
    out = io.StringIO()
    configure("json", stream=out)
    _skip_a_generation(tmp_path / "s")
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    skip = next(r for r in lines if r["event"].startswith("restore of") and "skipping" in r["event"])
    assert skip["level"] == "warning" and skip["logger"] == "stages.checkpoint.state"
    assert skip["stage"] == "agg" and skip["generation"] == 2
    assert skip["cause"].startswith("Checksum") or skip["cause"].endswith("Error") or \
        skip["cause"].startswith("Checkpoint")
    assert skip["ts"].endswith("Z") and "T" in skip["ts"]


def test_key_value_lines_are_one_line_each_and_quoted(tmp_path: Path, restore_logging) -> None:
    out = io.StringIO()
    configure("kv", stream=out)
    logging.getLogger("scheduler.watcher").warning("two\nlines \"quoted\"",
                                                   extra={"stage": "a b", "n": 3})
    line = out.getvalue()
    assert line.count("\n") == 1
    assert " level=warning logger=scheduler.watcher " in line
    assert 'stage="a b" n=3 event="two\\nlines \\"quoted\\""' in line
    # Configured twice: still one line per record.
    configure("kv", stream=out)
    logging.getLogger("blockstore.file").warning("once")
    assert out.getvalue().count("event=once") == 1
    with pytest.raises(ValueError, match="'kv' or 'json'"):
        configure("xml")


def test_the_cli_takes_log_format(tmp_path: Path) -> None:
    _ = tmp_path
    env = {**os.environ, "BLOCKPOINT_LOG_FORMAT": "json"}
    code = ("import logging, blockpoint.cli as c, sys; "
            "sys.argv=['blockpoint']; "
            "from blockstore.logs import configure_from_env; configure_from_env(); "
            "logging.getLogger('stages.x').warning('hello', extra={'stage': 's'})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    rec = json.loads(done.stderr.strip().splitlines()[-1])
    assert rec["event"] == "hello" and rec["stage"] == "s" and rec["logger"] == "stages.x"


def test_library_code_never_prints() -> None:
    offenders = []
    for pkg in LIBRARY:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id == "print":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_every_module_logs_through_its_own_logger() -> None:
    """``logging.getLogger(__name__)`` only: each module's logger is a child of its package's."""
    offenders = []
    for pkg in LIBRARY + ("blockpoint",):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "blockstore" / "logs.py":  # configures the package loggers
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "getLogger":
                    args = node.args
                    if not (len(args) == 1 and isinstance(args[0], ast.Name)
                            and args[0].id == "__name__"):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == "logging" \
                        and node.func.attr in {"warning", "info", "error", "exception", "debug"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} (root logger)")
    assert not offenders, offenders


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_a_logged_exception_keeps_its_traceback_on_one_line(fmt: str, restore_logging,
                                                            monkeypatch) -> None:
    """``log.exception`` (a failing metrics listener here) says where it failed; the
    traceback is escaped into the record's one line, and redacted like any error text."""
    from blockstore.metrics import listen, record

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")

    def exporter_that_breaks(name: str, value: float, tags: object) -> None:
        raise RuntimeError("PUT failed: wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")

    out = io.StringIO()
    configure(fmt, stream=out)
    with listen(exporter_that_breaks):
        record("checkpoints_total", 1, stage="x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    if fmt == "json":
        tb = json.loads(lines[0])["traceback"]
    else:
        tb = json.loads(lines[0].split(" traceback=", 1)[1])
    assert tb.startswith("Traceback (most recent call last):")
    assert "in exporter_that_breaks" in tb and "RuntimeError: PUT failed" in tb
    assert "wJalrXUtnFEMI" not in lines[0]
