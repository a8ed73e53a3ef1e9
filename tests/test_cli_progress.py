"""Progress on a terminal, never in pipes or ``--json`` (issue 22 item 4), through a real pty."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from blockstore import FileStore
from stages import CheckpointedStageState


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with FileStore(root, 1 << 16) as store:
        for name in ("a", "b"):
            with store.acquire(name) as lease:
                css = CheckpointedStageState({"w": np.random.default_rng(1).random(400_000)},
                                             lease, codec="msgpack")
                css.checkpoint(step=1)
    return root


def _run_on_pty(args: list[str]) -> tuple[int, bytes, bytes]:
    """Run ``blockpoint ARGS`` with stderr on a pseudo-terminal, stdout on a pipe."""
    master, slave = pty.openpty()
    # A new pty is 0 x 0 characters; a person's terminal is not (tqdm draws to its width).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("BLOCKPOINT_PROGRESS", None)
    env.pop("BLOCKPOINT_CHECKPOINT_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "blockpoint", *args], stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output from blockpoint {args} in 60 s")
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = proc.stdout.read() if proc.stdout else b""
    rc = proc.wait(timeout=60)
    os.close(master)
    return rc, out, err


def test_verify_shows_a_bar_on_a_terminal(store_path: Path) -> None:
    rc, out, err = _run_on_pty(["verify", str(store_path)])
    assert rc == 0, err
    assert b"verify" in err and b"%" in err and b"\r" in err, err
    assert b"ok" in out and b"%" not in out


def test_json_and_pipes_never_carry_a_bar(store_path: Path) -> None:
    rc, out, err = _run_on_pty(["verify", str(store_path), "--json"])
    assert rc == 0 and b"%|" not in err and b"\r" not in err, err
    rows = json.loads(out)
    assert {r["lease"] for r in rows} == {"a", "b"}
    # Not a terminal at all: nothing but the table.
    done = subprocess.run([sys.executable, "-m", "blockpoint", "verify", str(store_path)],
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stderr == b"", done.stderr
