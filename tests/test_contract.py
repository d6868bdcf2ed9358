"""The contract, fuzzed: requests generated from the published /openapi.json, and arbitrary JSON, against the app.

For every endpoint that takes a body, two property tests:
- bodies the schema calls valid (drawn from the request schema itself by
  `from_schema`, which reads every JSON Schema keyword the models emit and
  refuses any other, so a new construct cannot go unfuzzed) are answered with 200, or 404 `unknown_model` when
  they name a model the server does not serve; the answer fits the declared
  response schema (each server-sent event too, when the body asks to stream);
- arbitrary JSON bodies (known fields with values of every JSON type and
  range, unknown fields, control characters) are judged by the schema and by
  the server alike: valid ones as above, invalid ones with a declared 4xx
  status and the error body's schema; never a 5xx.
The draws are derandomized, so the suite fuzzes the same requests every run.
REACH_FUZZ_EXAMPLES=N draws N bodies of each kind per endpoint instead (and
a fresh seed with REACH_FUZZ_RANDOM=1); the counts of requests and answers
are printed (`pytest -s`).
"""

from __future__ import annotations

import collections
import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
import re
from jsonschema import Draft202012Validator

LIMITS = {"REACH_MAX_TEXT_CHARS": 120, "REACH_MAX_K": 4, "REACH_MAX_GENERATE_WORDS": 3, "REACH_MAX_CONTEXT_UNITS": 200,
          "MAX_CONTENT_LENGTH": 16 * 1024}
EXAMPLES = int(os.environ.get("REACH_FUZZ_EXAMPLES", "0"))
# Training sets the CPU to flush denormals (lm/train/run.py), and the suite trains in this process before fuzzing:
# hypothesis cannot draw subnormal floats then, so none are drawn (5e-324 as a text's temperature was one of them).
FUZZ = settings(max_examples=EXAMPLES or 40, deadline=None, derandomize=not os.environ.get("REACH_FUZZ_RANDOM"),
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
COUNTS: collections.Counter = collections.Counter()  # (endpoint, schema verdict, status) -> requests


def inline(node, schemas):
    """The schema with every {"$ref": "#/components/schemas/X"} replaced by X itself."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline(copy.deepcopy(schemas[node["$ref"].rsplit("/", 1)[1]]), schemas)
        return {key: inline(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [inline(value, schemas) for value in node]
    return node


@pytest.fixture(scope="module")
def fuzzed_app(tiny_run, tiny_subword_run):
    from server import create_app

    return create_app({"REACH_MODELS": {"char": str(tiny_run.out), "subword": str(tiny_subword_run.out / "best")}, **LIMITS})


@pytest.fixture(scope="module")
def document(fuzzed_app):
    return fuzzed_app.test_client().get("/openapi.json").get_json()


def body_operations(document) -> list[tuple[str, str]]:
    return [(path, method) for path, item in document["paths"].items() for method, entry in item.items()
            if "requestBody" in entry]


class Judge:
    """Posts a body and checks the answer against the document."""

    def __init__(self, app, document, path, method):
        self.client = app.test_client()
        self.path, self.method = path, method
        schemas = document["components"]["schemas"]
        entry = document["paths"][path][method]
        self.request_schema = inline(entry["requestBody"]["content"]["application/json"]["schema"], schemas)
        self.validator = Draft202012Validator(self.request_schema)
        self.responses = entry["responses"]
        content = self.responses["200"]["content"]
        self.ok = Draft202012Validator(inline(content["application/json"]["schema"], schemas))
        stream = content.get("text/event-stream")
        self.event = Draft202012Validator(inline(stream["x-event-schema"], schemas)) if stream else None
        self.error = Draft202012Validator(inline(schemas["ErrorBody"], schemas))
        self.served = set(app.extensions["reach"].models)

    def post(self, body):
        response = self.client.open(self.path, method=self.method.upper(), data=json.dumps(body),
                                    content_type="application/json")
        COUNTS[self.path, "valid" if isinstance(body, dict) and self.validator.is_valid(body) else "invalid",
               response.status_code] += 1
        assert response.status_code < 500, (body, response.get_data(as_text=True))
        assert str(response.status_code) in self.responses, f"undeclared status {response.status_code} for {body!r}"
        return response

    def check_valid(self, body):
        self.validator.validate(body)  # the drawn body is valid: from_schema agrees with the schema
        response = self.post(body)
        if response.status_code == 404:
            assert response.get_json()["error"]["code"] == "unknown_model", (body, response.get_json())
            assert body.get("model") not in self.served
            return
        assert response.status_code == 200, (body, response.get_data(as_text=True))
        if response.mimetype == "text/event-stream":
            assert self.event is not None, "a stream from an endpoint that declares none"
            lines = [line[len("data: "):] for line in response.get_data(as_text=True).splitlines() if line.startswith("data: ")]
            assert lines and lines[-1] == "[DONE]", lines[-3:]
            for line in lines[:-1]:
                self.event.validate(json.loads(line))
        else:
            self.ok.validate(response.get_json())

    def check_any(self, body):
        if isinstance(body, dict) and self.validator.is_valid(body):
            self.check_valid(body)
            return
        response = self.post(body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.get_data(as_text=True))
        self.error.validate(response.get_json())


# The keywords `from_schema` understands; pydantic's annotations (title, description, default ...) change nothing.
KEYWORDS = {"type", "properties", "required", "additionalProperties", "enum", "const", "anyOf", "oneOf", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "items", "minItems", "maxItems",
            "maxProperties"}
NOTES = {"title", "description", "default", "deprecated", "examples"}


def from_schema(schema: dict):
    """A strategy for the JSON values `schema` accepts (the subset of JSON Schema the request models use)."""
    unknown = set(schema) - KEYWORDS - NOTES
    assert not unknown, f"from_schema cannot draw {sorted(unknown)} yet: extend it ({schema})"
    if "anyOf" in schema or "oneOf" in schema:  # oneOf: the models' options are of different JSON types, so disjoint
        return st.one_of([from_schema(option) for option in schema.get("anyOf", schema.get("oneOf"))])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -2**63 - 1) + 1 if "exclusiveMinimum" in schema else None)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 2**63 + 1) - 1 if "exclusiveMaximum" in schema else None)
        return st.integers(low, high)
    if kind == "number":
        low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum", schema.get("exclusiveMaximum"))
        # Exclusive bounds moved in by a normal step (hypothesis's own next float above 0 is subnormal).
        inner_low = None if low is None else low + max(abs(low), 1.0) * 1e-12 if "exclusiveMinimum" in schema else low
        inner_high = None if high is None else high - max(abs(high), 1.0) * 1e-12 if "exclusiveMaximum" in schema else high
        floats = st.floats(inner_low, inner_high, allow_nan=False, allow_infinity=False, allow_subnormal=False)
        whole = st.integers(None if low is None else int(low) + 1, None if high is None else int(high) - 1)
        return floats | (whole if (low is None or high is None or int(high) - int(low) >= 2) else st.nothing())
    if kind == "string":
        pattern = re.compile(schema.get("pattern", ".*"), re.DOTALL)
        characters = st.characters(codec="utf-8").filter(lambda char: pattern.fullmatch(char) is not None)
        longest = schema.get("maxLength", 80)
        texts = st.text(characters, min_size=schema.get("minLength", 0), max_size=min(longest, 80))
        words = st.lists(st.sampled_from(["The", "the", "capi", "of", "album", "was", " ", "\n", ",", "Valkyria", "é", "\r\n"]),
                         max_size=12).map(" ".join).filter(lambda text: len(text) <= longest)
        shortest = schema.get("minLength", 0)
        return texts | (words | st.just("x" * longest)).filter(lambda text: len(text) >= shortest)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        extra = schema.get("additionalProperties", False)
        if not properties and isinstance(extra, dict):  # a map: at most maxProperties entries of that schema
            return st.dictionaries(st.text(max_size=5), from_schema(extra), max_size=min(schema.get("maxProperties", 3), 3))
        return st.fixed_dictionaries({name: from_schema(properties[name]) for name in required},
                                     optional={name: from_schema(sub) for name, sub in properties.items()
                                               if name not in required})
    raise AssertionError(f"from_schema cannot draw {schema}")


def with_model(judge: Judge):
    """Valid bodies, most of them naming a served model (or none) so that they reach the model."""
    names = sorted(judge.served)

    def choose(pair):
        body, pick = pair
        body = dict(body)
        if pick == "absent" and "model" not in judge.request_schema.get("required", []):
            body.pop("model", None)
        elif pick in names:
            body["model"] = pick
        return body

    return st.tuples(from_schema(judge.request_schema), st.sampled_from(["absent", *names, "drawn"])).map(choose)


def json_values():
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-3, 30)
               | st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False) | st.sampled_from([0.0, 1.0, 2.0, 0.5, 100.0, 1e-9])
               | st.text(max_size=40) | st.text(st.characters(max_codepoint=0x9f), max_size=8)
               | st.sampled_from(["char", "subword", "none", "full", "summary", "saliency", "grad_x_input", "\n", "\r\n",
                                  "a\tb", "x" * 121, "\u0085", "é" * 60]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=2), max_leaves=6)


def arbitrary_bodies(judge: Judge):
    known = sorted(judge.request_schema.get("properties", {}))
    keys = st.sampled_from(known) | st.text(min_size=1, max_size=6)
    objects = st.dictionaries(keys, json_values(), max_size=6)
    near_valid = st.tuples(from_schema(judge.request_schema), st.sampled_from(known), json_values()).map(
        lambda triple: {**triple[0], triple[1]: triple[2]})
    # Values of the right JSON type at and across the bounds (the limits in LIMITS, the ranges of the fields).
    edges = st.sampled_from([-1, 0, 1, 3, 4, 5, 50, 121, 2**63 - 1, 2**63, 0.0, 1.0, 1.5, -0.5, 0.999, 100.0, 100.5, 1e-300,
                             "", "x" * 120, "x" * 121, "\u0007", True, False, None])
    at_bounds = st.tuples(from_schema(judge.request_schema), st.sampled_from(known), edges).map(
        lambda triple: {**triple[0], triple[1]: triple[2]})
    return st.one_of(near_valid, at_bounds, at_bounds, objects, json_values())


def test_the_fuzzed_app_declares_body_endpoints(document):
    assert ("/v1/predict", "post") in body_operations(document)
    assert ("/v1/generate", "post") in body_operations(document)


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/generate", "/v1/completions"])
def test_bodies_the_schema_accepts_are_served(fuzzed_app, document, path):
    if (path, "post") not in body_operations(document):
        pytest.skip(f"{path} takes no body here")
    judge = Judge(fuzzed_app, document, path, "post")

    @FUZZ
    @given(body=with_model(judge))
    def run(body):
        judge.check_valid(body)

    run()


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/generate", "/v1/completions"])
def test_the_schema_and_the_server_judge_arbitrary_bodies_alike(fuzzed_app, document, path):
    if (path, "post") not in body_operations(document):
        pytest.skip(f"{path} takes no body here")
    judge = Judge(fuzzed_app, document, path, "post")

    @settings(FUZZ, max_examples=EXAMPLES or 150)
    @given(body=arbitrary_bodies(judge))
    def run(body):
        judge.check_any(body)

    run()


def test_malformed_and_non_json_bodies_get_declared_errors(fuzzed_app, document):
    client = fuzzed_app.test_client()
    for path, method in body_operations(document):
        declared = document["paths"][path][method]["responses"]
        for data, content_type, status in (("{", "application/json", 400), ("text", "text/plain", 415),
                                           ("[1]", "application/json", 400), ("x" * (LIMITS["MAX_CONTENT_LENGTH"] + 1),
                                                                              "application/json", 413)):
            response = client.open(path, method=method.upper(), data=data, content_type=content_type)
            assert response.status_code == status and str(status) in declared, (path, data[:10], response.status_code)
            error = response.get_json()["error"]
            assert set(error) == {"code", "message", "type", "param", "request_id"}
            assert error["request_id"] == response.headers["X-Request-ID"]


def teardown_module():
    """The fuzzing's counts: requests by endpoint, the schema's verdict and the server's status."""
    if COUNTS:
        print(f"\nfuzzed {sum(COUNTS.values())} requests:")
        for (path, verdict, status), count in sorted(COUNTS.items()):
            print(f"  {path:<16} schema {verdict:<7} -> {status}: {count}")
