"""``blockpoint verify STORE [LEASE]``: table, JSON, exit status; once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blockpoint.cli import main
from blockstore import FileStore
from stages import CheckpointedStageState
from stages.checkpoint.reader import load_map, scan_slots

BS = 4096

pytestmark = pytest.mark.usefixtures("no_env_key")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with FileStore(root, BS) as store:
        with store.acquire("alpha") as lease:
            css = CheckpointedStageState({"w": np.random.default_rng(0).random(4000)}, lease)
            css.checkpoint(step=1)
            css.checkpoint(step=2)
        with store.acquire("registry", num_blocks=2) as other:  # not a checkpoint lease
            other.write_blocks({0: b'{"not": "a checkpoint"}'})
            other.flush()
        with store.acquire("mac") as lease:
            CheckpointedStageState({"v": 1}, lease, key=b"sekrit").checkpoint()
    return root


def _corrupt_newest_data_block(root: Path, name: str) -> int:
    with FileStore(root) as store:
        reader = store.open_reader(name)
        _, scans = scan_slots(reader)
        h = max((s.header for s in scans if s.header), key=lambda h: h.generation)
        entries, _ = load_map(reader, h)
        e = entries[-1]
        dat = root / "leases" / f"{reader.lease_id}.dat"
    with open(dat, "r+b") as f:
        f.seek(e.block * BS + e.offset)
        b = f.read(1)
        f.seek(e.block * BS + e.offset)
        f.write(bytes([b[0] ^ 0x10]))
    return e.block


def test_verify_table_ok(store_path: Path, capsys) -> None:
    assert main(["verify", str(store_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["LEASE", "SLOT", "GENERATION", "STEP", "SIZE", "CODEC", "RATIO",
                                "SHARED", "STATUS"]
    alpha = [ln for ln in lines if ln.startswith("alpha")]
    assert len(alpha) == 2 and all(ln.rstrip().endswith("ok") for ln in alpha)
    assert any(ln.startswith("registry") and "not a checkpoint" in ln for ln in lines)


def test_verify_detects_corruption_and_json(store_path: Path, capsys) -> None:
    block = _corrupt_newest_data_block(store_path, "alpha")
    assert main(["verify", str(store_path)]) == 1
    capsys.readouterr()
    assert main(["verify", str(store_path), "alpha", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["generation"] for r in rows] == [2, 1]
    assert rows[0]["block"] == block and "CRC" in rows[0]["status"]
    assert rows[1]["status"] == "ok"


def test_verify_one_lease_and_errors(store_path: Path, tmp_path: Path, capsys) -> None:
    assert main(["verify", str(store_path), "registry"]) == 0
    assert "not a checkpoint" in capsys.readouterr().out
    assert main(["verify", str(store_path), "nope"]) == 2
    assert main(["verify", str(tmp_path / "missing")]) == 2


def test_verify_with_key(store_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MY_KEY", "sekrit")
    assert main(["verify", str(store_path), "mac", "--key-env", "MY_KEY"]) == 0
    monkeypatch.setenv("MY_KEY", "sekrit\n")  # stripped, as a key file line (review 19, F2)
    assert main(["verify", str(store_path), "mac", "--key-env", "MY_KEY"]) == 0
    monkeypatch.setenv("MY_KEY", "wrong")
    assert main(["verify", str(store_path), "mac", "--key-env", "MY_KEY"]) == 1
    assert "MAC mismatch" in capsys.readouterr().out


def test_verify_refuses_a_key_that_is_not_utf8(store_path: Path, monkeypatch, capsys) -> None:
    bad = os.fsdecode(b"sek\xffrit")
    monkeypatch.setenv("MY_KEY", bad)
    assert main(["verify", str(store_path), "mac", "--key-env", "MY_KEY"]) == 2
    monkeypatch.delenv("MY_KEY")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", bad)
    assert main(["verify", str(store_path), "mac"]) == 2
    err = capsys.readouterr().err
    assert "$MY_KEY" in err and "BLOCKPOINT_CHECKPOINT_KEY" in err and "UTF-8" in err
    assert "sek" not in err


def test_verify_accepts_rotated_out_keys(store_path: Path, monkeypatch, capsys) -> None:
    # After a key rotation the old generations carry MACs of the old key: verify must check
    # them against $BLOCKPOINT_CHECKPOINT_OLD_KEYS like restore does, not call them corrupt.
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "the-new-key")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", "older,sekrit")
    assert main(["verify", str(store_path), "mac"]) == 0
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", "older")
    assert main(["verify", str(store_path), "mac"]) == 1
    assert "MAC mismatch" in capsys.readouterr().out
    monkeypatch.setenv("MY_KEY", "the-new-key")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", "sekrit")
    assert main(["verify", str(store_path), "mac", "--key-env", "MY_KEY"]) == 0
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY")
    assert main(["verify", str(store_path), "mac"]) == 2  # old keys without a current one
    assert "OLD_KEYS" in capsys.readouterr().err


def test_verify_as_a_subprocess(store_path: Path) -> None:
    exe = Path(sys.executable).with_name("blockpoint")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "blockpoint.cli"]
    env = {k: v for k, v in os.environ.items() if k != "BLOCKPOINT_CHECKPOINT_KEY"}
    ok = subprocess.run([*cmd, "verify", str(store_path), "--json"], capture_output=True,
                        text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert {r["lease"] for r in rows} == {"alpha", "registry", "mac"}
    _corrupt_newest_data_block(store_path, "alpha")
    bad = subprocess.run([*cmd, "verify", str(store_path)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 1 and "CRC" in bad.stdout


def _blockpoint(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("blockpoint")
    env = env if env is not None else {k: v for k, v in os.environ.items()
                                       if not k.startswith("BLOCKPOINT_CHECKPOINT")}
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("url, says", [
    ("s3://Bad_Bucket/x", "bad store URL 's3://Bad_Bucket/x': bucket:"),
    ("ftp://host/x", "unknown scheme 'ftp'"),
    ("s3:/bucket/x", "did you mean 's3://bucket/x'?"),
])
def test_verify_bad_url_is_one_line_and_exit_2(url: str, says: str) -> None:
    """A bad store URL was a traceback and exit 1 (the corruption status): now one line, 2."""
    proc = _blockpoint("verify", url)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("blockpoint verify: ") and says in proc.stderr


def test_verify_unreachable_store_is_one_line_and_exit_2() -> None:
    """An object store nobody answers for (a loopback port with no server, one retry)."""
    from s3server import free_port

    url = f"s3://bucket-1/x?endpoint_url=http://127.0.0.1:{free_port()}&retries=0&region=us-east-1"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLOCKPOINT_CHECKPOINT")},
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = _blockpoint("verify", url, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("blockpoint verify: ")


def test_verify_without_key_says_macs_not_checked(store_path: Path) -> None:
    """``mac`` carries a MAC; without a key its row said ``ok`` as if it had been checked."""
    proc = _blockpoint("verify", str(store_path))
    assert proc.returncode == 0, proc.stderr
    rows = [ln.rstrip() for ln in proc.stdout.splitlines()[1:]]
    mac = [ln for ln in rows if ln.startswith("mac ") and " empty" not in ln]
    assert len(mac) == 1 and mac[0].endswith("ok, MAC not checked (no key)"), proc.stdout
    alpha = [ln for ln in rows if ln.startswith("alpha ")]
    assert alpha and all(ln.endswith(" ok") for ln in alpha)  # no MAC: nothing unchecked
    assert "1 generation(s) carry a MAC that was NOT checked - no key is set" in proc.stderr
    as_json = json.loads(_blockpoint("verify", str(store_path), "mac", "--json").stdout)
    assert [(r["has_mac"], r["mac_checked"]) for r in as_json
            if r["status"] == "ok"] == [(True, False)]
    env = {**os.environ, "BLOCKPOINT_CHECKPOINT_KEY": "sekrit"}
    keyed = _blockpoint("verify", str(store_path), "mac", env=env)
    assert keyed.returncode == 0 and keyed.stderr == "", keyed.stderr
    assert keyed.stdout.splitlines()[1].rstrip().endswith(" ok")


def test_verify_reports_an_unreadable_record_and_verifies_the_rest(store_path: Path,
                                                                   capsys) -> None:
    """One lease record unreadable: every other lease is still verified, the bad record is
    a row naming its file, and the exit status says something is wrong."""
    with FileStore(store_path) as store:
        record = store_path / "leases" / f"{store.lease_info('registry').lease_id}.json"
    record.write_bytes(b"{truncated")
    capsys.readouterr()
    assert main(["verify", str(store_path)]) == 1
    out, err = capsys.readouterr()
    assert f"UNREADABLE RECORD {record}" in out and str(record) in err
    assert out.count("alpha") >= 2 and "mac" in out  # the others verified, not hidden
    assert main(["verify", str(store_path), "alpha"]) == 0  # by name: still found


def test_verify_max_state_bytes_flag(store_path: Path, capsys) -> None:
    """``--max-state-bytes N`` applies a restore's bound: a generation declaring more state
    fails ('not read: ...', exit 1) without its payload being read; a bound it fits is ok.
    (There was no way to give the bound to ``verify``.)"""
    assert main(["verify", str(store_path), "alpha", "--max-state-bytes", "1000",
                 "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["status"].startswith("not read: ") for r in rows)
    assert all("max_state_bytes" in r["status"] for r in rows)
    assert main(["verify", str(store_path), "alpha", "--max-state-bytes", "1_000_000"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["verify", str(store_path), "--max-state-bytes", "-1"])
    assert e.value.code == 2
    assert "must be >= 0" in capsys.readouterr().err


def test_verify_of_a_store_path_too_long_for_the_filesystem(tmp_path: Path, capsys) -> None:
    """ENAMETOOLONG: one line, exit 2 (review attack19b F5: a traceback, exit 1)."""
    assert main(["verify", str(tmp_path / ("x" * 300))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blockpoint verify: cannot open the store at ") and "too long" in err
    assert err.count("\n") == 1, err


def test_verify_key_env_that_is_no_variable_name_is_not_echoed(store_path: Path, monkeypatch,
                                                               capsys) -> None:
    """``--key-env "$KEY"`` (the key pasted where its variable's name goes) printed the key
    in "$<key> is not set" (review attack19b F6): refused, its length shown, not the value;
    ``--key-env ''`` verified without a key and an empty LEASE widened to every lease (exit
    0): both refused, exit 2."""
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)
    pasted = "k3y-Zm9vYmFyYmF6cXV1eA"
    assert main(["verify", str(store_path), "--key-env", pasted]) == 2
    out, err = capsys.readouterr()
    assert pasted not in out + err and "Zm9v" not in out + err
    assert err.startswith("blockpoint verify: --key-env takes the name of the environment "
                          "variable") and f"<{len(pasted)} characters, not shown>" in err
    assert err.count("\n") == 1, err
    assert main(["verify", str(store_path), "--key-env", ""]) == 2
    assert capsys.readouterr().err.startswith("blockpoint verify: --key-env is empty")
    assert main(["verify", str(store_path), ""]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("blockpoint verify: the LEASE argument is empty") and not out
    assert main(["verify", str(store_path), "--key-env", "NO_SUCH_VAR_19"]) == 2  # a name
    assert "$NO_SUCH_VAR_19 is not set" in capsys.readouterr().err
    # a key that happens to be a valid variable name (base64 without + or /) and is unset:
    # it was echoed as "$<key> is not set"
    pasted = "Zm9vYmFyYmF6cXV1eGtleTE2"
    assert main(["verify", str(store_path), "--key-env", pasted]) == 2
    out, err = capsys.readouterr()
    assert pasted not in out + err and "Zm9v" not in out + err
    assert err.startswith("blockpoint verify: the variable --key-env names (<24 characters, "
                          "not shown>) is not set") and err.count("\n") == 1, err
    # an all-capitals base32 key (no "_", longer than a name is written) was echoed too
    pasted = "MZXW6YTBOJRGC6TROV2XQ22FPEYTM"
    assert main(["verify", str(store_path), "--key-env", pasted]) == 2
    out, err = capsys.readouterr()
    assert pasted not in out + err and "MZXW" not in out + err
    assert "(<29 characters, not shown>) is not set" in err
    assert main(["verify", str(store_path), "--key-env", "NOKEY"]) == 2  # short: a name
    assert "$NOKEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("my_key_19", "x" * 32)  # set, in any case: used (wrong key: exit 1)
    assert main(["verify", str(store_path), "--key-env", "my_key_19"]) != 2
    capsys.readouterr()
