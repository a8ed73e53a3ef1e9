"""The saver's errors pickle with type, message and attributes, and sit under one root."""

from __future__ import annotations

import pickle

from blockpoint_langgraph import SaverError, StaleWriterError, ThreadBusyError


def test_errors_pickle_with_their_context() -> None:
    stale = StaleWriterError("fenced", thread_id="t", epoch=1, current_epoch=2)
    busy = ThreadBusyError("busy", thread_id="t", holder="h", expires_at=5.0)
    for err in (stale, busy, SaverError("x", thread_id="t")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.__dict__ == err.__dict__
        assert isinstance(back, SaverError)
    assert isinstance(stale, RuntimeError) and isinstance(busy, RuntimeError)
