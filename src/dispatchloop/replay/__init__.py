"""The replay store: every valid dispatch outcome event, once, durably.

`open_store(url)` is the entry point; the contract is `base.ReplayStore`.
"""

from dispatchloop.replay.base import (
    IncomingEvent,
    ReplayStore,
    StoredEvent,
    StoreRejectedError,
    StoreStats,
    StoreUnavailableError,
    TimeWindow,
    WriteResult,
)
from dispatchloop.replay.engine import StoreMissingError, open_store

__all__ = [
    "IncomingEvent",
    "ReplayStore",
    "StoreMissingError",
    "StoreRejectedError",
    "StoreStats",
    "StoreUnavailableError",
    "StoredEvent",
    "TimeWindow",
    "WriteResult",
    "open_store",
]
