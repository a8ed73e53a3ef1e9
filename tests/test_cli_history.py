"""``blockpoint history STORE LEASE`` and the scheduler status's flush column (issue 22 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockpoint.cli import main
from blockpoint.cli_scheduler import _flush
from blockstore import FileStore
from stages import CheckpointedStageState
from stages.checkpoint.reader import load_map, scan_slots

BS = 4096

pytestmark = pytest.mark.usefixtures("no_env_key")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with FileStore(root, BS) as store, store.acquire("agg") as lease:
        css = CheckpointedStageState({"n": 0, "pad": "x" * 30000}, lease, retention=3,
                                     compression="zstd", incremental=True, codec="msgpack")
        for step in (10, 20, 30):
            css.state["n"] = step
            css.checkpoint(step=step)
    return root


def test_history_lists_retained_generations_oldest_first(store_path: Path, capsys) -> None:
    assert main(["history", str(store_path), "agg"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "3 generation(s) retained" in lines[0]
    header = lines[1].lower().split()
    assert header == ["generation", "step", "written", "took", "size", "stored", "ratio",
                      "kind", "verified"]
    body = [ln for ln in lines[2:] if ln.strip()]
    assert [ln.split()[0] for ln in body] == ["1", "2", "3"]
    assert [ln.split()[1] for ln in body] == ["10", "20", "30"]
    assert "full" in body[0] and "MAC not checked" in body[0]

    assert main(["history", str(store_path), "agg", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["generation"] for r in rows] == [1, 2, 3]
    assert all(r["verified"] and r["duration_s"] > 0 and r["created_at"] > 0 for r in rows)
    assert rows[0]["ratio"] > 5 and rows[0]["mac_checked"] is False


def test_history_names_a_generation_that_no_longer_verifies(store_path: Path, capsys) -> None:
    with FileStore(store_path) as store:
        reader = store.open_reader("agg")
        _, scans = scan_slots(reader)
        h = max((s.header for s in scans if s.header), key=lambda h: h.generation)
        e = load_map(reader, h)[0][-1]
        dat = store_path / "leases" / f"{reader.lease_id}.dat"
    with open(dat, "r+b") as f:
        f.seek(e.block * BS + e.offset)
        byte = f.read(1)
        f.seek(e.block * BS + e.offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert main(["history", str(store_path), "agg"]) == 1
    out = capsys.readouterr().out
    assert "NO: " in out.splitlines()[-1] and out.splitlines()[-1].split()[0] == str(h.generation)


def test_history_of_what_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path,
                                                                  store_path: Path,
                                                                  capsys) -> None:
    assert main(["history", str(tmp_path / "nowhere"), "agg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blockpoint history: ") and len(err.strip().splitlines()) == 1
    assert main(["history", str(store_path), "missing"]) == 2
    assert "missing" in capsys.readouterr().err


def test_scheduler_status_flush_column() -> None:
    assert _flush({"flushing_since": 100.0, "checkpoint_s": 0.5}, now=103.4) == "flushing 3s"
    assert _flush({"flushing_since": None, "checkpoint_s": 0.25}, now=0) == "0.25s"
    assert _flush({}, now=0) == "-"


def _forge_times(store_path: Path, created_at: float, duration_s: float) -> None:
    """Rewrite the newest header's time fields and re-seal its CRC (what anyone who can write
    an unkeyed store can do)."""
    import struct

    from blockstore.checksum import crc32c
    from stages.checkpoint.format import CRC_OFFSET

    with FileStore(store_path) as store:
        reader = store.open_reader("agg")
        _, scans = scan_slots(reader)
        s = max((s for s in scans if s.header), key=lambda s: s.header.generation)
        dat = store_path / "leases" / f"{reader.lease_id}.dat"
    with open(dat, "r+b") as f:
        f.seek(s.slot * BS)
        head = bytearray(f.read(s.header.header_length))
        struct.pack_into("<dd", head, 32, created_at, duration_s)
        head[CRC_OFFSET:CRC_OFFSET + 4] = bytes(4)
        struct.pack_into("<I", head, CRC_OFFSET, crc32c(head))
        f.seek(s.slot * BS)
        f.write(head)


@pytest.mark.parametrize("created_at,duration_s", [(1e300, 1.0), (float("nan"), float("nan")),
                                                   (-1e20, -5.0), (float("inf"), float("-inf"))])
def test_history_of_a_header_with_impossible_times_shows_question_marks(
        store_path: Path, capsys, created_at: float, duration_s: float) -> None:
    _forge_times(store_path, created_at, duration_s)
    assert main(["history", str(store_path), "agg"]) == 0
    newest = capsys.readouterr().out.splitlines()[-1].split()
    assert newest[0] == "3" and newest[2] == "?", newest  # the written time
    bad_duration = not duration_s >= 0 or duration_s == float("inf")
    assert (newest[3] == "?") == bad_duration, newest

    assert main(["history", str(store_path), "agg", "--json"]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    rows = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert rows[-1]["generation"] == 3 and rows[-1]["created_at"] in (None, created_at)


@pytest.fixture(params=["file", "s3"])
def live_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return str(tmp_path / "live")
    server = request.getfixturevalue("s3_server")
    return server.url(f"live-{tmp_path.name}")


def test_verify_of_a_live_lease_reports_a_recycled_generation_not_corruption(
        live_store_url: str, capsys) -> None:
    """The stage checkpoints while the lease is verified: the oldest generation is dropped
    (its slot erased, its blocks reused) between the scan and the read of its data."""
    from blockstore import open_store
    from blockstore.work import watch
    from stages import verify_lease

    with open_store(live_store_url, block_size=BS) as store, store.acquire("agg") as lease:
        css = CheckpointedStageState({"n": 0, "pad": bytes(range(256)) * 40}, lease,
                                     retention=2, codec="msgpack", compression="none")
        for step in (1, 2):
            css.state["n"] = step
            css.checkpoint(step=step)
        _, scans = scan_slots(lease)
        newest = max(s.header.stored_bytes for s in scans if s.header)
        read: list[int] = []
        recycled: list[bool] = []

        def checkpoint_meanwhile(kind: str, n: int) -> None:
            if kind != "verify_bytes":
                return
            read.append(n)
            if sum(read) >= newest and not recycled:  # generation 2 read; 1 is next
                recycled.append(True)
                css.state["n"] = 3
                css.state["pad"] = bytes(reversed(range(256))) * 40
                css.checkpoint(step=3)

        with watch(checkpoint_meanwhile):
            reports = verify_lease(store.open_reader("agg"))
        by_gen = {r.generation: r for r in reports}
        assert recycled and by_gen[2].ok
        assert by_gen[1].status.startswith("recycled: generation 1"), by_gen[1].status
        assert not any(r.corrupt for r in reports)
        assert main(["history", live_store_url, "agg"]) == 0


def test_history_of_a_store_path_too_long_for_the_filesystem(tmp_path: Path, capsys) -> None:
    """ENAMETOOLONG: one line, exit 2 (review attack19b F5: a traceback, exit 1)."""
    assert main(["history", str(tmp_path / ("x" * 300)), "agg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blockpoint history: cannot open the store at ") and "too long" in err
    assert err.count("\n") == 1, err
