"""The production server (gunicorn over the app factory) on a free 127.0.0.1 port, talked to over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _gunicorn(arguments: list[str], models: str, log: Path) -> tuple[subprocess.Popen, str]:
    """gunicorn with `arguments` over the app factory on a free 127.0.0.1 port, serving `models` (REACH_MODELS), its
    stderr in `log`: the process and its base URL once /readyz answers 200 (at most 90 s)."""
    port = _free_port()
    env = {**os.environ, "REACH_MODELS": models, "REACH_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(gunicorn), *arguments, "--bind", f"127.0.0.1:{port}", "server:create_app()"],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if _request(base + "/readyz")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
        if process.poll() is not None:
            raise AssertionError(log.read_text())
    return process, base


@pytest.fixture(scope="module")
def live_server(tiny_run, tiny_subword_run, tmp_path_factory):
    process, base = _gunicorn(["--workers", "2", "--timeout", "60"], f"char={tiny_run.out},subword={tiny_subword_run.out}",
                              tmp_path_factory.mktemp("gunicorn") / "stderr.log")
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_gunicorn_serves_predictions_over_http(live_server):
    status, body = _request(live_server + "/v1/predict", {"text": "The album was released in ", "k": 3, "model": "subword"})
    assert status == 200 and body["model"] == "subword" and len(body["predictions"]) == 3
    assert all("reach" in p for p in body["predictions"])
    status, body = _request(live_server + "/v1/predict", {"text": "x", "k": 99})
    assert status == 422 and body["error"]["code"] == "invalid_value"
    status, body = _request(live_server + "/v1/models")
    assert status == 200 and {m["name"] for m in body["models"]} == {"char", "subword"}
    assert _request(live_server + "/healthz") == (200, {"status": "ok"})


def test_gunicorn_with_reach_s_config_counts_every_worker_in_metrics(tiny_run, tmp_path):
    """`gunicorn -c python:server.gunicorn_config` with 2 workers: /metrics adds up both workers (multiprocess
    mode), so every scrape, whichever worker answers it, counts every request."""
    from prometheus_client.parser import text_string_to_metric_families

    process, base = _gunicorn(["-c", "python:server.gunicorn_config", "--workers", "2"], f"char={tiny_run.out}",
                              tmp_path / "stderr.log")
    try:
        sent = 12  # six at a time, on fresh connections (keep-alive is off): both workers take some
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda index: _request(base + "/v1/predict", {"text": f"The album {index} ",
                                                                                  "k": 2})[0], range(sent)))
        assert statuses == [200] * sent

        def counted() -> float:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                text = response.read().decode()
            families = {family.name: family for family in text_string_to_metric_families(text)}
            return sum(sample.value for sample in families["reach_requests"].samples
                       if sample.name == "reach_requests_total" and sample.labels["endpoint"] == "/v1/predict")

        assert {counted() for _ in range(6)} == {sent}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
