"""The HTTP API through Flask's test client: every route, every error class, limits, concurrency, random input."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, external_references
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
    assert body["context"] == {"tokens": len(TEXT), "words": len(TEXT.split()), "chars": len(TEXT), "truncated": False, "dropped_chars": 0, "dropped_units": 0, "unknown_units": 0, "unknown_chars": 0}
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


def test_the_text_cache_is_on_by_default_and_can_be_turned_off(client):
    text = "Mr. Qwixby spoke. Mr. Qwixby left. Mr. Qwixby came back. Mr. Qwi"
    cached = _post(client, {"text": text, "attribution": "none", "k": 3}).get_json()
    alone = _post(client, {"text": text, "attribution": "none", "k": 3, "text_cache": False}).get_json()
    assert cached["text_cache"] is True and alone["text_cache"] is False  # the tiny runs store tuned settings
    assert [p["probability"] for p in cached["predictions"]] != [p["probability"] for p in alone["predictions"]]
    assert _post(client, {"text": text, "attribution": "none", "k": 3, "text_cache": True}).get_json() == cached
    # Attribution covers the served (mixed) distribution, and the model alone when the cache is off.
    attributed = _post(client, {"text": text, "k": 3}).get_json()
    assert attributed["text_cache"] is True
    assert [p["word"] for p in attributed["predictions"]] == [p["word"] for p in cached["predictions"]]
    assert [p["probability"] for p in attributed["predictions"]] == pytest.approx(
        [p["probability"] for p in cached["predictions"]], rel=1e-5)
    assert all(p["pointer"] is not None for p in attributed["predictions"])
    plain = _post(client, {"text": text, "k": 3, "text_cache": False}).get_json()
    assert plain["text_cache"] is False and all(p["pointer"] is None for p in plain["predictions"])
    assert [p["word"] for p in plain["predictions"]] == [p["word"] for p in alone["predictions"]]


def test_the_pointer_points_at_the_units_the_cache_copies_the_word_from(client):
    text = "The end of the war and the start of the year, the last of "
    body = _post(client, {"text": text, "k": 3, "attribution": "full"}).get_json()
    first = body["predictions"][0]
    assert body["text_cache"] is True and first["word"] == "the"
    pointer = first["pointer"]
    assert 0 < pointer["copy_probability"] < 1 and pointer["entries"] >= len(pointer["positions"]) > 0
    # Every listed position is a unit of the text that "the" (or the boundary after it) copies: t, h, e or a boundary.
    assert all(p["text"] == text[p["start"]:p["end"]] and (p["text"] in "the" or not p["text"].isalnum())
               for p in pointer["positions"])
    assert sum(p["share"] for p in pointer["positions"]) + pointer["own_share"] <= 1 + 1e-9
    strong = [p["start"] for p in pointer["positions"] if p["share"] >= 0.01 * max(q["share"] for q in pointer["positions"])]
    assert pointer["reach"]["chars"] == len(text) - min(strong) and pointer["reach"]["threshold"] == 0.01
    deletion = pointer["deletion_reach"]
    assert deletion["90"]["tokens"] <= deletion["99"]["tokens"] <= len(text)
    assert first["reach"]["mass99_tokens"] == max(first["gradient_reach"]["mass99_tokens"], deletion["99"]["tokens"])
    summary = _post(client, {"text": text, "k": 3}).get_json()["predictions"][0]["pointer"]
    assert "positions" not in summary and summary["reach"] == pointer["reach"]


LONG = ("The album was released in the United States in 1998. Mr. Qwixby spoke of the album, and Mr. Qwixby "
        "left. The album sold well in the United States, and Mr. Qwi")


@pytest.fixture(scope="module")
def limited(tiny_run, tiny_subword_run):
    """A client whose input limit (40 units) is shorter than LONG in both models."""
    return create_app({"TESTING": True, "REACH_MAX_CONTEXT_UNITS": 40,
                       "REACH_MODELS": {"char": str(tiny_run.out), "subword": str(tiny_subword_run.out / "best")}}).test_client()


@pytest.mark.parametrize("model", ["char", "subword"])
def test_a_text_over_the_limit_is_read_the_same_way_in_every_attribution_mode(limited, model):
    # The char model completes "Qwi" (its cache copies "Qwixby"); the subword model predicts the next word after
    # "Mr. ", since a small vocabulary may spell no completion of "Qwi" at all.
    text = LONG if model == "char" else LONG.removesuffix("Qwi")
    bodies = {mode: _post(limited, {"text": text, "k": 3, "model": model, "attribution": mode}).get_json()
              for mode in ("none", "summary", "full")}
    none = bodies["none"]
    context = none["context"]
    assert context["truncated"] is True and 0 < context["tokens"] <= 40 and context["dropped_units"] > 0
    assert 0 < context["dropped_chars"] < len(text) and none["text"] == text  # the whole text comes back
    assert context["chars"] <= len(text) - context["dropped_chars"]
    for body in bodies.values():
        assert body["text"] == text and body["context"] == context and body["text_cache"] is (model == "char")  # tuned settings
        assert [p["word"] for p in body["predictions"]] == [p["word"] for p in none["predictions"]]
        assert [p["probability"] for p in body["predictions"]] == pytest.approx(
            [p["probability"] for p in none["predictions"]], rel=1e-5)
    assert none["predictions"]
    # Offsets index into the text sent: the units read are exactly its text from dropped_chars on.
    first = bodies["full"]["predictions"][0]
    units = first["influence"]
    assert all(u["text"] == text[u["start"]:u["end"]] for u in units)
    assert units[0]["start"] >= context["dropped_chars"] and units[-1]["end"] == context["dropped_chars"] + context["chars"]
    assert all(w["text"] == text[w["start"]:w["end"]] for w in first["word_influence"])
    positions = first["pointer"]["positions"] if first["pointer"] else []
    assert positions or model == "subword"  # the char model's cache copies "Qwixby" from the part read
    assert all(p["text"] == text[p["start"]:p["end"]] and p["start"] >= context["dropped_chars"] for p in positions)


def test_the_kept_suffix_is_read_as_if_only_it_had_been_sent(limited, client):
    cut = _post(limited, {"text": LONG, "k": 3, "attribution": "none"}).get_json()
    suffix = LONG[cut["context"]["dropped_chars"]:]
    alone = _post(client, {"text": suffix, "k": 3, "attribution": "none"}).get_json()
    assert alone["context"]["truncated"] is False and alone["text"] == suffix
    assert [p["word"] for p in alone["predictions"]] == [p["word"] for p in cut["predictions"]]
    assert [p["probability"] for p in alone["predictions"]] == pytest.approx([p["probability"] for p in cut["predictions"]], rel=1e-5)
    whole = _post(client, {"text": LONG, "k": 3, "attribution": "none"}).get_json()  # the default limit: all of it read
    assert whole["context"]["dropped_chars"] == 0 and whole["context"]["tokens"] > cut["context"]["tokens"]


@pytest.mark.parametrize("attribution", ["none", "summary", "full"])
def test_a_text_under_the_limit_reports_nothing_dropped(limited, attribution):
    body = _post(limited, {"text": "The album was ", "attribution": attribution}).get_json()
    assert body["text"] == "The album was "
    assert {key: body["context"][key] for key in ("truncated", "dropped_chars", "dropped_units")} == \
        {"truncated": False, "dropped_chars": 0, "dropped_units": 0}
    if attribution == "full":
        assert body["predictions"][0]["influence"][0]["start"] == 0


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


@pytest.mark.parametrize("attribution", ["none", "summary"])
def test_characters_the_model_never_saw_are_counted(client, attribution):
    body = _post(client, {"text": "The 杜甫 poem is ", "attribution": attribution}).get_json()
    assert body["context"]["unknown_units"] == body["context"]["unknown_chars"] == 2
    body = _post(client, {"text": "The 杜甫 poem is ", "attribution": attribution, "model": "subword"}).get_json()
    assert body["context"]["unknown_units"] == 6  # each character spelled as its 3 UTF-8 bytes
    assert body["context"]["unknown_chars"] == 2
    # The unfinished word is not part of the context a subword model reads, but it is part of the text.
    body = _post(client, {"text": "The poet 杜甫", "attribution": attribution, "model": "subword"}).get_json()
    assert body["completing"] is True and body["context"]["unknown_units"] == 0 and body["context"]["unknown_chars"] == 2


def test_models_card(client):
    body = client.get("/v1/models").get_json()
    assert body["default"] == "char" and [m["name"] for m in body["models"]] == ["char", "subword"]
    card = body["models"][0]
    assert card["cell"] == "lstm" and card["tokenizer"]["kind"] == "char" and card["parameters"] > 0
    assert card["bptt"]["k1"] == card["bptt"]["k2"] == 32 and card["training_tokens"] > 0
    assert card["clipping"]["clip_norm"] == 0.5 and card["heldout"]["test"]["bpc"] > 0
    assert 0 <= card["heldout"]["next_word_accuracy"]["top1"] <= 1
    cache = card["text_cache"]  # tuned at the end of training
    assert cache["window"] >= 1 and cache["theta"] > 0 and 0 <= cache["weight"] < 1
    assert cache["test"]["bpc"] > 0 and cache["valid"]["word_ppl"] > 0 and cache["chosen"] == "tuned on the valid split, the weight by memory size on prompts of it"


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


# Text that no route accepts: a control character, and more than REACH_MAX_TEXT_CHARS.
TEXT_ERRORS = [({"text": "bell \u0007 here"}, 422, "invalid_text"), ({"text": "x" * 20_001}, 413, "text_too_long")]


def _out_of_range(*fields: tuple[str, object]) -> list[tuple[dict, int, str]]:
    """Bodies with one field of the right type but a value out of its range: 422 invalid_value each."""
    return [({"text": "a", name: value}, 422, "invalid_value") for name, value in fields]


@pytest.mark.parametrize("body, status, code", [
    ({"k": 3}, 400, "missing_field"),
    ({"text": 5}, 400, "invalid_type"),
    ({"text": "a", "k": "5"}, 400, "invalid_type"),
    ({"text": "a", "k": True}, 400, "invalid_type"),
    ({"text": "a", "k": 2.5}, 400, "invalid_type"),
    ({"text": "a", "threshold": "0.1"}, 400, "invalid_type"),
    ({"text": "a", "verify": 1}, 400, "invalid_type"),
    ({"text": "a", "cache": "yes"}, 400, "invalid_type"),
    ({"text": "a", "model": 7}, 400, "invalid_type"),
    ({"text": "a", "colour": "red"}, 400, "unknown_field"),
    ({"text": "a", "model": "gpt"}, 404, "unknown_model"),
    ({"text": "a", "model": "../runs/other"}, 404, "unknown_model"),
    *_out_of_range(("k", 0), ("k", 21), ("threshold", 0), ("threshold", 1.5), ("method", "lime"), ("attribution", "some")),
    *TEXT_ERRORS,
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


def _generate(client, body):
    return client.post("/v1/generate", json=body)


def test_generate_continues_a_text_reproducibly_with_each_words_probability(client):
    body = {"text": "The album was ", "max_words": 8, "seed": 11}
    first = _generate(client, body)
    assert first.status_code == 200, first.get_data(as_text=True)
    answer = first.get_json()
    assert answer["model"] == "char" and answer["text"] == "The album was " and answer["seed"] == 11
    assert len(answer["words"]) == 8 and answer["stopped"] == "words"
    assert answer["continuation"] == "".join(word["text"] for word in answer["words"])
    assert all(0 < word["probability"] <= 1 and word["word"] for word in answer["words"])
    assert _generate(client, body).get_json() == answer
    others = {_generate(client, {**body, "seed": seed}).get_json()["continuation"] for seed in (12, 13, 14)}
    assert others - {answer["continuation"]}
    greedy = [_generate(client, {"text": "The album was ", "max_words": 5, "top_k": 1, "seed": seed}).get_json()["continuation"]
              for seed in (1, 2)]
    assert greedy[0] == greedy[1]
    drawn = _generate(client, {"text": "It ", "max_words": 3, "model": "subword", "top_p": 0.9, "temperature": 0.7}).get_json()
    assert drawn["model"] == "subword" and isinstance(drawn["seed"], int) and len(drawn["words"]) == 3


def test_generate_uses_the_model_alone_by_default_and_the_text_cache_when_asked(client):
    body = {"text": "Mr. Qwixby spoke to Qwixby. Then Qwixby left, and Mr. ", "max_words": 6, "seed": 3}
    cached = _generate(client, {**body, "text_cache": True}).get_json()
    alone = _generate(client, {**body, "text_cache": False}).get_json()
    assert cached["text_cache"] is True and alone["text_cache"] is False  # the char run stores tuned settings
    assert [w["probability"] for w in cached["words"]] != [w["probability"] for w in alone["words"]]
    assert _generate(client, body).get_json() == alone  # the cache makes text repeat itself: not by default
    # A model without settings generates with the model alone whatever is asked, and says so.
    assert _generate(client, {**body, "model": "subword", "text_cache": True}).get_json()["text_cache"] is False


def test_generate_can_stop_at_a_line_break(client):
    answers = [_generate(client, {"text": "= Valkyria Chronicles =", "max_words": 30, "stop_at_newline": True, "seed": seed}).get_json()
               for seed in range(5)]
    assert any(answer["stopped"] == "newline" for answer in answers)
    assert all("\n" not in answer["continuation"] for answer in answers)


@pytest.mark.parametrize("body, status, code", [
    ({"max_words": 3}, 400, "missing_field"),
    ({"text": 5}, 400, "invalid_type"),
    ({"text": "a", "max_words": "5"}, 400, "invalid_type"),
    ({"text": "a", "max_words": 2.5}, 400, "invalid_type"),
    ({"text": "a", "top_k": True}, 400, "invalid_type"),
    ({"text": "a", "temperature": "hot"}, 400, "invalid_type"),
    ({"text": "a", "top_p": [0.5]}, 400, "invalid_type"),
    ({"text": "a", "seed": "7"}, 400, "invalid_type"),
    ({"text": "a", "seed": 1.5}, 400, "invalid_type"),
    ({"text": "a", "stop_at_newline": 1}, 400, "invalid_type"),
    ({"text": "a", "cache": "yes"}, 400, "invalid_type"),
    ({"text": "a", "cache": 1}, 400, "invalid_type"),
    ({"text": "a", "text_cache": "yes"}, 400, "invalid_type"),
    ({"text": "a", "k": 5}, 400, "unknown_field"),
    ({"text": "a", "model": "gpt"}, 404, "unknown_model"),
    *_out_of_range(("max_words", 0), ("max_words", 51), ("top_k", 0), ("top_k", 21), ("temperature", 0), ("temperature", -1),
                   ("temperature", 1000), ("top_p", 0), ("top_p", 1.01), ("seed", -1)),
    *TEXT_ERRORS,
])
def test_bad_generate_requests_get_the_predict_routes_codes(client, body, status, code):
    _error(_generate(client, body), status, code)


def test_generate_transport_errors_are_json(client):
    _error(client.post("/v1/generate", data="{oops", content_type="application/json"), 400, "malformed_json")
    _error(client.post("/v1/generate", data="text=hi", content_type="application/x-www-form-urlencoded"), 415, "unsupported_media_type")
    _error(client.get("/v1/generate"), 405, "method_not_allowed")
    _error(client.post("/v1/generate", data=json.dumps({"text": "a", "temperature": float("nan")}), content_type="application/json"),
           422, "invalid_value")


def test_the_generate_word_limit_is_configurable(monkeypatch, tiny_run):
    small = create_app({"TESTING": True, "REACH_MODELS": {"m": str(tiny_run.out)}, "REACH_MAX_GENERATE_WORDS": 4}).test_client()
    _error(_generate(small, {"text": "a ", "max_words": 5}), 422, "invalid_value")
    assert len(_generate(small, {"text": "a ", "max_words": 4, "seed": 0}).get_json()["words"]) == 4
    assert len(_generate(small, {"text": "a ", "seed": 0}).get_json()["words"]) == 4  # the default is cut to the limit
    monkeypatch.setenv("REACH_MAX_GENERATE_WORDS", "3")
    app = create_app({"TESTING": True, "REACH_MODELS": {}})
    assert app.config["REACH_MAX_GENERATE_WORDS"] == 3
    schema = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert schema["max_words"]["maximum"] == 3
    monkeypatch.setenv("REACH_MAX_GENERATE_WORDS", "0")
    with pytest.raises(ValueError, match="REACH_MAX_GENERATE_WORDS"):
        create_app({"TESTING": True, "REACH_MODELS": {}})


def test_limits_are_configurable(tiny_run):
    small = create_app({"TESTING": True, "REACH_MODELS": {"m": str(tiny_run.out)}, "REACH_MAX_TEXT_CHARS": 10,
                        "REACH_MAX_K": 2, "MAX_CONTENT_LENGTH": 200, "REACH_MAX_CONTEXT_UNITS": 8}).test_client()
    _error(_post(small, {"text": "x" * 11}), 413, "text_too_long")
    _error(_post(small, {"text": "x", "k": 3}), 422, "invalid_value")
    _error(small.post("/v1/predict", data=json.dumps({"text": "y" * 300}), content_type="application/json"), 413, "body_too_large")
    body = _post(small, {"text": "abc def g "}).get_json()
    assert body["context"]["truncated"] is True and body["context"]["tokens"] <= 8


_ENVIRONMENT = {"REACH_MAX_TEXT_CHARS": "10", "REACH_MAX_K": "2", "REACH_MAX_CONTENT_LENGTH": "200",
                "REACH_MAX_CONTEXT_UNITS": "8", "REACH_PREFIX_CACHE_SIZE": "0", "REACH_PREFIX_CACHE_MB": "3"}


def test_limits_can_be_set_in_the_environment(monkeypatch, tiny_run):
    for name, value in _ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REACH_MODELS", f"m={tiny_run.out}")
    app = create_app({"TESTING": True})  # as gunicorn's 'server:create_app()' builds it: no dict of limits
    small = app.test_client()
    _error(_post(small, {"text": "x" * 11}), 413, "text_too_long")
    _error(_post(small, {"text": "x", "k": 3}), 422, "invalid_value")
    _error(small.post("/v1/predict", data=json.dumps({"text": "y" * 300}), content_type="application/json"), 413, "body_too_large")
    body = _post(small, {"text": "abc def g "}).get_json()
    assert body["context"]["truncated"] is True and body["context"]["tokens"] <= 8
    predictor = app.extensions["reach"].get("m").predictor
    assert predictor.prefix_cache_size == 0 and predictor.prefix_cache_bytes == 3 * 2**20
    request = small.get("/openapi.json").get_json()["components"]["schemas"]["PredictRequest"]["properties"]
    assert request["k"]["maximum"] == 2 and request["text"]["maxLength"] == 10


def test_the_dict_given_to_create_app_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("REACH_MAX_K", "2")
    monkeypatch.setenv("REACH_MAX_TEXT_CHARS", "10")
    app = create_app({"TESTING": True, "REACH_MODELS": {}, "REACH_MAX_K": 7})
    assert app.config["REACH_MAX_K"] == 7 and app.config["REACH_MAX_TEXT_CHARS"] == 10


@pytest.mark.parametrize("name, value", [("REACH_MAX_K", "lots"), ("REACH_MAX_TEXT_CHARS", "0"), ("REACH_MAX_CONTEXT_UNITS", "-5"),
                                         ("REACH_PREFIX_CACHE_SIZE", "1.5"), ("REACH_PREFIX_CACHE_MB", "-1"),
                                         ("REACH_CACHE_SIZE", "1.5"), ("REACH_MAX_CONTENT_LENGTH", "64k"),
                                         ("REACH_THREADS", "0"),
                                         ("REACH_MODELS", "=runs/x")])
def test_a_bad_environment_value_stops_start_up_with_one_line(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as caught:
        create_app({"TESTING": True})
    message = str(caught.value)
    assert name in message and "\n" not in message


@pytest.mark.parametrize("key, value", [("REACH_MAX_K", 0), ("REACH_PREFIX_CACHE_SIZE", -1), ("MAX_CONTENT_LENGTH", "big"),
                                        ("REACH_THREADS", True)])
def test_a_bad_value_in_the_dict_stops_start_up(key, value):
    with pytest.raises(ValueError, match=key):
        create_app({"TESTING": True, "REACH_MODELS": {}, key: value})


def _server_cli(args, **environment):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **environment}
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_the_development_server_reports_a_bad_environment_value_in_one_line():
    done = _server_cli(["--model", "no-such-run"], REACH_MAX_K="lots")
    assert done.returncode == 1
    assert done.stderr.strip() == "server: error: environment variable REACH_MAX_K='lots' is not a whole number of at least 1"


def test_gunicorn_shows_a_bad_environment_value_and_stops(tmp_path):
    gunicorn = Path(sys.executable).with_name("gunicorn")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REACH_MAX_CONTEXT_UNITS": "none"}
    done = subprocess.run([str(gunicorn), "--workers", "1", "--bind", "127.0.0.1:0", "server:create_app()"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "environment variable REACH_MAX_CONTEXT_UNITS='none' is not a whole number of at least 1" in done.stderr.splitlines()


def test_the_development_server_has_flags_for_the_limits_and_honours_the_environment(monkeypatch, capsys, tiny_run):
    import torch
    from flask import Flask

    import server.__main__ as cli

    served = {}
    monkeypatch.setattr(Flask, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    monkeypatch.setenv("REACH_THREADS", "1")
    monkeypatch.setenv("REACH_MAX_K", "3")
    try:
        assert cli.main(["--model", str(tiny_run.out), "--max-text-chars", "50", "--prefix-cache-size", "5", "--prefix-cache-mb", "7",
                         "--max-context-units", "9", "--max-content-length", "1000", "--port", "8123"]) == 0
        assert torch.get_num_threads() == 1  # REACH_THREADS, as no --threads was given
    finally:
        torch.set_num_threads(2)
    config = served["app"].config
    assert (config["REACH_MAX_TEXT_CHARS"], config["REACH_PREFIX_CACHE_SIZE"], config["REACH_PREFIX_CACHE_MB"],
            config["REACH_MAX_CONTEXT_UNITS"], config["MAX_CONTENT_LENGTH"], config["REACH_MAX_K"]) == (50, 5, 7, 9, 1000, 3)
    assert "with 1 torch thread(s) on the CPU" in capsys.readouterr().out  # the device it serves on
    assert served["port"] == 8123


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
    results, errors, refused = {}, [], []

    def worker(index):
        try:
            text = texts[index % len(texts)]
            while True:  # past the in-flight bound the answer is 429 at once; the client waits and asks again
                response = app.test_client().post("/v1/predict", json={"text": text, "attribution": "full", "k": 3})
                if response.status_code != 429:
                    break
                assert response.get_json()["error"]["code"] == "overloaded" and response.headers["Retry-After"]
                refused.append(index)
                time.sleep(0.05)
            results[index] = (text, response.get_json())
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
        assert set(payload["error"]) == {"code", "message", "type", "param", "request_id"}
        assert payload["error"]["request_id"] == response.headers["X-Request-ID"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_random_bytes_get_only_documented_statuses(client, raw):
    response = client.post("/v1/predict", data=raw, content_type="application/json")
    assert response.status_code in (200, 400, 404, 413, 415, 422)
    assert "error" in response.get_json() or response.status_code == 200


def _same_answer(first, second, path="answer"):
    """Equal structure and strings; numbers equal to float32 rounding (a read from the prefix cache and a fresh one)."""
    if isinstance(first, dict):
        assert isinstance(second, dict) and set(first) == set(second), (path, set(first) ^ set(second))
        for key in first:
            _same_answer(first[key], second[key], f"{path}.{key}")
    elif isinstance(first, list):
        assert isinstance(second, list) and len(first) == len(second), path
        for index, (a, b) in enumerate(zip(first, second)):
            _same_answer(a, b, f"{path}[{index}]")
    elif isinstance(first, float) and not isinstance(first, bool):
        assert second == pytest.approx(first, rel=1e-4, abs=1e-7), path
    else:
        assert first == second, path


@pytest.mark.parametrize("command, attribution", [("predict", "none"), ("attribute", "full")])
def test_the_cli_prints_the_answer_http_sends(client, tiny_run, capsys, command, attribution):
    """One contract: `lm predict --json` is /v1/predict with attribution none, `lm attribute --json` with full."""
    from lm.__main__ import main

    text = "The album was released in the "
    http = _post(client, {"text": text, "k": 3, "attribution": attribution, "text_cache": False}).get_json()
    assert main([command, "--model", str(tiny_run.out), "-k", "3", "--no-text-cache", "--json", text]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert http.pop("model") == "char" and cli.pop("model").endswith("best")
    if attribution != "none":  # the cost is each run's own clock: present in both, compared only as milliseconds
        for answer in (http, cli):
            cost = answer["attribution"].pop("cost")
            assert cost["prediction_ms"] >= 0 and cost["method_ms"] >= 0
    _same_answer(http, cli)


def test_the_old_cache_field_still_works_with_a_warning(client):
    text = "The album was released in the "
    old = _post(client, {"text": text, "attribution": "none", "k": 3, "cache": False})
    new = _post(client, {"text": text, "attribution": "none", "k": 3, "text_cache": False})
    assert old.get_json() == new.get_json() and old.get_json()["text_cache"] is False
    assert "'cache' is deprecated, use 'text_cache'" in old.headers["Warning"] and "Warning" not in new.headers


def test_errors_name_the_field_at_fault_and_the_openai_error_type(client):
    body = _post(client, {"text": "a", "k": 0}).get_json()["error"]
    assert body["param"] == "k" and body["type"] == "invalid_request_error" and body["code"] == "invalid_value"
    body = _post(client, {"text": "a", "model": "gpt"}).get_json()["error"]
    assert body["param"] == "model" and body["type"] == "not_found_error"
    assert _post(client, {"text": "a", "colour": "red"}).get_json()["error"]["param"] == "colour"
    assert client.post("/v1/predict", data="{oops", content_type="application/json").get_json()["error"]["param"] is None
