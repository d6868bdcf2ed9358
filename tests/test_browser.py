"""The web page in a real headless Chromium: type, see predictions, pick one, see the heatmap and the cache's
pointer, continue the text.

Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it). Without
it the test is skipped, except in CI (CI=true), where it fails.
"""

import json
import urllib.request
from pathlib import Path

import pytest

from conftest import browser_page, serve

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_server(app):
    yield from serve(app)


def test_type_see_predictions_select_one_see_the_heatmap_continue(page_server):
    with browser_page(viewport={"width": 1200, "height": 900}) as (page, errors):
        page.goto(page_server + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        typed = "The album was released in the United States and it was "
        page.fill("#text", "")
        page.type("#text", typed, delay=5)
        # Predictions for the typed text (not the empty text shown on load) arrive after the debounce.
        page.wait_for_function(f"document.querySelectorAll('#heatmap span.unit').length === {len(typed)}", timeout=20_000)
        assert page.locator("#predictions li").count() == 5
        first = page.text_content("#predictions li:nth-child(1) .w")
        assert first
        page.click("#predictions li:nth-child(2)")
        page.wait_for_function("document.querySelector('#predictions li:nth-child(2)').classList.contains('selected')")
        chosen = page.text_content("#chosen")
        assert page.text_content("#predictions li:nth-child(2) .w") in chosen
        units = page.locator("#heatmap span.unit")
        assert units.count() == len(typed)
        coloured = page.eval_on_selector_all("#heatmap span.unit", "spans => spans.filter(s => !s.style.background.endsWith(', 0)')).length")
        assert coloured > 5
        assert "reach" in page.text_content("#reach")
        assert page.locator("#heatmap .reach").count() == 1
        painted = page.evaluate("() => { const c = document.getElementById('profile'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }")
        assert painted > 200  # the decay profile is drawn
        # "Continue" generates words after the text, shows them and appends them to the text.
        page.select_option("#words", "5")
        page.click("#continue")
        page.wait_for_function("document.querySelectorAll('#continuation .generated').length === 5", timeout=20_000)
        generated = page.eval_on_selector_all("#continuation .generated", "spans => spans.map(s => s.textContent).join('')")
        assert page.input_value("#text") == typed + generated
        assert "%" in page.get_attribute("#continuation .generated", "title")
        page.wait_for_function(f"document.querySelectorAll('#heatmap span.unit').length === {len(typed + generated)}",
                               timeout=20_000)  # and the page predicts after the longer text
        # The char model mixes in its continuous cache: the memory entries its pointer copies the word's units
        # from are boxed (apart from the influence colours), one box per listed entry, as the API lists them.
        repeated = "The end of the war and the start of the year, the last of "
        page.fill("#text", repeated)
        page.wait_for_function(f"document.querySelectorAll('#heatmap span.unit').length === {len(repeated)}",
                               timeout=20_000)
        words = page.eval_on_selector_all("#predictions li .w", "spans => spans.map(s => s.textContent)")
        assert "the" in words  # and the cache copies it from the text
        page.click(f"#predictions li:nth-child({words.index('the') + 1})")
        page.wait_for_function("document.querySelector('#chosen').textContent.includes('the')")
        request = urllib.request.Request(page_server + "/v1/predict", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"text": repeated, "k": 5, "model": "char",
                                                          "attribution": "full"}).encode())
        with urllib.request.urlopen(request) as response:
            answer = json.load(response)
        pointer = next(p for p in answer["predictions"] if p["word"] == "the")["pointer"]
        listed = sorted(pointer["positions"], key=lambda q: q["start"])
        assert listed and pointer["entries"] >= len(listed)
        boxed = page.eval_on_selector_all("#heatmap span.pointer", "spans => spans.map(s => s.textContent).join('')")
        assert boxed == "".join(repeated[q["start"]:q["end"]] for q in listed)
        assert boxed.count("the") >= 4  # each earlier "the" votes for the word's units
        assert page.eval_on_selector_all("#heatmap span.pointer", "spans => spans.every(s => "
                                         "getComputedStyle(s).boxShadow.includes('inset'))")  # boxed
        assert page.locator("#heatmap span.pointer-first").count() == len(listed)  # one box per entry
        assert "pointer reach" in page.text_content("#pointer")
        assert f"from {pointer['entries']} places" in page.text_content("#pointer")
        assert "pointer" in page.text_content(".legend") and page.locator(".legend .pointer-key").count() == 1
        # Switching the model re-predicts with the other one (no cache there: nothing boxed, and the page says why).
        page.select_option("#model", "subword")
        page.wait_for_function("document.querySelectorAll('#heatmap span.unit').length < 30", timeout=20_000)
        assert page.locator("#heatmap span.pointer").count() == 0
        assert "no continuous cache" in page.text_content("#pointer")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
        assert not errors


def test_a_prediction_for_the_same_text_does_not_stop_a_continuation(page_server):
    """Changing the number of words shown re-predicts the same text while Continue streams: the continuation
    still arrives whole (only a changed text, or a newer continuation, makes it stale)."""
    with browser_page() as (page, errors):
        page.goto(page_server + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        typed = "The album was released in "
        page.fill("#text", typed)
        page.select_option("#words", "10")
        # Continue, then at once (the same task, before any word arrives) a new number of words: a prediction.
        page.evaluate("""() => { document.getElementById('continue').click();
            const k = document.getElementById('k'); k.value = '3'; k.dispatchEvent(new Event('change')); }""")
        page.wait_for_function("document.querySelector('#continuation').title.startsWith('seed')", timeout=20_000)
        generated = page.eval_on_selector_all("#continuation .generated", "spans => spans.map(s => s.textContent)")
        assert generated and page.input_value("#text") == typed + "".join(generated)
        assert not errors


KEY = "page-key-0123456789abcdef"


def test_a_server_with_keys_gets_its_key_from_the_page(tiny_run):
    """With API keys set, the page's first call is refused (401): it shows the key box; a wrong key is refused
    again, the right one brings the models and the predictions, every call sending it as a Bearer token."""
    from server import create_app

    app = create_app({"TESTING": True, "REACH_MODELS": {"char": str(tiny_run.out)}, "REACH_API_KEYS": (KEY,)})
    served = serve(app)
    address = next(served)
    try:
        with browser_page() as (page, errors):
            page.goto(address + "/")
            page.wait_for_function("!document.getElementById('keybox').hidden", timeout=20_000)
            assert "missing_api_key" in page.text_content("#status")
            page.fill("#apikey", "wrong-key-0123456789abcdef")
            page.dispatch_event("#apikey", "change")
            page.wait_for_function("document.getElementById('status').textContent.includes('invalid_api_key')")
            page.fill("#apikey", KEY)
            page.dispatch_event("#apikey", "change")
            page.wait_for_function("document.querySelectorAll('#model option').length === 1", timeout=20_000)
            page.fill("#text", "The album was ")
            page.wait_for_function("document.querySelectorAll('#predictions li').length === 5", timeout=20_000)
            assert not page.is_visible("#status.error") and not errors
            assert page.evaluate("sessionStorage.getItem('reach-api-key')") == KEY
    finally:
        next(served, None)
