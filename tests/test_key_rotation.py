"""A key rotation that has not reached every node never rolls state back (review 19, R14).

A node that still has the old key file cannot verify generations written under the new key.
The restore used to skip them as "MAC mismatch" and return the newest older generation that
verified: acknowledged exactly-once calls were gone, and the next commit wrote over them. A
well-formed generation that no configured key authenticates is now refused
(``CheckpointAuthError`` saying why and what to do); with the new key given as an old key
the same restore returns the committed state. Damage (a CRC failure) still falls back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from stages import CheckpointAuthError, checkpointed
from stages.actors.durability import ActorDurability


class Acc:
    def __init__(self) -> None:
        self.state = {"n": 0}

    def add(self, k: int) -> int:
        self.state["n"] += k
        return self.state["n"]


def _key_file(path: Path, lines: list[str]) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.close(fd)
    return str(path)


def _start(store: str) -> Any:
    """An incarnation of the exactly-once actor in this process (what a node starts)."""
    cls = checkpointed(store=store, key="acc", every_calls=1, retention=3)(Acc)
    obj = object.__new__(cls)
    Acc.__init__(obj)
    obj._bp_durable = ActorDurability(obj, cls.__bp_config__, "acc", handle=None, node_id=None)
    return obj


def test_a_node_without_the_new_key_refuses_instead_of_rolling_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)
    old = _key_file(tmp_path / "old", ["key-OLD"])
    new = _key_file(tmp_path / "new", ["key-NEW", "key-OLD"])
    store = str(tmp_path / "store")
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", old)       # before the rotation
    a = _start(store)
    a.add(1)
    a.add(1)
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", new)       # this node rotated
    a = _start(store)
    a.add(1)
    a.add(1)
    assert a.state == {"n": 4}                                       # 4 calls acknowledged
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", old)       # a node not yet rotated
    with pytest.raises(CheckpointAuthError, match="Refusing to fall back") as err:
        _start(store)
    assert "key-NEW" not in str(err.value) and "key-OLD" not in str(err.value)
    assert "rotation" in str(err.value)
    # The first phase of the documented rotation: the new key as an old key everywhere.
    both = _key_file(tmp_path / "phase1", ["key-OLD", "key-NEW"])
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", both)
    b = _start(store)
    assert b.state == {"n": 4}                                       # nothing lost
    b.add(1)
    monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", new)
    assert _start(store).state == {"n": 5}


def test_an_env_key_with_a_newline_moved_into_a_key_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 19, F2: $BLOCKPOINT_CHECKPOINT_KEY is now stripped as a key file's lines are.
    A generation MACed earlier under the raw value (with its newline; written here with that
    key given explicitly, as the old code did from the variable) still restores while the
    variable keeps the newline; the next checkpoint is written under the stripped key, which
    the key file holding the same text then accepts."""
    from blockstore import FileStore
    from stages import CheckpointedStageState

    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_OLD_KEYS", raising=False)
    monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", raising=False)
    with FileStore(tmp_path / "s", 4096) as store:
        lease = store.acquire("st")
        CheckpointedStageState({"n": 1}, lease, key=b"key-TEXT\n", retention=2).checkpoint()
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "key-TEXT\n")   # as it was written
        css = CheckpointedStageState.restore(lease)
        assert css.state == {"n": 1}
        monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY")
        key_file = _key_file(tmp_path / "key", ["key-TEXT"])
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", key_file)
        with pytest.raises(CheckpointAuthError):                         # the documented limit
            CheckpointedStageState.restore(store.open_reader("st"))
        monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY_FILE")
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY", "key-TEXT\n")
        css.state = {"n": 2}
        css.checkpoint()                                                 # under b"key-TEXT"
        css.state = {"n": 3}
        css.checkpoint()                                                 # retention (2) times
        monkeypatch.delenv("BLOCKPOINT_CHECKPOINT_KEY")
        monkeypatch.setenv("BLOCKPOINT_CHECKPOINT_KEY_FILE", key_file)
        assert CheckpointedStageState.restore(store.open_reader("st")).state == {"n": 3}
        assert CheckpointedStageState.restore(
            store.open_reader("st"), key=b"key-TEXT").state == {"n": 3}
