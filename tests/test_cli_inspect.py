"""``blockpoint inspect STORE``: the lease table, ``--json``, errors, and the installed command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blockpoint.cli import main
from blockstore import StoreCorruptError, open_store
from blockstore.testing import wait_expired

COLUMNS = ["NAME", "ID", "HOLDER", "EPOCH", "BLOCKS", "EXPIRY"]


@pytest.fixture
def populated(store_dir: str) -> dict[str, object]:
    """Leases in every state: held (epoch 2 after a steal), released, expired."""
    with open_store(store_dir, block_size=4096) as st:
        st.acquire("stage-held", holder="worker-1", ttl=3600, num_blocks=4)
        held = st.acquire("stage-held", holder="worker-2", ttl=3600, steal=True)
        st.acquire("stage-released", holder="worker-3", num_blocks=2).release()
        expired = st.acquire("stage-expired", holder="worker-4", ttl=0.01, num_blocks=1)
        wait_expired(expired.acquired_info)
        return {"dir": store_dir, "held_id": held.lease_id, "expired_id": expired.lease_id,
                "infos": {i.name: i for i in st.list_leases()}}


def _table(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def test_table(populated, capsys) -> None:
    assert main(["inspect", populated["dir"]]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *rows = _table(out)
    assert header == COLUMNS
    # Columns are aligned: each header starts where its values start.
    lines = out.splitlines()
    starts = [lines[0].index(c) for c in COLUMNS]
    for line in lines[1:]:
        for s in starts[1:]:
            assert line[s - 2:s] == "  " and line[s] != " "
    by_name = {r[0]: r for r in rows}
    assert list(by_name) == ["stage-expired", "stage-held", "stage-released"]  # sorted
    held = by_name["stage-held"]
    assert held[1:5] == [populated["held_id"], "worker-2", "2", "4"]
    assert held[5] == "in" and 3000 < int(held[6].rstrip("s")) <= 3600
    assert by_name["stage-released"][2:6] == ["-", "1", "2", "released"]
    assert by_name["stage-expired"][1:5] == [populated["expired_id"], "worker-4", "1", "1"]
    assert by_name["stage-expired"][5] == "expired"


def test_json(populated, capsys) -> None:
    assert main(["inspect", "--json", populated["dir"]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in doc] == ["stage-expired", "stage-held", "stage-released"]
    for d in doc:
        assert d == populated["infos"][d["name"]].to_dict()


def test_empty_store(store_dir: str, capsys) -> None:
    open_store(store_dir, block_size=4096).close()
    assert main(["inspect", store_dir]) == 0
    assert "no leases" in capsys.readouterr().out
    assert main(["inspect", "--json", store_dir]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_not_a_store(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing"
    assert main(["inspect", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(missing) in err
    assert not missing.exists()  # inspect never creates a store


def test_corrupt_record_reported_not_raised(populated, capsys) -> None:
    """One damaged record is flagged (exit 1) and does not hide the readable leases."""
    record = Path(populated["dir"]) / "leases" / f"{populated['held_id']}.json"
    record.write_bytes(b"{garbage")
    assert main(["inspect", populated["dir"]]) == 1
    out, err = capsys.readouterr()
    assert str(record) in err and "Traceback" not in err
    rows = {r[1]: r for r in _table(out)[1:]}
    assert rows[populated["held_id"]][-2:] == ["UNREADABLE", "RECORD"]
    names = {r[0] for r in _table(out)[1:]}
    assert {"stage-released", "stage-expired"} <= names
    # Acting on leases still fails closed while a record is damaged.
    with open_store(populated["dir"]) as st, pytest.raises(StoreCorruptError):
        st.list_leases()


def test_inspect_leaves_the_store_unchanged(populated) -> None:
    root = Path(populated["dir"])
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert main(["inspect", str(root)]) == 0
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_installed_command(populated) -> None:
    exe = Path(sys.executable).parent / "blockpoint"
    assert exe.exists(), "the blockpoint entry point is not installed in this environment"
    res = subprocess.run([str(exe), "inspect", populated["dir"]], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    header, *rows = _table(res.stdout)
    assert header == COLUMNS and len(rows) == 3
    res = subprocess.run([str(exe), "inspect", "--json", "file://" + populated["dir"]],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert {d["lease_id"] for d in json.loads(res.stdout)} >= {populated["held_id"]}
    res = subprocess.run([str(exe), "inspect"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "store" in res.stderr  # argparse usage error


def test_control_characters_in_a_record_are_escaped(store_dir: str, capsys) -> None:
    """A name with control characters (refused by acquire, but possible in a record written
    by hand or an older version) is printed escaped: it cannot forge a table row."""
    with open_store(store_dir, block_size=4096) as st:
        lease = st.acquire("plain", holder="w")
        lease_id = lease.lease_id
    record = Path(store_dir) / "leases" / f"{lease_id}.json"
    doc = json.loads(record.read_text())
    doc["name"] = "evil\nforged-row  x  y\x1b[2J"
    doc["holder"] = "h\rx"
    record.write_text(json.dumps(doc))
    assert main(["inspect", store_dir]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "\x1b" not in out and "\r" not in out
    assert "evil\\nforged-row" in lines[1] and "\\x1b[2J" in lines[1] and "h\\rx" in lines[1]


def test_control_characters_in_a_record_are_escaped_by_every_table(store_dir: str,
                                                                   capsys) -> None:
    """The same forged name through ``verify``'s table (and any other ``print_rows`` table):
    escaped, so it neither forges rows nor reaches the terminal as an escape sequence."""
    from stages import CheckpointedStageState

    with open_store(store_dir, block_size=4096) as st, st.acquire("plain", holder="w") as lease:
        CheckpointedStageState({"n": 1}, lease, codec="msgpack").checkpoint(step=1)
        lease_id = lease.lease_id
    record = Path(store_dir) / "leases" / f"{lease_id}.json"
    doc = json.loads(record.read_text())
    doc["name"] = "evil\nforged-row  0  1  ok\x1b]0;owned\x07"
    record.write_text(json.dumps(doc))
    assert main(["verify", store_dir]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "\x1b" not in out and "\x07" not in out
    assert len(lines) == 3 and all(ln.startswith("evil\\nforged-row") for ln in lines[1:])


def test_a_store_path_too_long_for_the_filesystem_is_one_line_and_exit_2(tmp_path: Path,
                                                                        capsys) -> None:
    """ENAMETOOLONG from the store's first look (review attack19b F5: a traceback, exit 1)."""
    long = str(tmp_path / ("x" * 300))
    assert main(["inspect", long]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"blockpoint inspect: cannot open the store at {long}: ")
    assert "too long" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["inspect"], ["verify"], ["gc", "--dry-run"],
                                  ["history"]])
def test_a_memory_store_url_is_refused_by_every_command(argv: list[str], capsys) -> None:
    """A CLI process never sees another's memory store: it had made an empty one and
    reported "no leases" / "ok" (review attack19b F13). One line, exit 2, nothing made."""
    from blockstore import _memory_stores

    name = f"cli-{argv[0]}-never-made"
    args = [*argv, f"memory://{name}"] + (["stage-x"] if argv[0] == "history" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"blockpoint {argv[0]}: memory://{name}: no memory store of that "
                          "name in this process"), err
    assert err.count("\n") == 1, err
    assert name not in _memory_stores


def test_open_store_does_not_make_a_memory_store_when_create_is_false() -> None:
    from blockstore import StorePathError

    with pytest.raises(StorePathError, match="no memory store of that name") as err:
        open_store("memory://never-made-here", create=False)
    assert err.value.path == "memory://never-made-here"
    with open_store("memory://made-here") as st:  # made by this process: found again
        assert open_store("memory://made-here", create=False) is st
