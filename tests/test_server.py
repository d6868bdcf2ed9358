"""The HTTP API through Flask's test client: every route, every error class, limits, concurrency, random input."""

import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import external_references
from server import create_app

TEXT = "The album was released in the United States in 1998, and it was "


def _post(client, body, **kwargs):
    return client.post("/v1/predict", json=body, **kwargs)


def _error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]["message"]


def test_predict_summary_has_reach_for_every_prediction(client):
    response = _post(client, {"text": TEXT})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == "char" and body["completing"] is False
    assert body["context"] == {"tokens": len(TEXT), "words": len(TEXT.split()), "chars": len(TEXT), "truncated": False, "dropped_chars": 0, "unknown_units": 0}
    assert len(body["predictions"]) == 5
    for prediction in body["predictions"]:
        assert set(prediction["reach"]) >= {"tokens", "words", "chars", "mass90_tokens", "mass99_tokens", "threshold"}
        assert "influence" not in prediction
        assert 0 < prediction["probability"] <= 1
    assert sum(p["probability"] for p in body["predictions"]) <= 1
    assert body["attribution"]["initial_state"].startswith("zero")


def test_predict_full_lists_units_and_words(client):
    body = _post(client, {"text": "The capi", "attribution": "full", "k": 2, "model": "subword"}).get_json()
    assert body["model"] == "subword" and body["completing"] is True and body["partial"] == "capi"
    first = body["predictions"][0]
    assert first["word"].startswith("capi") and first["remainder"] == first["word"][4:]
    units = first["influence"]
    assert [u["text"] for u in units] == ["The"] or "".join(u["text"] for u in units) == "The"
    assert {"text", "start", "end", "score", "word"} <= set(units[0]) and first["word_influence"][0]["text"] == "The"


def test_predict_without_attribution(client):
    body = _post(client, {"text": TEXT, "attribution": "none", "k": 3}).get_json()
    assert len(body["predictions"]) == 3 and all("reach" not in p for p in body["predictions"])


def test_threshold_method_and_verify_are_honoured(client):
    loose = _post(client, {"text": TEXT, "k": 1, "threshold": 0.5}).get_json()["predictions"][0]["reach"]
    tight = _post(client, {"text": TEXT, "k": 1, "threshold": 0.0001}).get_json()["predictions"][0]["reach"]
    assert loose["threshold"] == 0.5 and loose["tokens"] <= tight["tokens"]
    body = _post(client, {"text": TEXT, "k": 1, "method": "grad_x_input", "verify": True}).get_json()
    assert body["attribution"]["method"] == "grad_x_input" and "logprob_change" in body["predictions"][0]["faithfulness"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_and_blank_text_predict_a_first_word(client, text):
    body = _post(client, {"text": text, "k": 2}).get_json()
    assert body["context"]["tokens"] == text.count("\n") and len(body["predictions"]) == 2  # line breaks are kept
    assert body["completing"] is False


def test_line_endings_and_tabs_are_normalised(client):
    body = _post(client, {"text": "One line.\r\nAnother\tline ", "attribution": "none"}).get_json()
    assert body["text"] == "One line.\nAnother line "


def test_characters_the_model_never_saw_are_counted(client):
    body = _post(client, {"text": "The 杜甫 poem is ", "attribution": "none"}).get_json()
    assert body["context"]["unknown_units"] == 2
    body = _post(client, {"text": "The 杜甫 poem is ", "attribution": "none", "model": "subword"}).get_json()
    assert body["context"]["unknown_units"] >= 2  # spelled as UTF-8 bytes


def test_models_card(client):
    body = client.get("/v1/models").get_json()
    assert body["default"] == "char" and [m["name"] for m in body["models"]] == ["char", "subword"]
    card = body["models"][0]
    assert card["cell"] == "lstm" and card["tokenizer"]["kind"] == "char" and card["parameters"] > 0
    assert card["bptt"]["k1"] == card["bptt"]["k2"] == 32 and card["training_tokens"] > 0
    assert card["clipping"]["clip_norm"] == 0.5 and card["heldout"]["test"]["bpc"] > 0
    assert 0 <= card["heldout"]["next_word_accuracy"]["top1"] <= 1


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "models": ["char", "subword"]}
    empty = create_app({"TESTING": True, "REACH_MODELS": {}}).test_client()
    _error(empty.get("/readyz"), 503, "not_ready")
    assert empty.get("/healthz").status_code == 200
    _error(_post(empty, {"text": "x"}), 404, "unknown_model")


def test_web_page_is_served_without_external_resources(client):
    with client.get("/") as page:
        assert page.status_code == 200 and b"<textarea" in page.data
        assert external_references(page.get_data(as_text=True)) == []
    with client.get("/static/app.js") as script:
        assert script.status_code == 200 and b"/v1/predict" in script.data and b"https://" not in script.data


@pytest.mark.parametrize("body, status, code", [
    ({"k": 3}, 400, "missing_field"),
    ({"text": 5}, 400, "invalid_type"),
    ({"text": "a", "k": "5"}, 400, "invalid_type"),
    ({"text": "a", "k": True}, 400, "invalid_type"),
    ({"text": "a", "k": 2.5}, 400, "invalid_type"),
    ({"text": "a", "threshold": "0.1"}, 400, "invalid_type"),
    ({"text": "a", "verify": 1}, 400, "invalid_type"),
    ({"text": "a", "model": 7}, 400, "invalid_type"),
    ({"text": "a", "colour": "red"}, 400, "unknown_field"),
    ({"text": "a", "model": "gpt"}, 404, "unknown_model"),
    ({"text": "a", "model": "../runs/other"}, 404, "unknown_model"),
    ({"text": "a", "k": 0}, 422, "invalid_value"),
    ({"text": "a", "k": 21}, 422, "invalid_value"),
    ({"text": "a", "threshold": 0}, 422, "invalid_value"),
    ({"text": "a", "threshold": 1.5}, 422, "invalid_value"),
    ({"text": "a", "method": "lime"}, 422, "invalid_value"),
    ({"text": "a", "attribution": "some"}, 422, "invalid_value"),
    ({"text": "bell \u0007 here"}, 422, "invalid_text"),
    ({"text": "x" * 20_001}, 413, "text_too_long"),
])
def test_bad_requests_get_json_errors_with_stable_codes(client, body, status, code):
    _error(_post(client, body), status, code)


def test_transport_errors_are_json_too(client):
    _error(client.post("/v1/predict", data="{oops", content_type="application/json"), 400, "malformed_json")
    _error(client.post("/v1/predict", data="[1, 2]", content_type="application/json"), 400, "invalid_type")
    _error(client.post("/v1/predict", data="text=hi", content_type="application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    _error(client.post("/v1/predict", data=b'{"text": "' + b"a" * 70_000 + b'"}', content_type="application/json"), 413, "body_too_large")
    response = client.get("/v1/predict")
    _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    _error(client.delete("/v1/models"), 405, "method_not_allowed")
    _error(client.get("/v2/anything"), 404, "not_found")
    _error(client.post("/v1/predict", data=json.dumps({"text": "a", "threshold": float("nan")}), content_type="application/json"),
           422, "invalid_value")


def test_limits_are_configurable(tiny_run):
    small = create_app({"TESTING": True, "REACH_MODELS": {"m": str(tiny_run.out)}, "REACH_MAX_TEXT_CHARS": 10,
                        "REACH_MAX_K": 2, "MAX_CONTENT_LENGTH": 200, "REACH_MAX_CONTEXT_UNITS": 8}).test_client()
    _error(_post(small, {"text": "x" * 11}), 413, "text_too_long")
    _error(_post(small, {"text": "x", "k": 3}), 422, "invalid_value")
    _error(small.post("/v1/predict", data=json.dumps({"text": "y" * 300}), content_type="application/json"), 413, "body_too_large")
    body = _post(small, {"text": "abc def g "}).get_json()
    assert body["context"]["truncated"] is True and body["context"]["tokens"] <= 8


def test_unexpected_errors_are_500_without_internals(app, client, monkeypatch):
    import server.routes

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail /home/user/model.py line 3")

    monkeypatch.setattr(server.routes, "attribute", broken)
    message = _error(_post(client, {"text": "a "}), 500, "internal_error")
    assert "secret" not in message


def test_concurrent_requests_get_the_answers_of_sequential_ones(app):
    texts = [TEXT, "The capi", "In 1990 the band ", "", "It was a ", "He said, "]
    sequential = {text: app.test_client().post("/v1/predict", json={"text": text, "attribution": "full", "k": 3}).get_json() for text in texts}
    results, errors = {}, []

    def worker(index):
        try:
            text = texts[index % len(texts)]
            body = app.test_client().post("/v1/predict", json={"text": text, "attribution": "full", "k": 3}).get_json()
            results[index] = (text, body)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(18)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 18
    for text, body in results.values():
        expected = sequential[text]
        assert [p["word"] for p in body["predictions"]] == [p["word"] for p in expected["predictions"]]
        for got, want in zip(body["predictions"], expected["predictions"]):
            assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-5)
            assert got["reach"] == want["reach"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_subnormal=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"text": st.text(max_size=80)}, optional={
        "k": st.one_of(st.integers(-3, 30), st.text(max_size=3), st.booleans()),
        "model": st.one_of(st.sampled_from(["char", "subword", "none", ""]), st.none(), st.integers()),
        "attribution": st.one_of(st.sampled_from(["summary", "full", "none", "x"]), st.integers()),
        "threshold": st.one_of(st.floats(-1, 2, allow_nan=False, allow_subnormal=False), st.text(max_size=3)),
        "method": st.sampled_from(["saliency", "grad_x_input", "other"]),
        "verify": st.one_of(st.booleans(), st.integers(0, 1)),
    }),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies)
def test_random_bodies_get_only_documented_statuses(client, body):
    response = client.post("/v1/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 400, 404, 413, 415, 422), response.get_data(as_text=True)
    payload = response.get_json()
    if response.status_code == 200:
        assert isinstance(payload["predictions"], list)
    else:
        assert set(payload["error"]) == {"code", "message"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_random_bytes_get_only_documented_statuses(client, raw):
    response = client.post("/v1/predict", data=raw, content_type="application/json")
    assert response.status_code in (200, 400, 404, 413, 415, 422)
    assert "error" in response.get_json() or response.status_code == 200
