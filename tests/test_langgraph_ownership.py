"""One writer per thread: two real processes on one file store, fenced by the store.

Each writer is a child process running this file as a script, driven line by line over its
stdin (``put PARENT``, ``writes CHECKPOINT``, ``quit``) and answering on stdout (``ok ID``,
``stale``, ``busy``). LangGraph's own savers let both writers append and the chain forks;
here the second writer takes the thread over (or is refused), the first one's next write
raises ``StaleWriterError`` and saves nothing, and the chain stays linear.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from blockpoint_langgraph import BlockpointSaver

HERE = Path(__file__).resolve()


def _child_main(store: str, thread_id: str, on_conflict: str, ttl: float) -> None:
    from langgraph.checkpoint.conformance.test_utils import (
        generate_checkpoint,
        generate_config,
        generate_metadata,
    )

    from blockpoint_langgraph import StaleWriterError, ThreadBusyError

    saver = BlockpointSaver(store, on_conflict=on_conflict, ttl=ttl)  # type: ignore[arg-type]
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        try:
            if cmd == "put":
                config = generate_config(thread_id)
                if arg != "-":
                    config["configurable"]["checkpoint_id"] = arg
                cp = generate_checkpoint(channel_values={"who": on_conflict},
                                         channel_versions={"who": 1})
                out = saver.put(config, cp, generate_metadata(), {"who": 1})
                print("ok", out["configurable"]["checkpoint_id"], flush=True)
            elif cmd == "writes":
                saver.put_writes(generate_config(thread_id, checkpoint_id=arg),
                                 [("ch", "late")], "task-1")
                print("ok -", flush=True)
            else:
                break
        except StaleWriterError as exc:
            print("stale", exc.epoch, exc.current_epoch, flush=True)
        except ThreadBusyError:
            print("busy", flush=True)
    saver.close()


class Writer:
    """A child process holding one ``BlockpointSaver``; one command, one answer."""

    def __init__(self, store: str, thread_id: str, on_conflict: str = "takeover",
                 ttl: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), store, thread_id, on_conflict, str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.ask(None) == "ready"

    def ask(self, command: str | None) -> str:
        assert self.proc.stdin and self.proc.stdout
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            self.proc.stdin.close()  # end of commands: the child closes its saver and exits
            self.proc.wait(timeout=30)


def _chain(store: str, thread_id: str) -> list[tuple[str, str | None]]:
    with BlockpointSaver(store) as reader:
        return [(t.checkpoint["id"],
                 t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None)
                for t in reader.list({"configurable": {"thread_id": thread_id}})]


def test_second_writer_takes_over_and_fences_the_first(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    a = Writer(store, "t")
    b = Writer(store, "t")
    try:
        first = a.ask("put -").split()
        assert first[0] == "ok"
        second = a.ask(f"put {first[1]}").split()
        # B resumes the thread from A's newest checkpoint: it takes the lease over.
        taken = b.ask(f"put {second[1]}").split()
        assert taken[0] == "ok"
        # A does not know yet; it tries to go on from its own newest: a fork, refused.
        fork = a.ask(f"put {second[1]}").split()
        assert fork[0] == "stale" and int(fork[2]) > int(fork[1]), fork
        assert a.ask(f"writes {second[1]}").split()[0] == "stale"
        assert a.ask("put -").split()[0] == "stale"  # and it stays fenced
        more = b.ask(f"put {taken[1]}").split()
        assert more[0] == "ok"
    finally:
        a.close()
        b.close()
    chain = _chain(store, "t")
    # One linear chain, newest first: B's two on top of A's two; no fork, nothing of A's
    # late attempts.
    assert [c for c, _ in chain] == [more[1], taken[1], second[1], first[1]]
    assert [p for _, p in chain] == [taken[1], second[1], first[1], None]
    with BlockpointSaver(store) as reader:
        tup = reader.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": "",
                                                 "checkpoint_id": second[1]}})
        assert tup is not None and tup.pending_writes == []


def test_refuse_mode_turns_the_second_writer_away(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    a = Writer(store, "t", "refuse")
    b = Writer(store, "t", "refuse")
    try:
        first = a.ask("put -").split()
        assert first[0] == "ok"
        assert b.ask(f"put {first[1]}") == "busy"
        assert a.ask(f"put {first[1]}").split()[0] == "ok"  # the owner goes on
    finally:
        a.close()
        b.close()
    assert len(_chain(store, "t")) == 2


def test_refuse_mode_lets_an_idle_lease_expire(tmp_path: Path) -> None:
    from polling import wait_for

    store = str(tmp_path / "store")
    a = Writer(store, "t", "refuse", ttl=0.5)
    b = Writer(store, "t", "refuse", ttl=0.5)
    try:
        first = a.ask("put -").split()
        # Once A's idle hold ran out, B takes the thread without stealing ("busy" until
        # then, which changes nothing).
        taken = wait_for(lambda: [w for w in [b.ask(f"put {first[1]}").split()]
                                  if w[0] == "ok"], timeout=60,
                         what="B taking the thread after A's hold ran out")[0]
        assert taken[0] == "ok"
        assert a.ask(f"put {first[1]}").split()[0] == "stale"
    finally:
        a.close()
        b.close()
    assert [c for c, _ in _chain(store, "t")] == [taken[1], first[1]]


@pytest.mark.parametrize("on_conflict", ["sideways"])
def test_bad_conflict_mode(on_conflict: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_conflict"):
        BlockpointSaver(str(tmp_path / "s"), on_conflict=on_conflict)  # type: ignore[arg-type]


def test_a_takeover_between_two_writes_is_seen_by_the_fast_checks(tmp_path: Path) -> None:
    """Writer A's store trusts the thread's lease record after one stat while the record
    file is the one it parsed (blockstore/recordpins.py), and A's get_tuple answers from
    memory after that check. A takeover by B between two of A's calls - and record changes
    after it, which recycle inode numbers - must each be seen: A's get_tuple returns B's
    checkpoint, not A's memory; A's put and put_writes are refused and save nothing."""
    from langgraph.checkpoint.conformance.test_utils import (
        generate_checkpoint,
        generate_config,
        generate_metadata,
    )

    from blockpoint_langgraph import StaleWriterError

    store = str(tmp_path / "store")
    thread = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    def put(saver: BlockpointSaver, who: str, parent: str | None) -> str:
        config = generate_config("t")
        if parent:
            config["configurable"]["checkpoint_id"] = parent
        cp = generate_checkpoint(channel_values={"who": who}, channel_versions={"who": 1})
        return saver.put(config, cp, generate_metadata(), {"who": 1})[
            "configurable"]["checkpoint_id"]

    with BlockpointSaver(store) as a, BlockpointSaver(store) as b:
        first = put(a, "a", None)
        second = put(a, "a", first)
        got = a.get_tuple(thread)
        assert got is not None and got.checkpoint["id"] == second
        assert a.store._pins is not None and len(a.store._pins) == 1  # the fast path ran
        taken = put(b, "b", second)  # B takes the thread over
        for _ in range(3):  # more record changes: a freed inode number may come back
            b.ownership.lease("t").renew()
        got = a.get_tuple(thread)
        assert got is not None and got.checkpoint["id"] == taken
        assert got.checkpoint["channel_values"] == {"who": "b"}
        with pytest.raises(StaleWriterError):
            put(a, "a", second)
        with pytest.raises(StaleWriterError):
            a.put_writes(generate_config("t", checkpoint_id=taken), [("ch", "late")], "x")
    chain = _chain(store, "t")
    assert [c for c, _ in chain] == [taken, second, first]
    with BlockpointSaver(store) as reader:
        tup = reader.get_tuple(thread)
        assert tup is not None and tup.checkpoint["id"] == taken and tup.pending_writes == []


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
