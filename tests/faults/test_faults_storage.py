"""Fault matrix, storage rows: a 64-block checkpoint under every storage fault we can cause.

Every row starts from the same template: a file store (4 KiB blocks) whose lease ``stage``
holds two committed generations, A (step 1) and B (step 2), each a 64-block checkpoint
(incompressible data, a spilled block map). Then a fault hits while generation C (step 3) is
written, or hits B's bytes at rest. Whatever the fault, every case checks the same outcome:

* ``restore`` returns A, B or C **complete and equal** - never a mix, never wrong state -
  or raises a specific error (``CheckpointCorrupt`` and its subclasses, ``NoCheckpointError``)
  where nothing verifies; a fault while writing surfaces as ``CheckpointFailed``;
* committed generations that the fault did not touch are still restorable;
* the writer (or a new holder) can checkpoint again afterwards.

======================  ============================================  ======================
row                     cases: default (``--faults-full``)            outcome, every case
======================  ============================================  ======================
crash at a block write  each of the 68 block writes, plain and torn   old (B) or new (C),
                        (136)                                         complete
crash at a flush        each of the 2 flushes (2)                     B or C, complete
SIGKILL of a writer     8 kills at random points (24), each of a      the last printed step
                        real process that had committed               or the next, complete
bit flip at rest        the 176 fixed header bytes whole, 192 more    detected, restore falls
                        header/map bytes, 16 bytes of each of the 65  back to A and says so;
                        data chunks: ~1,600 flips, one bit each       never wrong state
                        (every bit of all 266,682 covered bytes)
truncation              the data file cut at each of its 134 block    newest intact one, or
                        boundaries (134)                              a specific error
ENOSPC, EIO, EROFS on   at each of the 4 write calls, per error (12)  CheckpointFailed, B
a write                                                               intact, writer goes on
ENOSPC, EIO on a flush  at each of the 2 flushes, per error (4)       CheckpointFailed (after
                                                                      the header: Commit-
                                                                      Unknown); B or C
read-only store         writes and flushes refused (EROFS) (1)        CheckpointFailed, B
                                                                      intact, writer goes on
store dir removed       under a writer holding the lease (1)          CheckpointFailed
======================  ============================================  ======================

(Root ignores file modes, so "read-only" is injected as ``EROFS`` by
:class:`blockstore.faults.FaultyStore`, as are ``ENOSPC`` and ``EIO``.) The cross-process
rows (zombie after takeover, frozen writer) live in ``tests/test_store_crossprocess.py`` and
``tests/test_store_defects.py``; ``docs/RELIABILITY.md`` has the whole matrix.
"""

from __future__ import annotations

import errno
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blockstore import FileStore
from blockstore.faults import FaultyStore, InjectedCrash
from stages import (
    CheckpointCommitUnknown,
    CheckpointCorrupt,
    CheckpointedStageState,
    CheckpointFailed,
    NoCheckpointError,
)
from stages.checkpoint import format as fmt
from stages.checkpoint.reader import load_map, scan_slots

BS = 4096
DATA_BLOCKS = 64  # + pickle framing and a spilled map: a checkpoint of 65+ blocks
#: Metadata big enough that the block map spills into map blocks (so map blocks are tested).
META = {"pad": "m" * 2000}


def _state(step: int) -> dict[str, Any]:
    rng = np.random.default_rng(step)
    return {"step": step, "data": rng.integers(0, 256, DATA_BLOCKS * BS, dtype=np.uint8)}


def _is(state: Any, step: int) -> bool:
    want = _state(step)
    return state["step"] == step and np.array_equal(state["data"], want["data"])


def _restored_step(root: Path) -> int | None:
    """The step a fresh process restores (None: no checkpoint); asserts it is complete."""
    with FileStore(root) as store:
        try:
            back = CheckpointedStageState.restore(store.open_reader("stage"))
        except NoCheckpointError:
            return None
    step = back.state["step"]
    assert _is(back.state, step), f"restored step {step} is not complete and equal"
    return step


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "template"
    store = FileStore(root, BS)
    lease = store.acquire("stage")
    css = CheckpointedStageState(_state(1), lease, compression="none")
    css.checkpoint(step=1, meta=META)
    css.state = _state(2)
    info = css.checkpoint(step=2, meta=META)
    assert info.blocks >= 64, info
    lease.release()
    store.close()
    return root


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def _write_c(root: Path, arm: Any) -> tuple[BaseException | None, FaultyStore]:
    """Open the copy as the writer, arm the fault, try to commit C (step 3)."""
    faulty = FaultyStore(FileStore(root))
    lease = faulty.acquire("stage", steal=True)
    css = CheckpointedStageState.restore(lease, compression="none")
    assert _is(css.state, 2)
    css.state = _state(3)
    faulty.block_writes = faulty.flushes = faulty.write_calls = 0
    arm(faulty)
    error: BaseException | None = None
    try:
        css.checkpoint(step=3, meta=META)
    except CheckpointFailed as exc:
        error = exc
    faulty.crash_after(None)
    faulty.crash_on_flush(None)
    faulty.fail_io("write", None)
    faulty.fail_io("flush", None)
    # The writer goes on once the fault is gone: step 4 commits and restores.
    css.state = _state(4)
    css.checkpoint(step=4, meta=META)
    faulty.close()
    return error, faulty


def _count_writes(template: Path, tmp: Path) -> FaultyStore:
    """Block writes, write calls and flushes of committing C without a fault."""
    faulty = FaultyStore(FileStore(_copy(template, tmp / "count")))
    lease = faulty.acquire("stage", steal=True)
    css = CheckpointedStageState.restore(lease, compression="none")
    css.state = _state(3)
    faulty.block_writes = faulty.flushes = faulty.write_calls = 0
    css.checkpoint(step=3, meta=META)
    faulty.close()
    return faulty


# ------------------------------------------------------------------------- crash rows


def test_crash_at_every_block_write(template: Path, tmp_path: Path) -> None:
    total = _count_writes(template, tmp_path).block_writes
    cases = 0
    for k in range(total):
        for torn in (False, True):
            root = _copy(template, tmp_path / f"k{k}{'t' if torn else ''}")
            faulty = FaultyStore(FileStore(root))
            lease = faulty.acquire("stage", steal=True)
            css = CheckpointedStageState.restore(lease, compression="none")
            css.state = _state(3)
            faulty.block_writes = 0
            faulty.crash_after(k, torn=torn)
            with pytest.raises(CheckpointFailed) as err:
                css.checkpoint(step=3, meta=META)
            assert isinstance(err.value.__cause__, InjectedCrash)
            faulty.close()
            assert _restored_step(root) in (2, 3), (k, torn)
            shutil.rmtree(root)
            cases += 1
    assert cases == 2 * total and total >= 64


def test_crash_at_every_flush(template: Path, tmp_path: Path) -> None:
    flushes = _count_writes(template, tmp_path).flushes
    for n in range(flushes):
        root = _copy(template, tmp_path / f"f{n}")
        faulty = FaultyStore(FileStore(root))
        lease = faulty.acquire("stage", steal=True)
        css = CheckpointedStageState.restore(lease, compression="none")
        css.state = _state(3)
        faulty.flushes = 0
        faulty.crash_on_flush(n)
        with pytest.raises(CheckpointFailed):
            css.checkpoint(step=3, meta=META)
        faulty.close()
        assert _restored_step(root) in (2, 3), n


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from blockstore import FileStore
    from stages import CheckpointedStageState
    sys.path.insert(0, sys.argv[2])
    from test_faults_storage import META, _state
    store = FileStore(sys.argv[1])
    lease = store.acquire("stage", steal=True)
    css = CheckpointedStageState.restore(lease, compression="none")
    step = css.state["step"]
    while True:
        step += 1
        css.state = _state(step)
        css.checkpoint(step=step, meta=META)
        print(step, flush=True)
""")


def test_sigkill_of_a_real_writer(template: Path, tmp_path: Path, full: bool) -> None:
    rng = random.Random(7)
    root = _copy(template, tmp_path / "kill")
    here = str(Path(__file__).parent)
    last = 2
    for _ in range(24 if full else 8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), here],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        printed = [int(proc.stdout.readline())]      # at least one commit of its own
        import time
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        printed += [int(x) for x in rest.split()]
        step = _restored_step(root)
        assert step is not None and printed[-1] <= step <= printed[-1] + 1, (printed, step)
        assert step > last
        last = step


# ------------------------------------------------------------------------- at-rest rows


def _covered(root: Path) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """B's byte ranges as (block, lo, hi): structure (header + trailer, used part of each
    map block) and data (each stored chunk)."""
    with FileStore(root) as store:
        reader = store.open_reader("stage")
        _, scans = scan_slots(reader)
        h = next(s.header for s in scans if s.header is not None and s.header.step == 2)
        entries, map_blocks = load_map(reader, h)
        # (The trailer after the header is not relied on once the CRC verifies.)
        structure = [(h.slot, 0, h.header_length)]
        for b in map_blocks:
            count = int.from_bytes(bytes(reader.read_block(b))[8:12], "little")
            structure.append((b, 0, fmt.MAPBLOCK.size + count * fmt.ENTRY.size))
    data = [(e.block, e.offset, e.offset + e.stored) for e in entries]
    return structure, data


def test_single_bit_flips_at_rest(template: Path, tmp_path: Path, full: bool) -> None:
    root = _copy(template, tmp_path / "flip")
    dat = next((root / "leases").glob("*.dat"))
    pristine = dat.read_bytes()
    structure, data = _covered(root)
    assert len(structure) >= 2, "the template must have a spilled map"
    rng = random.Random(11)
    flips: list[tuple[int, int]] = []                  # (byte offset in the file, bit)
    for kind, ranges in (("structure", structure), ("data", data)):
        for block, lo, hi in ranges:
            if full:
                offsets: Any = range(lo, hi)           # every covered byte
            elif kind == "structure":                  # the fixed header whole, a sample
                fixed = range(lo, min(hi, lo + fmt.HEADER_SIZE)) if block == structure[0][0] \
                    else range(lo, lo)
                rest = [o for o in range(lo, hi) if o not in fixed]
                offsets = list(fixed) + sorted(rng.sample(rest, min(192, len(rest))))
            else:
                offsets = sorted(rng.sample(range(lo, hi), min(16, hi - lo)))
            for off in offsets:
                bits = range(8) if full else (rng.randrange(8),)
                flips += [(block * BS + off, bit) for bit in bits]
    detected = 0
    raw = bytearray(pristine)
    with FileStore(root) as store:
        for pos, bit in flips:
            raw[pos] ^= 1 << bit
            dat.write_bytes(raw)
            back = CheckpointedStageState.restore(store.open_reader("stage"))
            step = back.state["step"]
            assert step in (1, 2) and _is(back.state, step), (pos, bit)
            if step == 1:
                detected += 1
                assert back.restored.skipped, "a fallback must say what it skipped"
            raw[pos] ^= 1 << bit
    dat.write_bytes(pristine)
    # Every flip in a byte B relies on is detected, and restore fell back to A.
    assert detected == len(flips), (detected, len(flips))


def test_truncation_at_every_block(template: Path, tmp_path: Path) -> None:
    root = _copy(template, tmp_path / "trunc")
    dat = next((root / "leases").glob("*.dat"))
    pristine = dat.read_bytes()
    outcomes: dict[str, int] = {}
    for blocks in range(len(pristine) // BS, -1, -1):
        dat.write_bytes(pristine[:blocks * BS])
        try:
            step = _restored_step(root)
            key = f"step {step}"
        except CheckpointCorrupt as exc:          # truncated: named, never wrong state
            key = type(exc).__name__
        outcomes[key] = outcomes.get(key, 0) + 1
    dat.write_bytes(pristine)
    assert set(outcomes) <= {"step 2", "step 1", "step None", "TruncatedCheckpointError",
                             "CheckpointCorrupt", "TornHeaderError"}, outcomes
    assert outcomes.get("step 2") == 1               # only the whole file restores B


# ------------------------------------------------------------------------- I/O error rows


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS],
                         ids=["ENOSPC", "EIO", "EROFS"])
def test_io_error_at_every_write_call(template: Path, tmp_path: Path, code: int) -> None:
    calls = _count_writes(template, tmp_path).write_calls
    assert calls >= 2
    for at in range(calls):
        root = _copy(template, tmp_path / f"w{code}-{at}")
        error, _ = _write_c(root, lambda f, at=at: f.fail_io("write", code, at=at))
        assert isinstance(error, CheckpointFailed), at
        assert not isinstance(error, CheckpointCommitUnknown) or at == calls - 1
        cause = error.__cause__
        assert isinstance(cause, OSError) and cause.__cause__.errno == code
        assert _restored_step(root) == 4          # the writer went on afterwards
        shutil.rmtree(root)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_io_error_at_every_flush(template: Path, tmp_path: Path, code: int) -> None:
    flushes = _count_writes(template, tmp_path).flushes
    for at in range(flushes):
        root = _copy(template, tmp_path / f"f{code}-{at}")
        faulty = FaultyStore(FileStore(root))
        lease = faulty.acquire("stage", steal=True)
        css = CheckpointedStageState.restore(lease, compression="none")
        css.state = _state(3)
        faulty.flushes = 0
        faulty.fail_io("flush", code, at=at)
        with pytest.raises(CheckpointFailed) as err:
            css.checkpoint(step=3, meta=META)
        # The last flush follows the header write: the commit state is then unknown.
        assert isinstance(err.value, CheckpointCommitUnknown) == (at == flushes - 1)
        faulty.close()
        assert _restored_step(root) in (2, 3)
        shutil.rmtree(root)


def test_read_only_store(template: Path, tmp_path: Path) -> None:
    root = _copy(template, tmp_path / "ro")

    def arm(f: FaultyStore) -> None:
        f.fail_io("write", errno.EROFS)
        f.fail_io("flush", errno.EROFS)
    error, _ = _write_c(root, arm)
    assert isinstance(error, CheckpointFailed) and not isinstance(error, CheckpointCommitUnknown)
    assert _restored_step(root) == 4


def test_store_directory_removed_under_the_writer(template: Path, tmp_path: Path) -> None:
    root = _copy(template, tmp_path / "gone")
    store = FileStore(root)
    lease = store.acquire("stage", steal=True)
    css = CheckpointedStageState.restore(lease, compression="none")
    shutil.rmtree(root)
    css.state = _state(3)
    with pytest.raises(CheckpointFailed) as err:
        css.checkpoint(step=3, meta=META)
    assert "stage" in str(err.value) or lease.lease_id in str(err.value)
    store.close()
