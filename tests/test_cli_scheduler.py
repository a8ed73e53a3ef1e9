"""``blockpoint scheduler decisions`` rows, without a cluster: the table is built from the
decision log's dicts (``scheduler/decisions.py``, ``Decision.to_dict``), whatever they lack.
The command against a live scheduler is in ``tests/test_scheduler_local.py``."""

from __future__ import annotations

import io
import time

import pytest

from blockpoint.cli_scheduler import decision_rows
from blockpoint.table import local_time, print_rows
from scheduler.decisions import DecisionLog


def test_a_decision_without_at_is_printed_with_a_placeholder() -> None:
    """An entry of a persisted registry without ``at`` (older version, damaged or edited
    document) raised ``KeyError`` and hid the whole log; it is a row with ``?`` now."""
    log = DecisionLog()
    good = log.record("preempt", "ready", reason="spot notice node-3", victims=["a", "b"],
                      notes={"a": "killed: no time"}).to_dict()
    no_at = dict(good, seq=good["seq"] + 1)
    del no_at["at"]
    odd = {"seq": 9, "at": float("nan"), "kind": "drain", "outcome": "done",
           "plan": {"candidates": [{"verdict": "chosen"}]}, "notes": [["x"]]}
    bare: dict[str, object] = {}
    rows = decision_rows([good, no_at, odd, bare])
    assert [r["time"] for r in rows] == [local_time(good["at"], "%H:%M:%S"), "?", "?", "?"]
    assert rows[0]["time"] == time.strftime("%H:%M:%S", time.localtime(good["at"]))
    assert rows[1]["kind"] == "preempt" and rows[1]["stages"] == "a,b"
    assert rows[1]["notes"] == "a: killed: no time"
    assert rows[2]["notes"] == "?: ['x']"
    assert (rows[3]["seq"], rows[3]["kind"], rows[3]["outcome"]) == ("?", "?", "?")
    out = io.StringIO()
    print_rows(rows, ["seq", "time", "kind", "outcome", "reason", "stages", "notes"], out=out)
    assert len(out.getvalue().splitlines()) == 5


def test_a_password_in_the_address_is_never_shown() -> None:
    """``scheduler status --address user:pw@host:port`` that cannot be reached: one line,
    exit 2, the user information masked (review attack19b F3: printed whole)."""
    import os
    import subprocess
    import sys

    secret = "Pa55w0rd-SECRET"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "blockpoint", "scheduler", "status",
                           "--address", f"user:{secret}@127.0.0.1:1"],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.startswith("blockpoint scheduler: cannot reach Ray at ***@127.0.0.1:1: ")


def test_a_password_in_ray_address_read_by_auto_is_never_shown() -> None:
    """``--address auto`` (the default) reads ``$RAY_ADDRESS``: one with ``user:pw@`` made
    Ray raise ``ValueError: Invalid address format: <the address>`` - a traceback with the
    password, exit 1. Now one line, exit 2, the user information masked."""
    import os
    import subprocess
    import sys

    secret = "Pa55w0rd-SECRET"
    env = dict(os.environ, RAY_ADDRESS=f"user:{secret}@127.0.0.1:1")
    proc = subprocess.run([sys.executable, "-m", "blockpoint", "scheduler", "status"],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stderr.startswith("blockpoint scheduler: cannot reach Ray at auto "
                                  "($RAY_ADDRESS=***@127.0.0.1:1): "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_every_form_of_a_password_in_a_ray_address_is_masked() -> None:
    """``redact_ray_address`` (the scheduler CLI and the demo's attach): user information
    before the last ``@`` - with a ``?`` or ``#`` in the password, without a port, under a
    scheme - and the password alone are spans; ``auto`` shows and masks $RAY_ADDRESS
    (review of the 19b fixes: a portless address, a ``?`` in a password and ``auto`` in the
    demo showed the password)."""
    import os

    from blockstore.redact import redact_ray_address, redact_text

    for address, shown, pw in (
            ("user:pw-SECRET@127.0.0.1:1", "***@127.0.0.1:1", "pw-SECRET"),
            ("user:pw-SECRET@127.0.0.1", "***@127.0.0.1", "pw-SECRET"),
            ("admin:AAA?pw-SECRET#x@h:6379", "***@h:6379", "AAA?pw-SECRET#x"),
            ("redis://:pw-SECRET@h:6379", "redis://***@h:6379", "pw-SECRET"),
            ("ray://u:pw-SECRET@h:10001", "ray://***@h:10001", "pw-SECRET"),
            ("h:6379?password=pw-SECRET", "h:6379?password=***", "pw-SECRET")):
        got, spans = redact_ray_address(address)
        assert got == shown, address
        for text in (address, f"Unable to parse port number from {pw}@127.0.0.1",
                     f"invalid literal for int() with base 10: '{pw}@127.0.0.1'"):
            assert "pw-SECRET" not in redact_text(text, spans), (address, text)
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "redis://:pw-SECRET@h:6379"
    try:
        got, spans = redact_ray_address("auto")
        assert got == "auto ($RAY_ADDRESS=redis://***@h:6379)"
        assert "pw-SECRET" not in redact_text("Address: redis://:pw-SECRET@h:6379", spans)
    finally:
        if old is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = old


@pytest.mark.parametrize("where", ["env", "arg"])
def test_a_redis_address_with_a_password_is_one_masked_line(where: str) -> None:
    """Ray refuses ``redis://`` with ``RuntimeError: Module: redis does not exist. This
    module was parsed from Address: <it, whole>``: that was a 39-line traceback with the
    password, exit 1. Now one line, exit 2, masked."""
    import os
    import subprocess
    import sys

    secret = "Pa55w0rd-SECRET"
    address = f"redis://:{secret}@127.0.0.1:1"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    argv = [sys.executable, "-m", "blockpoint", "scheduler", "status"]
    if where == "env":
        env["RAY_ADDRESS"] = address
    else:
        argv += ["--address", address]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "redis://***@127.0.0.1:1" in proc.stderr, proc.stderr
