"""``blockpoint gc STORE``: table, ``--json``, ``--dry-run``, errors; live leases untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blockpoint.cli import main
from blockstore import StoreConfigError, open_store

BS = 4096
ORPHAN = "0123456789abcdef0123456789abcdef"


def _store_with_orphan(root: Path) -> str:
    with open_store(root, block_size=BS) as st:
        lease = st.acquire("live", num_blocks=2)
        lease.write_blocks({0: b"live data", 1: b"more"})
        lease.flush()
        live = lease.lease_id
    leases = root / "leases"
    # What a crash inside delete_lease leaves: data and lock, no record.
    shutil.copy(leases / f"{live}.dat", leases / f"{ORPHAN}.dat")
    (leases / f"{ORPHAN}.lock").touch()
    return live


def test_gc_table_and_dry_run(tmp_path: Path, capsys) -> None:
    root = tmp_path / "s"
    live = _store_with_orphan(root)
    assert main(["gc", str(root), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["PATH", "KIND", "LEASE", "SIZE"]
    assert f"{ORPHAN}.dat" in out and "orphan data" in out and "would free" in err
    assert (root / "leases" / f"{ORPHAN}.dat").exists()
    assert main(["gc", str(root)]) == 0
    out, err = capsys.readouterr()
    assert "orphan lock" in out and "1 live lease(s) kept" in err
    names = sorted(p.name for p in (root / "leases").iterdir())
    assert names == sorted(f"{live}.{ext}" for ext in ("dat", "json", "lock"))
    with open_store(root) as st:
        assert st.open_reader("live").read_block(0)[:9] == b"live data"
    assert main(["gc", str(root)]) == 0
    assert "nothing to collect" in capsys.readouterr().out


def test_gc_json(tmp_path: Path, capsys) -> None:
    root = tmp_path / "s"
    _store_with_orphan(root)
    assert main(["gc", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["kind"], r["lease_id"], r["removed"]) for r in rows) == [
        ("orphan data", ORPHAN, True), ("orphan lock", ORPHAN, True)]
    assert all(Path(r["path"]).parent == root / "leases" for r in rows)


def test_gc_of_something_that_is_not_a_store(tmp_path: Path, capsys) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("not a store")
    assert main(["gc", str(tmp_path / "x")]) == 2
    assert "not a blockpoint store" in capsys.readouterr().err


def test_gc_of_a_store_path_too_long_for_the_filesystem(tmp_path: Path, capsys) -> None:
    """ENAMETOOLONG: one line, exit 2 (review attack19b F5: a traceback, exit 1)."""
    assert main(["gc", str(tmp_path / ("x" * 300)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blockpoint gc: cannot open the store at ") and "too long" in err
    assert err.count("\n") == 1, err


def test_gc_refuses_a_min_age_that_is_not_a_finite_age(tmp_path: Path, capsys) -> None:
    """``--min-age nan`` compared false with every age and removed the temporary file of a
    write in progress (review attack19b F7); nan, inf and negative ages: one line, exit 2,
    nothing removed."""
    root = tmp_path / "s"
    _store_with_orphan(root)
    fresh = root / "leases" / f".{'ab' * 16}.json.4242.1.tmp"  # a record write, just now
    fresh.touch()
    for bad in ("nan", "inf", "-inf", "-1"):
        assert main(["gc", str(root), f"--min-age={bad}"]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("blockpoint gc: --min-age must be a finite number of seconds "
                              ">= 0, not ") and err.count("\n") == 1, err
    assert fresh.exists() and (root / "leases" / f"{ORPHAN}.dat").exists()
    assert main(["gc", str(root), "--dry-run"]) == 0          # the default still runs
    assert fresh.name not in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["file", "memory://gc-min-age"])
def test_store_gc_refuses_a_min_age_that_is_not_a_finite_age(tmp_path: Path, spec: str) -> None:
    """The library's ``BlockStore.gc`` as the CLI: ``min_age=nan`` had been accepted (and
    would count a write in progress as old)."""
    root = tmp_path / "s"
    if spec == "file":
        _store_with_orphan(root)
    with open_store(str(root) if spec == "file" else spec) as st:
        for bad in (float("nan"), float("inf"), -1.0):
            with pytest.raises(StoreConfigError, match="finite number of seconds >= 0"):
                st.gc(min_age=bad)
        st.gc(dry_run=True, min_age=0)
    if spec == "file":
        assert (root / "leases" / f"{ORPHAN}.dat").exists()
