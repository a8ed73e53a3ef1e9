"""The LangGraph saver's keys (issue 18): the rules of stage checkpoints, on real files.

* Without a key: the key comes from ``$BLOCKPOINT_CHECKPOINT_KEY``; a shared store refuses
  unauthenticated documents (``ThreadKeyRequired``) unless ``allow_unauthenticated=True``;
  and a document read without a key is decoded by LangGraph's hardened serializer, so a
  forged document that names a callable never gets it called.
* With the wrong key: the thread is an error (``ThreadAuthError``), never an empty thread,
  and a write never replaces the history it could not read.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.serde.jsonplus import EXT_CONSTRUCTOR_SINGLE_ARG, JsonPlusSerializer

from blockstore import SlottedDocument, open_store
from blockstore.keys import KEY_ENV
from blockpoint_langgraph import (
    DOCUMENT_KIND,
    BlockpointSaver,
    SaverError,
    ThreadAuthError,
    ThreadKeyRequired,
)

#: What the forged document's callable was called with (it must stay empty).
CALLS: list[Any] = []


def record_call(arg: Any) -> str:
    """The callable a forged document names: proof of code execution if ever called."""
    CALLS.append(arg)
    return "called"


class _Forger(JsonPlusSerializer):
    """An attacker's serializer: writes every value as a msgpack ext naming ``record_call``."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if obj == "PAYLOAD":
            inner = ormsgpack.packb((__name__, "record_call", "pwned"))
            return "msgpack", ormsgpack.packb(ormsgpack.Ext(EXT_CONSTRUCTOR_SINGLE_ARG, inner))
        return super().dumps_typed(obj)


def _put(saver: BlockpointSaver, thread_id: str, n: int, parent: str | None = None,
         value: Any = None) -> str:
    config = generate_config(thread_id)
    if parent:
        config["configurable"]["checkpoint_id"] = parent
    cp = generate_checkpoint(channel_values={"v": n if value is None else value},
                             channel_versions={"v": n + 1})
    saver.put(config, cp, generate_metadata(step=n), {"v": n + 1})
    return cp["id"]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    CALLS.clear()


def _forge(store_url: str) -> None:
    """As an attacker with write access and no key: a thread whose value names a callable."""
    with BlockpointSaver(store_url, allow_unauthenticated=True, serde=_Forger()) as attacker:
        _put(attacker, "t", 0, value="PAYLOAD")


def test_forged_document_on_a_shared_store_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "shared")
    open_store(url, block_size=64 * 1024, shared=True).close()
    _forge(url)
    with BlockpointSaver(url) as victim:  # no key anywhere
        with pytest.raises(ThreadKeyRequired):
            victim.get_tuple(generate_config("t"))
        with pytest.raises(ThreadKeyRequired):
            list(victim.list(None))
        with pytest.raises(ThreadKeyRequired):
            _put(victim, "t2", 0)
    assert CALLS == []


def test_forged_document_read_without_a_key_never_calls_what_it_names(
        tmp_path: Path) -> None:
    url = str(tmp_path / "shared")
    open_store(url, block_size=64 * 1024, shared=True).close()
    _forge(url)
    with BlockpointSaver(url, allow_unauthenticated=True) as victim:
        tup = victim.get_tuple(generate_config("t"))
        assert tup is not None
        assert tup.checkpoint["channel_values"]["v"] == "pwned"  # its data, not a call
        assert [t.checkpoint["id"] for t in victim.list(None)] == [tup.checkpoint["id"]]
    local = str(tmp_path / "local")  # not shared: no refusal, the same hardened decoding
    _forge(local)
    with BlockpointSaver(local) as victim:
        assert victim.get_tuple(generate_config("t")).checkpoint["channel_values"]["v"] == \
            "pwned"
    assert CALLS == []


def test_forged_document_is_refused_by_a_saver_with_the_key_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "shared")
    open_store(url, block_size=64 * 1024, shared=True).close()
    _forge(url)
    monkeypatch.setenv(KEY_ENV, "the-deployment-key")
    with BlockpointSaver(url) as victim:
        with pytest.raises(ThreadAuthError) as info:
            victim.get_tuple(generate_config("t"))
        assert "no MAC" in str(info.value) and info.value.thread_id == "t"
        with pytest.raises(ThreadAuthError):
            _put(victim, "t", 1)  # and it is not overwritten either
    assert CALLS == []


def test_key_is_read_from_the_environment_at_use(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "shared")
    store = open_store(url, block_size=64 * 1024, shared=True)
    saver = BlockpointSaver(store)  # constructed before the key is set
    monkeypatch.setenv(KEY_ENV, "k-1")
    first = _put(saver, "t", 0)
    with BlockpointSaver(store, key="k-1") as explicit:  # a str key, like the rest
        assert explicit.get_tuple(generate_config("t")).checkpoint["id"] == first
    lease = store.find(saver.ownership.name_of("t"))
    from blockstore import LeaseReader
    reader = LeaseReader(store, lease.lease_id, lease.name)
    found = SlottedDocument(reader, kind=DOCUMENT_KIND, version=1, slots=3, key=b"k-1").load()
    assert found.document is not None and found.mac  # written with a MAC under k-1
    monkeypatch.delenv(KEY_ENV)
    with BlockpointSaver(store, allow_unauthenticated=True) as keyless:
        with pytest.raises(ThreadAuthError):  # a keyed thread is not read without the key
            keyless.get_tuple(generate_config("t"))
    saver.close()
    store.close()


def test_wrong_key_is_an_error_and_never_replaces_the_thread(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    with BlockpointSaver(url, key="right") as owner:
        parent = None
        for n in range(3):
            parent = _put(owner, "t", n, parent)
        history = [t.checkpoint["id"] for t in owner.list(generate_config("t"))]
    assert len(history) == 3
    with BlockpointSaver(url, key="wrong") as other:
        with pytest.raises(ThreadAuthError) as info:
            other.get_tuple(generate_config("t"))
        assert "MAC mismatch" in str(info.value) and info.value.reasons
        with pytest.raises(ThreadAuthError):
            list(other.list(generate_config("t")))
        for n in range(9, 12):  # more writes than the document has slots
            with pytest.raises(ThreadAuthError):
                _put(other, "t", n)
        with pytest.raises(ThreadAuthError):
            other.put_writes(generate_config("t") | {"configurable": {
                "thread_id": "t", "checkpoint_ns": "", "checkpoint_id": parent}},
                [("v", 1)], "task")
    with BlockpointSaver(url, key="right") as owner:
        assert [t.checkpoint["id"] for t in owner.list(generate_config("t"))] == history
        assert owner.get_tuple(generate_config("t")).checkpoint["channel_values"]["v"] == 2


def test_new_errors_pickle_with_their_context() -> None:
    for err in (ThreadAuthError("bad", thread_id="t", reasons=("slot 0: MAC mismatch",)),
                ThreadKeyRequired("no key", thread_id="t")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.__dict__ == err.__dict__
        assert isinstance(back, SaverError)
