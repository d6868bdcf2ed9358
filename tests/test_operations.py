"""Running the service for others: API keys, the in-flight bound (429), request ids and /metrics."""

import json
import logging
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import create_app

KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(tiny_run):
    """The tiny char model behind one API key, with one request in flight at most."""
    return create_app({"TESTING": True, "REACH_MODELS": {"char": str(tiny_run.out)}, "REACH_API_KEYS": (KEY,),
                       "REACH_MAX_IN_FLIGHT": 1})


def test_keys_missing_wrong_and_right_and_never_logged(guarded, caplog):
    client = guarded.test_client()
    with caplog.at_level(logging.INFO):
        missing = client.post("/v1/predict", json={"text": "The "})
        wrong = client.post("/v1/predict", json={"text": "The "}, headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
        right = client.post("/v1/predict", json={"text": "The "}, headers={"Authorization": "Bearer " + KEY})
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "missing_api_key"
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "invalid_api_key"
    assert "Bearer" in wrong.headers["WWW-Authenticate"]
    assert right.status_code == 200 and right.get_json()["predictions"]
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    with client.get("/") as page:
        assert page.status_code == 200
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.access"]
    assert [line["status"] for line in access[:3]] == [401, 401, 200] and access[2]["key"] == "key-1"
    assert KEY not in caplog.text and KEY[:-1] not in caplog.text and "The " not in caplog.text


def test_past_the_bound_a_request_gets_429_at_once():
    """One model request held in flight (on an Event) fills a bound of 1: the next is refused at once, then admitted."""
    app = create_app({"TESTING": True, "REACH_MAX_IN_FLIGHT": 1})
    entered, release = threading.Event(), threading.Event()

    @app.post("/v1/hold")
    def hold():
        entered.set()
        release.wait(10)
        return {"held": True}

    held = threading.Thread(target=lambda: app.test_client().post("/v1/hold", json={}))
    held.start()
    assert entered.wait(10)
    begun = time.perf_counter()
    refused = app.test_client().post("/v1/predict", json={"text": "The "})
    assert time.perf_counter() - begun < 1
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "overloaded"
    assert refused.headers["Retry-After"] == "1"
    release.set()
    held.join(10)
    assert app.test_client().post("/v1/predict", json={"text": "The "}).status_code == 404  # admitted: no model served


def test_a_request_id_goes_round_trip_and_into_error_bodies(app):
    client = app.test_client()
    sent = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert sent.headers["X-Request-ID"] == "abc-123"
    made = client.post("/v1/predict", json={"text": "x", "k": 0}, headers={"X-Request-ID": "bad id\t"})
    assert made.status_code == 422 and len(made.headers["X-Request-ID"]) == 32
    assert made.get_json()["error"]["request_id"] == made.headers["X-Request-ID"]


def test_metrics_parse_and_count_a_request(app):
    client = app.test_client()
    def count():
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))}
        return sum(s.value for s in families["reach_requests"].samples if s.name == "reach_requests_total"
                   and s.labels == {"endpoint": "/v1/predict", "model": "char", "status": "200"}), families
    before, _ = count()
    assert client.post("/v1/predict", json={"text": "The ", "k": 2}).status_code == 200
    after, families = count()
    assert after == before + 1
    assert families["reach_models_loaded"].samples[0].value == 2
    assert {"reach_prefix_cache_hits", "reach_prefix_cache_misses", "reach_prefix_cache_bytes",
            "reach_request_duration_seconds", "reach_requests_in_flight", "reach_generated_words"} <= set(families)
    # Occlusion keeps its filler's states per model: the gauge shows what they hold (a state per unit read).
    text = "The album was released in 1998, and it was "
    assert client.post("/v1/predict", json={"text": text, "k": 1, "attribution": "full", "method": "occlusion"}
                       ).status_code == 200
    _, families = count()
    held = {s.labels["model"]: s.value for s in families["reach_occlusion_filler_bytes"].samples}
    assert held["char"] >= (len(text) + 1) * 4 * 2  # at least the text's length of float32 states, h and c


def test_a_stream_keeps_its_slot_until_it_closes(tiny_run, caplog):
    """A streamed generation is computed while it is sent: its slot is taken until the response closes, and its log
    line (written then) counts the words it sent."""
    app = create_app({"TESTING": True, "REACH_MODELS": {"char": str(tiny_run.out)}, "REACH_MAX_IN_FLIGHT": 1})
    client = app.test_client()

    def post_from_another_thread(body):
        # As a server's other thread would: the suspended stream keeps its request context current in this thread.
        answers = []
        thread = threading.Thread(target=lambda: answers.append(app.test_client().post("/v1/predict", json=body)))
        thread.start()
        thread.join(30)
        return answers[0]

    with caplog.at_level(logging.INFO):
        stream = client.post("/v1/generate", json={"text": "The ", "max_words": 3, "stream": True, "seed": 1},
                             buffered=False)
        assert stream.status_code == 200
        first = next(iter(stream.response))
        assert b"start" in first
        refused = post_from_another_thread({"text": "The "})
        assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "overloaded"
        rest = b"".join(stream.response)
        stream.close()
        assert b"[DONE]" in rest
        assert post_from_another_thread({"text": "The "}).status_code == 200
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "server.access"]
    streamed = [line for line in access if line["endpoint"] == "/v1/generate"]
    events = [json.loads(line[len(b"data: "):]) for line in (first + rest).splitlines()
              if line.startswith(b"data: {")]
    words = sum(event["event"] == "word" for event in events)
    assert words >= 1 and len(streamed) == 1 and streamed[0]["status"] == 200
    assert streamed[0]["generated_words"] == words


def test_the_openai_client_s_api_key_is_the_server_s_key(guarded):
    """The `openai` client sends its api_key as a Bearer token: the right key completes, a wrong one is the
    client's AuthenticationError carrying the server's error code (the keyed app on 127.0.0.1)."""
    import openai
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, guarded, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        with openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60) as right:
            completion = right.completions.create(model="char", prompt="The ", max_tokens=2, seed=3)
            assert completion.choices[0].text
            assert [model.id for model in right.models.list()] == ["char"]
        with openai.OpenAI(base_url=base, api_key="wrong-key-0123456789abcdef", max_retries=0, timeout=60) as wrong:
            with pytest.raises(openai.AuthenticationError) as refused:
                wrong.completions.create(model="char", prompt="The ", max_tokens=2)
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    finally:
        server.shutdown()
