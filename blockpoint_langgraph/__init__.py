"""A LangGraph checkpointer on blockpoint storage (the optional ``langgraph`` extra).

``BlockpointSaver(store_url)`` is a ``langgraph.checkpoint.base.BaseCheckpointSaver``:
each thread is a crash-atomic, checksummed document in its own lease of a block store, with
one fenced writer at a time and bounded retention. It imports ``blockstore`` only (it sits
beside ``stages``); LangGraph itself is imported here, so this package needs the extra.

Quick use::

    from blockpoint_langgraph import BlockpointSaver
    saver = BlockpointSaver("/tmp/lg-store", block_size=64 * 1024)
    graph = builder.compile(checkpointer=saver)
    graph.invoke(inputs, {"configurable": {"thread_id": "t1"}})
"""

from __future__ import annotations

from . import errors
from .errors import *  # the error tree: its names are listed once, in errors.__all__
from .ownership import ThreadOwnership
from .saver import DEFAULT_RETENTION, DOCUMENT_KIND, BlockpointSaver

__all__ = [
    "DEFAULT_RETENTION",
    "DOCUMENT_KIND",
    "BlockpointSaver",
    "ThreadOwnership",
]
__all__ += errors.__all__
