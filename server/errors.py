"""Every error the API returns: one exception class and the handlers that turn errors into JSON.

The body is always {"error": {"code": str, "message": str, "type": str,
"param": str | null, "request_id": str}} (server/protocol.py's `ErrorBody`):
codes are stable (clients and tests rely on them), messages are for people,
`type` is the error's class in OpenAI's terms (so that OpenAI clients show it
as they expect), `param` names the request field at fault, when one is, and
`request_id` is the request's X-Request-ID (server/observability.py), to find
its log line.
"""

from __future__ import annotations

import logging

from flask import Flask, g, has_request_context, jsonify
from werkzeug.exceptions import HTTPException

__all__ = ["ApiError", "ERROR_TYPES", "current_request_id", "error_payload", "error_type", "register_error_handlers"]

log = logging.getLogger(__name__)

# Codes for the HTTP errors Flask and Werkzeug raise themselves.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}  # sent with the error (Retry-After with a 429, WWW-Authenticate with a 401)


# The error's class in OpenAI's terms, by HTTP status.
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
               500: "server_error", 503: "server_error"}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status: client errors are invalid requests unless named above."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def current_request_id() -> str | None:
    """The request id of the request being handled (None outside a request, or before it was given one)."""
    return g.get("request_id") if has_request_context() else None


def error_payload(status: int, code: str, message: str, param: str | None = None) -> dict:
    """The JSON error body, server/protocol.py's `ErrorBody` (also sent as a server-sent event when a stream fails
    after it started), with the current request's id."""
    from server.protocol import ErrorBody, ErrorDetail

    request_id = current_request_id()
    extra = {"request_id": request_id} if request_id is not None else {}
    return ErrorBody(error=ErrorDetail(code=code, message=message, type=error_type(status), param=param,
                                       **extra)).model_dump()


def _body(status: int, code: str, message: str, param: str | None = None):
    response = jsonify(error_payload(status, code, message, param))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn ApiError, HTTP errors and anything unexpected into JSON errors."""

    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        response = _body(error.status, error.code, error.message, error.param)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = error.description or error.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body is larger than the limit of {limit} bytes"
        response = _body(status, code, message)
        if status == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unexpected error while handling request %s", current_request_id() or "-")
        return _body(500, "internal_error", "an unexpected error occurred; it has been logged")
