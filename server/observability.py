"""Each request's way through the app: its id, the access checks, the metrics and its access-log line.

In order, for every request:
1. its id: the client's `X-Request-ID` when it is a plain token (letters,
   digits and `-_.:`, at most 128 characters), else a new one; it goes back
   in the response's `X-Request-ID` header, in any error body, and in the log;
2. for /v1/*: the API key (when keys are set), the key's rate limit, then,
   for a model request (a POST), a slot under the in-flight bound
   (server/access.py); a refusal is the usual JSON error;
3. at its end (Flask's teardown; for a streamed answer, after its last
   event, or when the client goes away and the response is closed): the slot is
   given back, the metrics count it (server/metrics.py), and one access-log
   line is written: a JSON object with the id, method, endpoint, model,
   status, milliseconds, the characters of its text and the key's name. The
   text itself never goes in the log, nor does a key.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from server.access import InFlightBound, KeyRing, RateLimiter
from server.metrics import RequestRecord

__all__ = ["ACCESS_LOG", "install_request_hooks", "note_generated_words", "note_model", "request_id_of"]

ACCESS_LOG = "server.access"
access_log = logging.getLogger(ACCESS_LOG)
HEADER = "X-Request-ID"
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(sent: str | None) -> str:
    """The id of a request: the client's when it is a plain token, else a new random one (32 hex digits)."""
    if sent and _TOKEN.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def note_model(name: str) -> None:
    """Record which served model the current request uses (its metrics and log line name it)."""
    g.reach_model = name


def note_generated_words(count: int) -> None:
    """Add words generated for the current request (the generated-words metric and the log line count them)."""
    g.reach_generated_words = g.get("reach_generated_words", 0) + count


def _json_body() -> object:
    """The request's JSON body for the log line, or None: not JSON, malformed, without a declared length, or
    refused for its size (a body over MAX_CONTENT_LENGTH is never read here, and one that breaks off raises
    nothing)."""
    if not request.is_json:
        return None
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None or (limit is not None and request.content_length > limit):
        return None
    try:
        return request.get_json(silent=True)
    except HTTPException:
        return None


def _text_chars() -> int | None:
    """Characters of the request's "text" or "prompt" (a list of prompts: all of them), None without one."""
    body = _json_body()
    if not isinstance(body, dict):
        return None
    text = body.get("text", body.get("prompt"))
    if isinstance(text, str):
        return len(text)
    if isinstance(text, list):
        return sum(len(item) for item in text if isinstance(item, str))
    return None


def _attribution() -> str:
    """/v1/predict's attribution mode as asked ("summary" when not given), "" for every other endpoint."""
    if request.url_rule is None or request.url_rule.rule != "/v1/predict":
        return ""
    body = _json_body()
    asked = body.get("attribution") if isinstance(body, dict) else None
    return asked if asked in ("none", "summary", "full") else "summary"


def install_request_hooks(app: Flask, keys: KeyRing, limiter: RateLimiter, bound: InFlightBound) -> None:
    """Register the hooks above on `app` (before the blueprints, so that they run first)."""

    @app.before_request
    def begin() -> None:
        g.request_id = request_id_of(request.headers.get(HEADER))
        g.reach_started = time.perf_counter()
        g.reach_slot = False
        metrics = app.extensions.get("reach_metrics")
        if metrics is not None:
            metrics.started()
            g.reach_counted = True
        if not request.path.startswith("/v1/"):
            return
        if keys:
            g.reach_key = keys.check(request.headers.get("Authorization"))
            limiter.admit(g.reach_key)
        if request.method == "POST":
            bound.enter()
            g.reach_slot = True

    @app.after_request
    def stamp(response: Response) -> Response:
        response.headers[HEADER] = g.get("request_id") or request_id_of(None)
        g.reach_status = response.status_code
        if response.is_streamed and g.get("reach_slot") and "reach_started" in g:
            # A streamed model answer is computed while it is sent, after the view has returned (and Flask's
            # teardown may run before its first event): its slot, its metrics and its log line wait for its last
            # event, or for the response to be closed or dropped when the client goes away.
            g.reach_deferred = True
            response.response = _then(response.response, functools.partial(
                _end_request, app, bound, g._get_current_object(), _request_fields(), None))
        return response

    @app.teardown_request
    def finish(error: BaseException | None) -> None:
        if g.get("reach_deferred"):
            return
        _end_request(app, bound, g._get_current_object(), _request_fields(), error)


def _then(body: Iterable[bytes], end: Callable[[], None]) -> Iterator[bytes]:
    """`body`'s chunks, then `end()`: after the last chunk, or when the response is closed or collected first
    (a generator's `finally`); `body` is closed either way."""
    try:
        yield from body
    finally:
        try:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        finally:
            end()


class _RequestFields(NamedTuple):
    """What the log line takes from the request itself (read while its context is there)."""

    method: str
    endpoint: str
    text_chars: int | None
    attribution: str


def _request_fields() -> _RequestFields:
    return _RequestFields(method=request.method,
                          endpoint=request.url_rule.rule if request.url_rule is not None else "unmatched",
                          text_chars=_text_chars(), attribution=_attribution())


def _end_request(app: Flask, bound: InFlightBound, state: object, fields: _RequestFields,
                 error: BaseException | None) -> None:
    """Give back the request's slot, count it and write its log line; `state` is the request's `flask.g` (kept past
    its context for a streamed answer). Runs once: a second call finds nothing to do."""
    if getattr(state, "reach_slot", False):
        state.reach_slot = False
        bound.leave()
    started = getattr(state, "reach_started", None)
    if started is None:
        return
    del state.reach_started
    record = RequestRecord(
        request_id=getattr(state, "request_id", None) or "-", method=fields.method, endpoint=fields.endpoint,
        model=getattr(state, "reach_model", ""), status=getattr(state, "reach_status", 500 if error else 200),
        seconds=time.perf_counter() - started, text_chars=fields.text_chars, attribution=fields.attribution,
        generated_words=getattr(state, "reach_generated_words", 0), key=getattr(state, "reach_key", None))
    metrics = app.extensions.get("reach_metrics")
    if metrics is not None and getattr(state, "reach_counted", False):
        state.reach_counted = False
        metrics.finished(record, app.extensions["reach"])
    access_log.info("%s", json.dumps({
        "request_id": record.request_id, "method": record.method, "endpoint": record.endpoint,
        "model": record.model or None, "status": record.status, "ms": round(1000 * record.seconds, 1),
        "text_chars": record.text_chars, "attribution": record.attribution or None,
        "generated_words": record.generated_words or None, "key": record.key}))
