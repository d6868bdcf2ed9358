"""The OpenAPI document: valid OpenAPI 3, the same routes as the app, and real responses that fit its schemas."""

import copy

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate


def _inline(node, schemas):
    """Replace every {"$ref": "#/components/schemas/X"} by the schema itself."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(copy.deepcopy(schemas[node["$ref"].rsplit("/", 1)[1]]), schemas)
        return {key: _inline(value, schemas) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, schemas) for value in node]
    return node


@pytest.fixture(scope="module")
def document(app):
    return app.test_client().get("/openapi.json").get_json()


def _schema(document, path, method, status):
    content = document["paths"][path][method]["responses"][status]["content"]["application/json"]
    return _inline(content["schema"], document["components"]["schemas"])


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_schema_comes_from_a_model_and_every_error_is_declared(document):
    """The schemas are the pydantic models' (titles and descriptions come from the classes), and each body endpoint
    declares the statuses the server really returns."""
    schemas = document["components"]["schemas"]
    for name in ("PredictRequest", "PredictResponse", "GenerateRequest", "GenerateResponse", "ModelsResponse", "ModelCard",
                 "ErrorBody", "Reach", "Pointer"):
        assert schemas[name]["title"] == name
    assert schemas["PredictRequest"]["properties"]["cache"]["deprecated"] is True
    text = str(schemas)
    assert "'ge':" not in text and "'le':" not in text, "a bound pydantic could not state as minimum/maximum"
    for path in ("/v1/predict", "/v1/generate"):
        declared = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "405", "413", "415", "422", "500"} <= set(declared)
        assert "text/event-stream" in declared["200"]["content"] or path == "/v1/predict"


def test_the_document_lists_exactly_the_app_routes(app, document):
    routes = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules() if not rule.rule.startswith("/static")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == documented


def test_limits_in_the_document_are_the_configured_ones(app, document):
    properties = document["components"]["schemas"]["PredictRequest"]["properties"]
    assert properties["text"]["maxLength"] == app.config["REACH_MAX_TEXT_CHARS"]
    assert "pattern" in properties["text"]  # the control characters the server refuses
    assert properties["k"]["maximum"] == app.config["REACH_MAX_K"]
    generate = document["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["max_words"]["maximum"] == app.config["REACH_MAX_GENERATE_WORDS"]
    assert generate["top_k"]["maximum"] == app.config["REACH_MAX_K"]


@pytest.mark.parametrize("body", [
    {"text": "It was the ", "attribution": "full", "verify": True},
    {"text": "The capi", "model": "subword"},
    {"text": "", "attribution": "none"},
])
def test_real_predict_responses_fit_the_schema(client, document, body):
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200
    OAS31Validator(_schema(document, "/v1/predict", "post", "200")).validate(response.get_json())


@pytest.mark.parametrize("body", [
    {"text": "The album was ", "max_words": 5, "seed": 1},
    {"text": "The capi", "model": "subword", "top_k": 3, "top_p": 0.9, "temperature": 0.8, "seed": None},
    {"text": "= Valkyria Chronicles =", "stop_at_newline": True, "max_words": 30, "seed": 2},
])
def test_real_generate_responses_fit_the_schema(client, document, body):
    request_schema = _inline(document["components"]["schemas"]["GenerateRequest"], document["components"]["schemas"])
    OAS31Validator(request_schema).validate(body)
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200
    OAS31Validator(_schema(document, "/v1/generate", "post", "200")).validate(response.get_json())
    OAS31Validator(_schema(document, "/v1/generate", "post", "422")).validate(
        client.post("/v1/generate", json={**body, "max_words": 0}).get_json())
    with pytest.raises(Exception):
        OAS31Validator(request_schema).validate({**body, "top_p": 0})


def test_real_error_and_other_responses_fit_the_schemas(client, document):
    OAS31Validator(_schema(document, "/v1/predict", "post", "422")).validate(client.post("/v1/predict", json={"text": "a", "k": 0}).get_json())
    OAS31Validator(_schema(document, "/v1/models", "get", "200")).validate(client.get("/v1/models").get_json())
    OAS31Validator(_schema(document, "/readyz", "get", "200")).validate(client.get("/readyz").get_json())
    request_schema = _inline(document["components"]["schemas"]["PredictRequest"], document["components"]["schemas"])
    OAS31Validator(request_schema).validate({"text": "hi", "k": 3, "attribution": "full", "threshold": 0.05})
    with pytest.raises(Exception):
        OAS31Validator(request_schema).validate({"text": "hi", "k": 0})
