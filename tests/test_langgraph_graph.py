"""A real ``StateGraph`` on ``BlockpointSaver``: killed mid-run, resumed in another process.

The graph: ``a``, then ``b1`` and ``b2`` in parallel, then ``c``, then ``d``; every node
appends its name to ``trace`` and folds a number into ``total``, and logs each execution to
a file (a real side effect). The first process is SIGKILLed while ``b2`` runs - after
``b1`` finished and its pending writes were committed - and a second process resumes the
thread from the saver (taking the thread's lease over): the final state equals an
uninterrupted run's, and ``b1`` is not run again (its committed writes are used).
"""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from blockpoint_langgraph import BlockpointSaver

HERE = Path(__file__).resolve()
CONFIG = {"configurable": {"thread_id": "job-1"}}
INPUT = {"trace": [], "total": 1}


class State(TypedDict):
    trace: Annotated[list[str], operator.add]
    total: Annotated[int, operator.add]


def _node(name: str, add: int) -> Any:
    def run(state: State) -> dict[str, Any]:
        log = os.environ.get("BP_LOG")
        if log:
            with open(log, "a") as f:
                f.write(name + "\n")
        if os.environ.get("BP_SLOW_NODE") == name:
            Path(os.environ["BP_MARKER"]).write_text(name)
            time.sleep(120)  # killed here
        return {"trace": [name], "total": add * (len(state["trace"]) + 1)}
    return run


def build(checkpointer: Any) -> Any:
    g = StateGraph(State)
    for name, add in [("a", 3), ("b1", 5), ("b2", 7), ("c", 11), ("d", 13)]:
        g.add_node(name, _node(name, add))
    g.add_edge(START, "a")
    g.add_edge("a", "b1")
    g.add_edge("a", "b2")
    g.add_edge(["b1", "b2"], "c")
    g.add_edge("c", "d")
    g.add_edge("d", END)
    return g.compile(checkpointer=checkpointer)


def _child_main(store: str, mode: str) -> None:
    graph = build(BlockpointSaver(store))
    out = graph.invoke(INPUT if mode == "run" else None, CONFIG, durability="sync")
    print(json.dumps(out, sort_keys=True), flush=True)


def _child(store: str, mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), store, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def test_killed_graph_resumes_in_another_process(tmp_path: Path) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    expected = build(InMemorySaver()).invoke(INPUT, CONFIG)
    store = str(tmp_path / "store")
    log = tmp_path / "executions.log"
    marker = tmp_path / "in-b2"

    first = _child(store, "run", {"BP_LOG": str(log), "BP_SLOW_NODE": "b2",
                                  "BP_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 120  # a subprocess start, langgraph's import, node a
        while not marker.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "b2 never started"
            time.sleep(0.05)
        deadline = time.monotonic() + 120  # its own bound: b1's writes after b2 started
        with BlockpointSaver(store) as reader:  # b1's writes are committed before the kill
            while True:
                tup = reader.get_tuple(CONFIG)
                if tup is not None and any(w[1] == "trace" and w[2] == ["b1"]
                                           for w in tup.pending_writes or []):
                    break
                assert time.monotonic() < deadline, "b1's writes never reached the saver"
                time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()

    second = _child(store, "resume", {"BP_LOG": str(log)})
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == expected
    runs = log.read_text().split()
    assert runs.count("b1") == 1 and runs.count("a") == 1, runs  # not replayed
    assert runs.count("b2") == 2 and runs[-2:] == ["c", "d"], runs
    with BlockpointSaver(store) as reader:
        final = reader.get_tuple(CONFIG)
        assert final is not None and final.checkpoint["channel_values"]["trace"] == \
            expected["trace"]


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
