"""A key file that came through Ray is refused (review 19, R12).

Ray uploads a runtime env's ``working_dir`` as a zip into its GCS internal KV - readable by
any client of the cluster - and unpacks it on the node keeping the file modes, so a ``0600``
key file in the project directory passed the mode check, and a relative
``$BLOCKPOINT_CHECKPOINT_KEY_FILE`` resolved in the worker's cwd (the unpacked working dir).
The key file exists to keep the key out of Ray: a relative path is refused, and so is an
absolute one inside a package Ray unpacked. A real driver process on the suite's local Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.ray

KEY = "wd-key-SECRET-shipped"

DRIVER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, runtime_env={
    "working_dir": sys.argv[2],
    "env_vars": {"BLOCKPOINT_CHECKPOINT_KEY_FILE": "checkpoint_key"}})

@ray.remote(num_cpus=0, max_retries=0)
def view():
    from blockstore import KeyFileError
    from blockstore.keys import read_key_file, resolve_keys
    out = []
    for attempt in (resolve_keys, lambda: read_key_file(os.path.abspath("checkpoint_key"))):
        try:
            out.append("accepted" if attempt() is not None else "no key")
        except KeyFileError as exc:
            out.append("refused: " + str(exc))
    return out

for line in ray.get(view.remote(), timeout=120):
    print("RESULT", line)
"""


def test_a_key_file_shipped_in_the_working_dir_is_refused(ray_local: None,
                                                          tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    fd = os.open(proj / "checkpoint_key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (KEY + "\n").encode())
    os.close(fd)
    (proj / "pipeline.py").write_text("# the user's code\n")
    env = {k: v for k, v in os.environ.items() if k != "BLOCKPOINT_CHECKPOINT_KEY"}
    gcs = ray.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, "-c", DRIVER, gcs, str(proj)],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 2, (out.stdout + out.stderr)[-3000:]
    relative, absolute = lines
    assert relative.startswith("RESULT refused") and "not an absolute path" in relative, relative
    assert absolute.startswith("RESULT refused") and "Ray unpacked" in absolute, absolute
    assert KEY not in out.stdout + out.stderr
