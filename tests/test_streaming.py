"""Server-sent events: the framing, /v1/generate's word stream (the same words as unstreamed), /v1/completions's
chunks, an error after the stream started, and the page's Continue showing words as they arrive."""

import json
import logging

import pytest


from conftest import browser_page, serve
from server.errors import ApiError
from server.streaming import sse_response

def _frames(body: str) -> list[str]:
    """The events of a stream, checking its framing: blank-line separated, the last one [DONE]."""
    assert body.endswith("\n\n")
    frames = body[:-2].split("\n\n")
    assert frames[-1] == "data: [DONE]" and body.count("data: [DONE]") == 1
    return frames[:-1]


def _events(response) -> list[dict]:
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    frames = _frames(response.get_data(as_text=True))
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames)
    return [json.loads(frame.removeprefix("data: ")) for frame in frames]


@pytest.mark.parametrize("body", [{"text": "The film was ", "max_words": 8, "seed": 3},
                                  {"text": "The capi", "max_words": 5, "seed": 1, "model": "subword", "top_k": 3},
                                  {"text": "It was. ", "max_words": 6, "seed": 9, "text_cache": True}])
def test_generate_streams_the_words_it_answers_unstreamed(client, body):
    answer = client.post("/v1/generate", json=body).get_json()
    start, *words, end = _events(client.post("/v1/generate", json={**body, "stream": True}))
    assert start == {"event": "start", "model": answer["model"], "text": answer["text"], "seed": answer["seed"],
                     "text_cache": answer["text_cache"]}
    assert [{key: value for key, value in word.items() if key not in ("event", "index")} for word in words] == answer["words"]
    assert [(word["event"], word["index"]) for word in words] == [("word", index) for index in range(len(words))]
    assert end == {"event": "end", "stopped": answer["stopped"], "continuation": answer["continuation"]}
    assert len(words) == body["max_words"] or answer["stopped"] != "words"


def test_a_bad_stream_request_is_refused_before_the_stream(client):
    response = client.post("/v1/generate", json={"text": "x", "max_words": 0, "stream": True})
    assert response.status_code == 422 and response.mimetype == "application/json"
    assert response.get_json()["error"]["param"] == "max_words"
    response = client.post("/v1/completions", json={"prompt": "x", "n": 4, "stream": True})
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_value"


def test_an_error_after_the_stream_started_is_an_error_event_then_done(app, caplog):
    def failing(error):
        yield {"event": "start"}
        raise error

    with app.test_request_context():
        refused = sse_response(failing(ApiError(404, "unknown_model", "no such model", param="model")))
        frames = _frames("".join(refused.response))
    assert frames == ['data: {"event": "start"}',
                      'event: error\ndata: {"error": {"code": "unknown_model", "message": "no such model", '
                      '"type": "not_found_error", "param": "model"}}']
    with caplog.at_level(logging.ERROR, logger="server.streaming"), app.test_request_context():
        broken = sse_response(failing(RuntimeError("internal detail")))
        frames = _frames("".join(broken.response))
    error = json.loads(frames[1].split("\n")[1].removeprefix("data: "))
    assert frames[1].startswith("event: error\n") and error["error"]["code"] == "internal_error"
    assert "internal detail" not in frames[1] and "internal detail" in caplog.text  # logged, not sent


def test_completions_stream_chunks_add_up_to_the_answer(client):
    body = {"prompt": ["The film was ", "In 1990, the"], "max_tokens": 5, "seed": 8, "logprobs": 1, "echo": True}
    answer = client.post("/v1/completions", json=body).get_json()
    chunks = _events(client.post("/v1/completions", json={**body, "stream": True}))
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("cmpl-")
    for choice in answer["choices"]:
        mine = [chunk["choices"][0] for chunk in chunks if chunk["choices"][0]["index"] == choice["index"]]
        assert mine[0]["text"] == body["prompt"][choice["index"]]  # echo: the prompt comes first, with its tokens
        assert "".join(part["text"] for part in mine) == choice["text"]
        assert [token for part in mine for token in part["logprobs"]["tokens"]] == choice["logprobs"]["tokens"]
        assert [part["finish_reason"] for part in mine] == [None] * (len(mine) - 1) + [choice["finish_reason"]]
        assert mine[-1]["seed"] == choice["seed"] == 8
    assert "usage" not in chunks[-1]  # only with stream_options.include_usage


@pytest.fixture(scope="module")
def page_server(app):
    yield from serve(app)


@pytest.mark.browser
def test_the_page_continues_from_the_word_stream(page_server):
    with browser_page(viewport={"width": 1200, "height": 900}) as (page, errors):
        page.goto(page_server + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        typed = "The album was released in "
        page.fill("#text", typed)
        # Count the generated words on screen at each change, to see them arrive.
        page.evaluate("""() => { window.shown = []; new MutationObserver(() => window.shown.push(
            document.querySelectorAll('#continuation .generated').length)).observe(
            document.getElementById('continuation'), {childList: true}); }""")
        page.select_option("#words", "10")
        with page.expect_response("**/v1/generate") as answer:
            page.click("#continue")
        response = answer.value
        assert json.loads(response.request.post_data)["stream"] is True
        assert response.headers["content-type"].startswith("text/event-stream")
        page.wait_for_function("document.querySelector('#continuation').title.startsWith('seed')", timeout=20_000)
        events = [json.loads(frame.removeprefix("data: ")) for frame in _frames(response.text())]
        words = [event for event in events if event["event"] == "word"]
        spans = page.eval_on_selector_all("#continuation .generated", "spans => spans.map(s => [s.textContent, s.title])")
        assert [text for text, _ in spans] == [word["text"] for word in words] and len(words) == 10
        assert all(title.startswith(f"{word['word']}: ") for (_, title), word in zip(spans, words))
        assert page.input_value("#text") == events[0]["text"] + events[-1]["continuation"]
        shown = page.evaluate("window.shown")
        assert shown[-1] == 10 and shown == sorted(shown)  # cleared once, then only appended to
        assert not errors
