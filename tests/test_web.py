"""The web page (clients/web/) in real headless Chromium against the real server.

Needs the ``playwright`` Python package and a Chromium binary (Debian: ``apt-get install
chromium``; ``$STREAMTTS_CHROMIUM`` overrides the path). No browser download is involved: Playwright
drives the system Chromium. The page's state is read from ``window.streamtts``.

A screenshot of the page mid-speech goes to the test's tmp dir, or to ``$STREAMTTS_SCREENSHOT``
(how ``docs/page.png`` is refreshed: ``STREAMTTS_SCREENSHOT=docs/page.png pytest tests/test_web.py``).
"""

from __future__ import annotations

import math
import os
import shutil
import time

import pytest

from support.fixtures import API_KEY

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--autoplay-policy=no-user-gesture-required"]
TEXT = "你好，欢迎使用流式语音合成。今天天气很好，我们一起出去走走吧！"
LONG = "春天来了，公园里的花都开了。小朋友们在草地上放风筝，老人们在树下下棋。" * 6


def chromium_path() -> str | None:
    for candidate in (os.environ.get("STREAMTTS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@pytest.fixture(scope="module")
def server(int8_server):
    return int8_server


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set STREAMTTS_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 620})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/?api_key=" + API_KEY)
    pg.wait_for_function("window.streamtts && window.streamtts.voices.length > 0", timeout=15_000)
    yield pg
    context.close()
    assert not errors, errors


def state(pg) -> dict:
    return pg.evaluate("({...window.streamtts, voices: undefined})")


def test_page_streams_plays_and_highlights(page, tmp_path):
    rate = page.evaluate("new AudioContext().sampleRate")
    page.select_option("#voice", "Aiyue")
    page.fill("#text", TEXT)
    page.click("#speak")
    page.wait_for_function("window.streamtts.samplesPlayed > 0", timeout=30_000)

    # while it plays: the highlight follows the worklet's played samples
    trace = []
    shot = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        s = state(page)
        trace.append(s)
        if shot is None and s["highlighted"] >= 8:
            shot = True
            # tests never write into the checkout: STREAMTTS_SCREENSHOT=PATH keeps a copy
            page.screenshot(path=os.environ.get("STREAMTTS_SCREENSHOT") or str(tmp_path / "page.png"))
        if s["state"] != "speaking":
            break
        time.sleep(0.05)
    final = state(page)
    assert final["state"] == "done", final

    # audio arrived at the context's rate and every sample went through the worklet
    assert final["sampleRate"] in (rate, 48000) and final["contextRate"] == rate
    assert final["samplesReceived"] > 2.0 * final["sampleRate"]
    assert final["samplesPlayed"] == final["samplesReceived"]
    assert final["segments"] >= 2 and final["error"] is None
    # TTFA measured and shown
    assert 0 < final["ttfaMs"] < 30_000
    # the page rounds half up (Math.round); Python's round() would take 42.5 to 42
    assert page.inner_text("#ttfa") == f"{math.floor(final['ttfaMs'] + 0.5)} ms"
    # highlighting advanced with playback, in many steps, and covers the text at the end
    lit = [s["highlighted"] for s in trace]
    assert lit == sorted(lit), lit
    assert len(set(lit)) >= 6, lit
    played_half = [s for s in trace if s["samplesPlayed"] < 0.5 * final["samplesReceived"]]
    assert played_half and max(s["highlighted"] for s in played_half) < final["totalChars"]
    assert final["highlighted"] == final["totalChars"] == len(TEXT)
    assert page.locator("#spoken span.done").count() == len(TEXT)
    assert page.inner_text("#status") == "done"


def test_stop_cancels_and_silences_at_once(page):
    page.fill("#text", LONG)
    page.click("#speak")
    page.wait_for_function("window.streamtts.samplesPlayed > 0.5 * window.streamtts.sampleRate", timeout=30_000)
    before = state(page)
    assert before["state"] == "speaking" and not before["streamEnded"], "the text should still be streaming"
    page.click("#stop")
    page.wait_for_function("window.streamtts.cancelled", timeout=10_000)
    at_cancel = state(page)
    assert at_cancel["state"] == "stopped"
    time.sleep(1.5)  # anything the server still sent would arrive by now
    after = state(page)
    assert after["framesAfterCancelled"] == 0 and after["samplesAfterCancelled"] == 0
    assert after["samplesReceived"] == at_cancel["samplesReceived"]
    assert after["buffered"] == 0  # the worklet's buffer was flushed ...
    # ... at once: what played after the click is at most a few render quanta, then nothing
    assert after["samplesPlayed"] - before["samplesPlayed"] < 0.5 * after["sampleRate"]
    time.sleep(0.5)
    assert state(page)["samplesPlayed"] == after["samplesPlayed"]
    assert after["samplesReceived"] < 30 * after["sampleRate"]  # far less than the whole text
    assert page.inner_text("#status") == "stopped" and page.is_disabled("#stop")

    # and it speaks again afterwards
    page.fill("#text", "再见。")
    page.click("#speak")
    page.wait_for_function("window.streamtts.state === 'done'", timeout=30_000)
    again = state(page)
    assert again["samplesPlayed"] == again["samplesReceived"] > 0 and again["highlighted"] == 3


def test_page_without_key_says_so(browser, server):
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(server.url + "/")
    pg.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "API key" in pg.inner_text("#error")
    pg.click("#speak")
    pg.wait_for_function("window.streamtts.state === 'error'", timeout=15_000)
    assert "API key" in pg.inner_text("#error")
    context.close()


def test_page_converts_a_context_rate_the_server_does_not_send(browser, server):
    """An AudioContext at 32 kHz: the page asks for 48 kHz and the worklet converts, sample-exact."""
    context = browser.new_context()
    context.add_init_script("""{
        const Base = window.AudioContext;
        window.AudioContext = class extends Base { constructor(o) { super({...o, sampleRate: 32000}); } };
    }""")
    pg = context.new_page()
    pg.goto(server.url + "/?api_key=" + API_KEY)
    pg.wait_for_function("window.streamtts.voices.length > 0", timeout=15_000)
    pg.fill("#text", "你好，世界。")
    pg.click("#speak")
    pg.wait_for_function("window.streamtts.state === 'done'", timeout=30_000)
    s = state(pg)
    context.close()
    assert s["contextRate"] == 32000 and s["sampleRate"] == 48000
    assert s["samplesPlayed"] == s["samplesReceived"] > 48000 and s["highlighted"] == 6
