"""POST /v1/completions: the official openai client against the production server on 127.0.0.1, and the exactness of
its figures against /v1/predict and /v1/generate."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from lm.infer.echo import split_tokens

ROOT = Path(__file__).resolve().parents[1]
# Punctuation after a word, a word after punctuation, a line break, an apostrophe: every kind of token.
PROMPT = "The album (released in 1998) was the band's first, and it sold well.\nIn the United States, it was "


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(base: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(tiny_run, tiny_subword_run, tmp_path_factory):
    """gunicorn serving the tiny char model ("char", the default, with text-cache settings) and the subword one."""
    port = _free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "stderr.log"
    env = {**os.environ, "REACH_MODELS": f"char={tiny_run.out},subword={tiny_subword_run.out}", "REACH_THREADS": "1"}
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(gunicorn), "--workers", "1", "--bind", f"127.0.0.1:{port}", "--timeout", "120",
                                    "server:create_app()"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
        if process.poll() is not None:
            raise AssertionError(log.read_text())
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def test_the_openai_client_gets_the_words_generate_samples(server, client):
    completion = client.completions.create(model="char", prompt=PROMPT, max_tokens=6, seed=11)
    assert isinstance(completion, openai.types.Completion)
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion" and completion.model == "char"
    assert abs(completion.created - time.time()) < 600
    (choice,) = completion.choices
    assert choice.index == 0 and choice.logprobs is None
    status, generated = _post(server, "/v1/generate", {"text": PROMPT, "max_words": 6, "seed": 11, "model": "char"})
    assert status == 200 and choice.text == generated["continuation"] and choice.text
    assert choice.finish_reason == ("length" if generated["stopped"] == "words" else "stop")
    assert choice.model_extra["seed"] == 11
    assert completion.usage.completion_tokens == len(generated["words"])
    assert completion.usage.prompt_tokens == len(split_tokens(generated["text"]))
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    again = client.completions.create(model="char", prompt=PROMPT, max_tokens=6, seed=11)
    assert again.choices[0].text == choice.text and again.id != completion.id


def test_the_openai_client_lists_the_served_models(client):
    models = client.models.list()
    assert [model.id for model in models] == ["char", "subword"]
    assert all(model.object == "model" and model.owned_by == "reach" for model in models)


def test_a_list_of_prompts_gives_one_choice_each_and_greedy_is_temperature_0(client):
    completion = client.completions.create(model="subword", prompt=["The film was ", "It is a"], max_tokens=4,
                                           temperature=0)
    assert [choice.index for choice in completion.choices] == [0, 1]
    for choice, prompt in zip(completion.choices, ["The film was ", "It is a"]):
        alone = client.completions.create(model="subword", prompt=prompt, max_tokens=4, temperature=0, seed=5)
        assert choice.text == alone.choices[0].text  # greedy: the seed does not matter


def test_the_openai_client_streams_the_same_text(client):
    whole = client.completions.create(model="char", prompt=PROMPT, max_tokens=8, seed=3, logprobs=2)
    chunks = list(client.completions.create(model="char", prompt=PROMPT, max_tokens=8, seed=3, logprobs=2, stream=True,
                                            stream_options={"include_usage": True}))
    *words, last = chunks
    assert all(chunk.id == words[0].id and chunk.object == "text_completion" for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in words) == whole.choices[0].text
    assert [chunk.choices[0].finish_reason for chunk in words] == [None] * (len(words) - 1) + [whole.choices[0].finish_reason]
    tokens = [token for chunk in words for token in chunk.choices[0].logprobs.tokens]
    figures = [value for chunk in words for value in chunk.choices[0].logprobs.token_logprobs]
    assert tokens == whole.choices[0].logprobs.tokens and figures == whole.choices[0].logprobs.token_logprobs
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()


@pytest.mark.parametrize("model", ["char", "subword"])
def test_echoed_logprobs_are_predict_figures(server, client, model):
    """`echo` with `logprobs` scores each word of the prompt after the text before it, exactly as /v1/predict does."""
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=5)
    (choice,) = completion.choices
    text, logprobs = choice.text, choice.logprobs
    assert choice.finish_reason == "length" and completion.usage.completion_tokens == 0
    assert text == _post(server, "/v1/predict", {"text": PROMPT, "model": model, "attribution": "none"})[1]["text"]
    assert "".join(logprobs.tokens) == text and len(logprobs.tokens) == completion.usage.prompt_tokens
    assert logprobs.text_offset == [start for start, _, _ in split_tokens(text)]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # as OpenAI has it
    assert logprobs.tokens[-1] == " " and logprobs.token_logprobs[-1] is None  # a trailing space is not a word
    words = tops = 0
    for token, offset, figure, top in zip(logprobs.tokens, logprobs.text_offset, logprobs.token_logprobs,
                                          logprobs.top_logprobs):
        space = token[: len(token) - len(token.lstrip())]
        before = text[: offset + len(space)]
        if not token.strip() or not before or not before[-1].isspace():
            continue  # /v1/predict lists words after whitespace only
        assert figure <= 0 and top[token] == figure  # the token itself is among its alternatives
        listed = _post(server, "/v1/predict", {"text": before, "model": model, "k": 20, "attribution": "none"})[1]
        figures = {p["word"]: p["logprob"] for p in listed["predictions"]}
        if token.strip() in figures:
            assert abs(figures[token.strip()] - figure) < 1e-6, token
            words += 1
        best = _post(server, "/v1/predict", {"text": before, "model": model, "k": 5, "attribution": "none"})[1]
        assert list(top)[:5] == [space + p["word"] for p in best["predictions"]]
        for prediction in best["predictions"]:
            assert abs(top[space + prediction["word"]] - prediction["logprob"]) < 1e-6
            tops += 1
    assert words >= 3 and tops >= 40


@pytest.mark.parametrize("model", ["char", "subword"])
def test_generated_logprobs_are_generation_figures_and_echo_gives_them_back(server, client, model):
    """A generated token's figure is /v1/generate's for the word; echoing the text back scores every word the same."""
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=25, seed=7, logprobs=3,
                                           extra_body={"text_cache": False})
    (choice,) = completion.choices
    assert completion.model_extra["text_cache"] == {"prompt": False, "completion": False}
    generated = _post(server, "/v1/generate", {"text": PROMPT, "max_words": 25, "seed": 7, "model": model})[1]
    assert choice.logprobs.tokens == [word["text"] for word in generated["words"]]
    assert choice.logprobs.token_logprobs == [word["logprob"] for word in generated["words"]]
    whole = generated["text"] + choice.text
    assert [whole[offset:offset + len(token)] for offset, token in zip(choice.logprobs.text_offset,
                                                                        choice.logprobs.tokens)] == choice.logprobs.tokens
    echoed = client.completions.create(model=model, prompt=whole, max_tokens=0, echo=True, logprobs=0,
                                       extra_body={"text_cache": False}).choices[0]
    # Sent back, the text is normalised again, which could glue a generated " ," to its word: compare up to there.
    same = next((i for i, (a, b) in enumerate(zip(echoed.text, whole)) if a != b), min(len(echoed.text), len(whole)))
    by_word_start = {offset + len(token) - len(token.lstrip()): figure for token, offset, figure in
                     zip(echoed.logprobs.tokens, echoed.logprobs.text_offset, echoed.logprobs.token_logprobs)}
    compared = 0
    for token, offset, figure in zip(choice.logprobs.tokens, choice.logprobs.text_offset, choice.logprobs.token_logprobs):
        if offset + len(token) <= same:
            assert abs(by_word_start[offset + len(token) - len(token.lstrip())] - figure) < 1e-6, token
            compared += 1
    assert compared >= 10


def test_the_reach_extension_is_the_predicted_words_reach(server, client):
    completion = client.completions.create(model="char", prompt=PROMPT, max_tokens=3, seed=2, temperature=0,
                                           extra_body={"reach": True})
    logprobs = completion.choices[0].logprobs  # reach asks for the logprobs object even without logprobs
    reach = logprobs.model_extra["reach"]
    assert len(reach) == len(logprobs.tokens) == 3
    assert all(top == {token: figure} for token, figure, top in zip(logprobs.tokens, logprobs.token_logprobs,
                                                                    logprobs.top_logprobs))
    # Greedy: the first word is /v1/predict's first after the prompt (the model alone, as generation reads it).
    predicted = _post(server, "/v1/predict", {"text": PROMPT, "model": "char", "k": 1, "text_cache": False})[1]
    first = predicted["predictions"][0]
    assert logprobs.tokens[0] == first["word"]
    assert reach[0] == {key: first["reach"][key] for key in ("tokens", "words", "chars")}
    assert reach[0]["tokens"] >= 1


def test_a_stop_sequence_cuts_the_text_before_it(client):
    free = client.completions.create(model="char", prompt=PROMPT, max_tokens=12, seed=4, logprobs=0).choices[0]
    # A stop that begins with a space begins a token wherever it occurs: the kept tokens are then the kept text.
    stop = next(token for token in free.logprobs.tokens[2:] if token.startswith(" "))
    expected = free.text[: free.text.find(stop)]
    cut = client.completions.create(model="char", prompt=PROMPT, max_tokens=12, seed=4, stop=[stop, "#no#"], logprobs=0)
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    assert "".join(cut.choices[0].logprobs.tokens) == expected
    streamed = client.completions.create(model="char", prompt=PROMPT, max_tokens=12, seed=4, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_errors_reach_the_openai_client_as_it_expects(client):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="char", prompt="x", n=2)
    assert refused.value.code == "invalid_value" and refused.value.param == "n" and "'n' must be at most 1" in refused.value.message
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="char", prompt="x", presence_penalty=0.5)
    assert refused.value.param == "presence_penalty" and "only 0 is supported" in refused.value.message
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="char", prompt=["fine", "bad\x01"])
    assert refused.value.code == "invalid_text" and refused.value.param == "prompt[1]"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="x")
    assert missing.value.code == "unknown_model" and "gpt-4" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="char", prompt=[1, 2, 3])  # token ids are OpenAI's, not Reach's
    assert bad.value.code == "invalid_type" and bad.value.param == "prompt[0]"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="char", prompt="x", extra_body={"bogus": 1})
    assert bad.value.code == "unknown_field" and "bogus" in bad.value.message
    with pytest.raises(openai.APIStatusError) as large:
        client.completions.create(model="char", prompt="x" * 20_001)
    assert large.value.status_code == 413 and large.value.code == "text_too_long"


def test_zero_tokens_without_echo_is_an_empty_completion(app):
    answer = app.test_client().post("/v1/completions", json={"prompt": "The film", "max_tokens": 0}).get_json()
    assert answer["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}
    assert answer["model"] == "char"


def test_echo_without_logprobs_returns_the_normalised_prompt(app):
    answer = app.test_client().post("/v1/completions", json={"prompt": "A  word ,\tthen\r\nmore", "max_tokens": 0,
                                                            "echo": True}).get_json()
    assert answer["choices"][0]["text"] == "A word, then\nmore" and answer["choices"][0]["logprobs"] is None


def test_unsupported_values_are_refused_and_off_values_accepted(app):
    client = app.test_client()
    accepted = {"prompt": "The ", "max_tokens": 1, "n": 1, "best_of": 1, "frequency_penalty": 0, "presence_penalty": 0.0,
                "logit_bias": {}, "suffix": None, "user": "someone", "stop": [], "top_p": 1, "logprobs": None,
                "stream": False, "echo": False, "seed": 1.0}
    assert client.post("/v1/completions", json=accepted).status_code == 200
    for field, value, status, code in [("logit_bias", {"50256": -100}, 422, "invalid_value"),
                                       ("suffix", "end", 422, "invalid_value"),
                                       ("best_of", 2, 422, "invalid_value"),
                                       ("max_tokens", 51, 422, "invalid_value"),
                                       ("logprobs", True, 400, "invalid_type"),
                                       ("temperature", -1, 422, "invalid_value"),
                                       ("stop", ["a", "b", "c", "d", "e"], 422, "invalid_value")]:
        response = client.post("/v1/completions", json={"prompt": "The ", field: value})
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), field
        assert response.get_json()["error"]["param"] == field
