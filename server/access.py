"""Who may ask and how much: API keys, per-key rate limits, and the bound on requests in flight.

- API keys (REACH_API_KEYS, REACH_API_KEYS_FILE; server/settings.py reads
  them): with any key set, every /v1/* request needs
  `Authorization: Bearer KEY` (401 otherwise). A presented key is compared
  with every configured key in constant time (hmac.compare_digest), so the
  answer's timing tells nothing about how much of a key was right. Only a
  key's name ever reaches a log.
- Rate limits (REACH_RATE_LIMIT, needs keys): at most N requests to /v1/*
  per key in any 60 seconds, per worker; past it 429 `rate_limited` with
  Retry-After, the seconds until the oldest counted request leaves the window.
- The in-flight bound (REACH_MAX_IN_FLIGHT): at most N model requests (a
  POST to /v1/*) compute at once in a worker; one more is answered 429
  `overloaded` with Retry-After at once, never queued. A gunicorn worker
  must be able to hold more connections than that (gthread workers with more
  threads than the bound: server/gunicorn_config.py), otherwise the excess
  would wait in the listen queue where the app cannot see it.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from server.errors import ApiError

__all__ = ["InFlightBound", "KeyRing", "RateLimiter"]

# What a client told "come back later" should wait, in seconds, when nothing better is known: a request in flight
# takes from milliseconds to a few seconds (docs/BENCHMARKS.md).
RETRY_AFTER_SECONDS = 1


class KeyRing:
    """The configured API keys, name -> key; empty: no key is needed."""

    def __init__(self, keys: dict[str, str]):
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, authorization: str | None) -> str:
        """The name of the key an `Authorization` header carries, or a 401 ApiError (missing or invalid key)."""
        challenge = {"WWW-Authenticate": 'Bearer realm="reach"'}
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "missing_api_key", "this server needs an API key: send the header "
                           "'Authorization: Bearer KEY'", headers=challenge)
        presented_bytes = presented.strip().encode("utf-8", "replace")
        found = None
        for name, key in self._keys:  # every key compared, whichever matches: the time does not depend on which
            if hmac.compare_digest(presented_bytes, key):
                found = name
        if found is None:
            raise ApiError(401, "invalid_api_key", "the API key sent is not one of this server's keys",
                           headers=challenge)
        return found


@dataclass
class RateLimiter:
    """At most `per_minute` requests per key in any 60 seconds (this process); 0: no limit."""

    per_minute: int
    _seen: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, key: str, now: float | None = None) -> None:
        """Count a request of `key`, or raise a 429 ApiError when its last minute is full."""
        if not self.per_minute:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and times[0] <= now - 60:
                times.popleft()
            if len(times) >= self.per_minute:
                wait = max(1, math.ceil(times[0] + 60 - now))
                raise ApiError(429, "rate_limited", f"this key's limit of {self.per_minute} requests a minute is "
                               f"reached; retry in {wait} s", headers={"Retry-After": str(wait)})
            times.append(now)


class InFlightBound:
    """A non-blocking bound on the model requests computing at once in this process."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def enter(self) -> None:
        """Take a slot, or raise a 429 ApiError at once when none is free (never wait for one)."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(429, "overloaded", f"the server is at its limit of {self.limit} requests in flight per "
                           f"worker; retry in {RETRY_AFTER_SECONDS} s",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def leave(self) -> None:
        self._slots.release()
