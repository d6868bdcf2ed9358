"""The OpenAPI document, generated from the endpoints' declarations (server/operations.py) and their pydantic models.

Nothing here is written by hand but the document's frame: every schema is
a request or answer model's own JSON Schema (OpenAPI 3.1 is JSON Schema
2020-12), with the configured limits in it, so the document, the server's
validation and its answers cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.operations import Limits, Operation
from server.protocol import ErrorBody

__all__ = ["all_operations", "openapi_document"]

REF = "#/components/schemas/{model}"


def all_operations(limits: Limits) -> list[Operation]:
    """Every endpoint the app serves, from each blueprint module's `operations`."""
    from server.completions import operations as completions
    from server.metrics import operations as metrics
    from server.routes import operations as reach

    return [*reach(limits), *completions(limits), *metrics()]


def openapi_document(limits: Limits) -> dict:
    """The API as OpenAPI 3.1."""
    operations = all_operations(limits)
    wanted: list[tuple[type[BaseModel], str]] = [(ErrorBody, "serialization")]
    for operation in operations:
        if operation.request is not None:
            wanted.append((operation.request, "validation"))
        for model in (operation.response, operation.stream_event):
            if model is not None:
                wanted.append((model, "serialization"))
    wanted = list(dict.fromkeys(wanted))
    refs, definitions = models_json_schema(wanted, ref_template=REF)
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict] = {}
    for operation in operations:
        entry: dict = {"summary": operation.summary, "tags": list(operation.tags)}
        if operation.description:
            entry["description"] = operation.description
        if operation.request is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(operation.request, "validation")]}}}
        if operation.response is not None:
            content = {operation.content_type: {"schema": refs[(operation.response, "serialization")]}}
        else:
            content = {operation.content_type: {}}
        if operation.stream_event is not None:
            content["text/event-stream"] = {
                "schema": {"type": "string", "description": "with \"stream\": true: server-sent events, each `data:` "
                           "line one JSON object (x-event-schema), an error as an `event: error` line with the error "
                           "body, and `data: [DONE]` last"},
                "x-event-schema": refs[(operation.stream_event, "serialization")]}
        responses = {"200": {"description": "success", "content": content}}
        for status, when in sorted(operation.errors.items()):
            responses[str(status)] = {"description": when, "content": {"application/json": {"schema": error_ref}}}
        entry["responses"] = responses
        paths.setdefault(operation.path, {})[operation.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "Reach", "version": "1",
                 "description": "Next-word predictions from recurrent language models, each with how far back its "
                                "gradient influence reaches; an OpenAI-compatible completions endpoint. Errors are "
                                "{\"error\": {\"code\", \"message\", \"type\", \"param\"}}. Limits: text "
                                f"{limits.max_text_chars} characters, body {limits.max_body} bytes, k {limits.max_k}, "
                                f"{limits.max_generate_words} generated words, {limits.max_context_units} units of "
                                "context read."},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }
