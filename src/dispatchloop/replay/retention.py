"""The configured retention policy (settings.retention) applied to a store.

The daemon calls `apply_configured_retention` every `retention.interval_s`; the
store deletes in short chunks, so ingest keeps running meanwhile.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dispatchloop.replay.base import ReplayStore
from dispatchloop.settings import RetentionSettings


def apply_configured_retention(
    store: ReplayStore, retention: RetentionSettings, now: datetime
) -> int:
    """Delete what the policy no longer keeps; return how many events went."""
    if retention.max_age_days is None and retention.max_events is None:
        return 0
    max_age = None if retention.max_age_days is None else timedelta(days=retention.max_age_days)
    return store.apply_retention(now, max_age=max_age, max_events=retention.max_events)
