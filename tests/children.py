"""A writer in a child process, killed with SIGKILL part-way through its work.

The crash tests that need a real process death (not an injected exception) share this
shape: start a script that checkpoints in a loop and prints one line per durable commit,
wait for the line that says the moment to kill has come, SIGKILL it somewhere after that,
and hand back every line it printed. What the lines mean is the test's business.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["kill_child_writer"]


def kill_child_writer(script: str, root: Path, *, ready: Callable[[list[str]], bool],
                      rng: random.Random, max_delay: float) -> list[str]:
    """Run ``script`` (``python -c``) with ``root`` as its argument; once ``ready(lines)`` holds
    for the lines printed so far, SIGKILL it after a random delay up to ``max_delay`` seconds
    (a kill point, not a wait for a condition) and return every line it printed.

    The child sees the repository first on its path, so it runs the code under test.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not ready(lines):
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"the child ended before it was ready: {lines!r}, "
                                     f"exit {proc.wait()}")
            lines.append(line.strip())
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        lines += [x.strip() for x in proc.stdout.read().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return [x for x in lines if x]
