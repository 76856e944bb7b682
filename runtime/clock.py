"""Time for servicers: an injectable clock and protobuf Timestamps from aware datetimes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["Clock", "timestamp", "utc_now"]

#: Returns the current time, timezone-aware; tests inject their own.
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """Return the current time in UTC."""
    return dt.datetime.now(dt.UTC)


def timestamp(value: dt.datetime) -> Timestamp:
    """Return `value` (aware) as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp
