"""Fencing across real processes on one file store.

Each test starts agent processes (``python -c AGENT``): each opens the store and obeys JSON
commands on stdin (acquire, write, flush, hammer, ...), answering one JSON line each, with
the class name of any ``BlockStoreError``. The tests check what only separate processes can
show: the store's locks and records (not any process's memory) decide who may write, a
SIGKILLed holder's lease is taken over only after it expires, and a writer that keeps
writing while another process takes over never lands a block after the takeover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blockstore import open_store

BS = 4096
N_DUEL = 2048  # 8 MiB per write: a write takes long enough for a takeover to overlap it

AGENT = r"""
import json, os, sys, time
from blockstore import BlockStoreError, open_store

store_path, go = sys.argv[1], sys.argv[2]
while go != "-" and not os.path.exists(go):
    time.sleep(0.001)
store = open_store(store_path, block_size=4096)
leases = {}

def reply(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

def payload(tag, seq, i):
    return f"{tag}|{seq}|{i}|".encode()

reply(ok=True, pid=os.getpid())
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd.pop("op")
    try:
        if op == "acquire":
            gate = cmd.pop("go", None)
            while gate and not os.path.exists(gate):
                time.sleep(0.0005)
            lease = store.acquire(**cmd)
            leases[cmd["name"]] = lease
            reply(ok=True, epoch=lease.epoch, lease_id=lease.lease_id,
                  expires_at=lease.acquired_info.expires_at, ttl=lease.ttl)
        elif op == "write":
            lease = leases[cmd["name"]]
            lease.write_blocks({i: payload(cmd["tag"], 0, i) for i in cmd["blocks"]})
            reply(ok=True)
        elif op == "flush":
            leases[cmd["name"]].flush()
            reply(ok=True)
        elif op == "hammer":
            # Write every block, again and again, until fenced; then keep trying, so that a
            # write landing after the takeover would be seen.
            lease, n = leases[cmd["name"]], cmd["blocks"]
            seq, last_ok, refused, stale = 0, -1, 0, None
            while refused < cmd["attempts_after_refusal"]:
                seq += 1
                try:
                    lease.write_blocks({i: payload("W", seq, i) for i in range(n)})
                    if stale is not None:
                        reply(ok=False, error="write after refusal", seq=seq)
                        break
                    last_ok = seq
                    if seq == 1:
                        reply(ok=True, started=True)
                except BlockStoreError as exc:
                    if last_ok < 0:  # refused before it ever wrote: say so, do not hang
                        reply(ok=False, started=False, error=type(exc).__name__, msg=str(exc))
                        break
                    stale = stale or type(exc).__name__
                    refused += 1
            else:
                reply(ok=True, last_ok=last_ok, refused=refused, error=stale)
        elif op == "duel":
            # Steal, write every block with our epoch, read them back: a block holding a
            # smaller epoch than ours, after our write returned, is a stale write that landed
            # after a takeover. Two duelling processes make thousands of takeovers. Once we
            # have stolen and been fenced `enough` times we say so, and keep duelling (so the
            # other can still be fenced) until the `stop` file exists.
            n, stop, need = cmd["blocks"], cmd["stop"], cmd["enough"]
            counts = dict(steals=0, writes=0, refused=0, violations=0)
            said = False
            while not os.path.exists(stop):
                if not said and counts["steals"] >= need and counts["refused"] >= need:
                    reply(ok=True, enough=True)
                    said = True
                lease = store.acquire(cmd["name"], holder=cmd["holder"], ttl=60, steal=True)
                counts["steals"] += 1
                mine = lease.epoch.to_bytes(8, "little")
                for _ in range(cmd["writes_per_steal"]):
                    try:
                        lease.write_blocks({i: mine for i in range(n)})
                    except BlockStoreError:
                        counts["refused"] += 1
                        break
                    counts["writes"] += 1
                    for b in lease.read_blocks(range(n)):
                        if int.from_bytes(b[:8], "little") < lease.epoch:
                            counts["violations"] += 1
            reply(ok=True, **counts)
        elif op == "exit":
            break
    except BlockStoreError as exc:
        reply(ok=False, error=type(exc).__name__, msg=str(exc),
              current_epoch=getattr(exc, "current_epoch", None))
"""


class Agent:
    """A real process holding its own store object; commands in, one JSON answer out."""

    def __init__(self, store: str, go: str = "-") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT, store, go],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = False

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self.ready:  # the hello line, once the store is open
            self.ready = True
            assert json.loads(self.proc.stdout.readline())["ok"]
        line = self.proc.stdout.readline()
        assert line, f"agent {self.proc.pid} died (rc={self.proc.poll()})"
        return json.loads(line)

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.recv()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="exit")
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agents(store_dir: str) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        a.close()


def _decode(block: bytes) -> tuple[str, int, int] | None:
    """``(tag, seq, index)`` of an agent's payload, ``None`` for a zero block."""
    if block == bytes(len(block)):
        return None
    tag, seq, index, _ = block.rstrip(b"\0").decode().split("|")
    return tag, int(seq), int(index)


@pytest.mark.timeout(120)
def test_processes_race_to_create_store_and_lease(tmp_path: Path, agents: list[Agent]) -> None:
    # Neither the store nor the lease exists: all four processes create both at once; then
    # they race again for new leases, round after round, each round started by a go file.
    store, go = str(tmp_path / "new-store"), str(tmp_path / "go")
    agents += [Agent(store, go) for _ in range(4)]
    winners = []
    for rnd in range(6):
        gate = f"{go}.{rnd}"
        for k, a in enumerate(agents):
            a.send(op="acquire", name=f"s{rnd}", holder=f"p{k}", ttl=60, num_blocks=2, go=gate)
        if rnd == 0:
            Path(go).touch()
        Path(gate).touch()
        answers = [a.recv() for a in agents]
        won = [k for k, r in enumerate(answers) if r["ok"]]
        assert len(won) == 1, (rnd, answers)
        assert all(r["error"] == "LeaseHeldError" for r in answers if not r["ok"])
        assert answers[won[0]]["epoch"] == 1
        winners.append(won[0])
    with open_store(store) as st:
        infos = st.list_leases()
        assert [(i.name, i.holder, i.epoch) for i in infos] == \
            [(f"s{rnd}", f"p{w}", 1) for rnd, w in enumerate(winners)]


@pytest.mark.timeout(120)
def test_loser_steals_later_and_old_holders_writes_are_refused(
        store_dir: str, agents: list[Agent]) -> None:
    with open_store(store_dir, block_size=BS):
        pass
    go = store_dir + ".go"
    agents += [Agent(store_dir), Agent(store_dir)]
    for k, a in enumerate(agents):
        a.send(op="acquire", name="s", holder=f"p{k}", ttl=60, num_blocks=4, go=go)
    Path(go).touch()
    answers = [a.recv() for a in agents]
    assert sorted(r["ok"] for r in answers) == [False, True], answers
    w = next(k for k in range(2) if answers[k]["ok"])
    winner, loser = agents[w], agents[1 - w]
    assert answers[1 - w]["error"] == "LeaseHeldError"

    assert winner.call(op="write", name="s", tag="old", blocks=[0, 1, 2, 3])["ok"]
    assert winner.call(op="flush", name="s")["ok"]
    stolen = loser.call(op="acquire", name="s", holder="thief", ttl=60, steal=True)
    assert stolen["ok"] and stolen["epoch"] == 2
    assert loser.call(op="write", name="s", tag="new", blocks=[0, 1])["ok"]
    assert loser.call(op="flush", name="s")["ok"]

    late = winner.call(op="write", name="s", tag="late", blocks=[0, 1, 2, 3])
    assert (late["ok"], late["error"], late["current_epoch"]) == (False, "StaleLeaseError", 2)
    assert winner.call(op="flush", name="s")["error"] == "StaleLeaseError"

    with open_store(store_dir) as st:
        got = [_decode(b) for b in st.open_reader("s").read_blocks(range(4))]
        assert got == [("new", 0, 0), ("new", 0, 1), ("old", 0, 2), ("old", 0, 3)]
        info = st.lease_info("s")
        assert (info.holder, info.epoch) == ("thief", 2)


@pytest.mark.timeout(240)
def test_sigkilled_holder_is_taken_over_after_expiry(store_dir: str,
                                                     agents: list[Agent]) -> None:
    with open_store(store_dir, block_size=BS):
        pass
    holder = Agent(store_dir)
    agents.append(holder)
    # A TTL long enough that the keepalive never lapses before the kill (only the expiry
    # after the kill is waited for, by condition).
    first = holder.call(op="acquire", name="s", holder="doomed", ttl=10, num_blocks=8,
                        keepalive=True)
    assert first["ok"] and first["epoch"] == 1
    # Killed in the middle of writing, possibly holding the lease's lock: the kernel drops
    # the flock with the process, so nobody waits on a dead holder.
    holder.send(op="hammer", name="s", blocks=8, attempts_after_refusal=10**9)
    started = holder.recv()
    assert started.get("started"), started
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(timeout=30)

    with open_store(store_dir) as st:
        dead = st.lease_info("s")  # nothing changes it any more
        assert dead.holder == "doomed" and dead.epoch == 1
        successor = Agent(store_dir)
        agents.append(successor)
        refusals = 0
        deadline = time.monotonic() + 120
        while True:
            r = successor.call(op="acquire", name="s", holder="successor", ttl=60)
            if r["ok"]:
                break
            assert r["error"] == "LeaseHeldError", r
            assert time.monotonic() < deadline, "the dead holder's lease never expired"
            refusals += 1
            time.sleep(0.05)
        acquired_at = r["expires_at"] - r["ttl"]
        assert acquired_at >= dead.expires_at, "taken over before the dead holder expired"
        assert r["epoch"] == dead.epoch + 1 == 2
        info = st.lease_info("s")
        assert (info.holder, info.epoch, info.num_blocks) == ("successor", 2, 8)
        # The dead holder's last writes are there, from the writer and nobody else.
        for i, block in enumerate(st.open_reader("s").read_blocks(range(8))):
            decoded = _decode(block)
            assert decoded is not None and decoded[0] == "W" and decoded[2] == i


@pytest.mark.timeout(180)
def test_takeover_while_writer_hammers(store_dir: str, agents: list[Agent]) -> None:
    n = 512  # 2 MiB per write, so the takeover is likely to arrive while one is in progress
    with open_store(store_dir, block_size=BS):
        pass
    writer, thief = Agent(store_dir), Agent(store_dir)
    agents += [writer, thief]
    assert writer.call(op="acquire", name="s", holder="writer", ttl=60, num_blocks=n)["ok"]
    writer.send(op="hammer", name="s", blocks=n, attempts_after_refusal=300)
    assert writer.recv()["started"]
    time.sleep(0.2)  # let it write for a while; the outcome does not depend on how long
    stolen = thief.call(op="acquire", name="s", holder="thief", ttl=60, steal=True)
    assert stolen["ok"] and stolen["epoch"] == 2

    with open_store(store_dir) as st:
        # At the takeover every block holds the writer's last write that was allowed, whole:
        # the takeover waited for the write in progress, and no write came after it.
        at_takeover = [_decode(b) for b in st.open_reader("s").read_blocks(range(n))]
        assert thief.call(op="write", name="s", tag="T", blocks=list(range(n)))["ok"]
        done = writer.recv()
        assert done["ok"], done  # no write succeeded after the first refusal
        assert done["error"] == "StaleLeaseError" and done["refused"] == 300
        assert at_takeover == [("W", done["last_ok"], i) for i in range(n)]
        final = [_decode(b) for b in st.open_reader("s").read_blocks(range(n))]
        assert final == [("T", 0, i) for i in range(n)]
        assert st.lease_info("s").holder == "thief"


@pytest.mark.timeout(300)
def test_duelling_takeovers_never_let_a_stale_write_land(store_dir: str,
                                                         agents: list[Agent]) -> None:
    with open_store(store_dir, block_size=BS) as st:
        st.acquire("s", num_blocks=N_DUEL).release()
    go = store_dir + ".go"
    agents += [Agent(store_dir, go), Agent(store_dir, go)]
    stop = store_dir + ".stop"
    for k, a in enumerate(agents):
        a.send(op="duel", name="s", holder=f"d{k}", blocks=N_DUEL, stop=stop, enough=3,
               writes_per_steal=5)
    Path(go).touch()
    # Each says when it has stolen and been fenced 3 times, however late it started; only
    # then do both stop (bounded by the test's timeout).
    enough = [a.recv() for a in agents]
    assert all(r.get("enough") for r in enough), enough
    Path(stop).touch()
    results = [a.recv() for a in agents]
    assert all(r["ok"] for r in results), results
    assert sum(r["violations"] for r in results) == 0, results
    # Both took over repeatedly and both were fenced mid-stream: the race was exercised.
    assert all(r["steals"] >= 3 and r["refused"] >= 3 for r in results), results
    with open_store(store_dir) as st:
        assert st.lease_info("s").epoch == 1 + sum(r["steals"] for r in results)
