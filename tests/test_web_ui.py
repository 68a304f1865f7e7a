"""The web UI every node serves at `/`, driven in a real browser (Playwright + Debian's chromium).

Two real nodes on loopback (A, and B bootstrapped from A); the browser talks to A. The resume test
has a swarm of its own: a `--no-model` gateway G whose UI the browser opens, and two model nodes,
one of which is killed mid-answer. The tests check behaviour only: text that grows while it
streams, a stop that really stops the node's work, an answer resumed on another node and the
footer naming it, the network view, readable errors. Never wall-clock speed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamanet.cli.launcher import NodeProcess

CHROMIUM = Path("/usr/bin/chromium")
# The README's picture is refreshed with LLAMANET_UPDATE_SCREENSHOT=1; other runs write it to
# test-artifacts/ (ignored by git) so a test run leaves the work tree clean.
_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = (
    _ROOT / "docs" if os.environ.get("LLAMANET_UPDATE_SCREENSHOT") else _ROOT / "test-artifacts"
) / "screenshot.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install "
        "chromium); Playwright's own browser download is not used",
    ),
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright for Python (pip install -e '.[dev]')"
)
Page = sync_api.Page
expect = sync_api.expect

# Records every distinct text of the newest assistant message, at each DOM change.
WATCH_ANSWER = """() => {
  window.__samples = [];
  const messages = document.querySelector('#messages');
  new MutationObserver(() => {
    const all = messages.querySelectorAll('.message.assistant .content');
    const text = all.length ? all[all.length - 1].textContent : '';
    if (text && window.__samples[window.__samples.length - 1] !== text) window.__samples.push(text);
  }).observe(messages, {subtree: true, childList: true, characterData: true});
}"""

LAST_ANSWER = ".message.assistant >> nth=-1"


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def swarm(start_node: Callable[..., NodeProcess]) -> dict[str, Any]:
    a = start_node("--model-id", "smol")
    b = start_node("--model-id", "smol", "--bootstrap", a.bootstrap)
    return {
        "a": a,
        "b": b,
        "a_id": a.get("/info").json()["node_id"],
        "b_id": b.get("/info").json()["node_id"],
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def open_page(browser: Any, url: str) -> Iterator[Page]:
    """A fresh browser context (empty localStorage) on the UI at `url`; fails on any page error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser: Any, swarm: dict[str, Any]) -> Iterator[Page]:
    """Node A's UI."""
    yield from open_page(browser, swarm["a"].url)


@pytest.fixture
def resume_swarm(start_node: Callable[..., NodeProcess]) -> Iterator[dict[str, Any]]:
    """A swarm of its own for the resume test: G holds no model (so it forwards, and resumes a
    stream whose node dies) and M1, M2 serve `smol` from the same GGUF (one fingerprint).
    Stopped after the test: the test kills one of them anyway."""
    g = start_node("--no-model", "--first-byte-timeout", "1", "--stall-timeout", "3")
    models = [
        start_node("--model-id", "smol", "--keepalive-interval", "1", "--bootstrap", g.bootstrap)
        for _ in range(2)
    ]

    def serving_smol() -> int:
        cards = {m["id"]: m for m in g.get("/v1/models").json()["data"]}
        return int(cards.get("smol", {}).get("nodes") or 0)

    try:
        wait_for(lambda: serving_smol() == 2, 60, "the gateway to see both model nodes")
        yield {"g": g, "models": {str(n.get("/info").json()["node_id"]): n for n in models}}
    finally:
        for node in (*models, g):
            node.stop()


@pytest.fixture
def gateway_page(browser: Any, resume_swarm: dict[str, Any]) -> Iterator[Page]:
    """The UI of the resume swarm's gateway G."""
    yield from open_page(browser, resume_swarm["g"].url)


# ---------------------------------------------------------------------- helpers


def configure(
    page: Page, *, max_tokens: int, temperature: float | None = None, stream: bool = True
) -> None:
    page.fill("#max-tokens", str(max_tokens))
    if temperature is not None:
        page.fill("#temperature", str(temperature))
    page.set_checked("#stream-toggle", stream)


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_answer_done(page: Page, timeout_ms: float = 120_000) -> None:
    page.wait_for_selector(".message.assistant[data-done=true]", timeout=timeout_ms)


def answer_text(page: Page) -> str:
    return page.locator(f"{LAST_ANSWER} >> .content").inner_text()


def expect_ready(page: Page) -> None:
    """The UI takes a new message: send enabled, stop hidden."""
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_hidden()


def cancelled(swarm: dict[str, Any]) -> int:
    return sum(swarm[n].status()["requests_cancelled"] for n in ("a", "b"))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---------------------------------------------------------------------- tests


def test_streamed_answer_grows_and_names_its_node(page: Page, swarm: dict[str, Any]) -> None:
    configure(page, max_tokens=48, temperature=0.2, stream=True)
    page.evaluate(WATCH_ANSWER)
    send(page, "Write a short poem about llamas.")
    wait_answer_done(page)

    final = answer_text(page).strip()
    assert final, "the streamed answer ended empty"
    samples = [s.strip() for s in page.evaluate("window.__samples")]
    partial = [s for s in samples if s and s != final]
    assert len(set(partial)) >= 2, f"the answer did not grow progressively: {samples!r}"
    assert max(len(s) for s in partial) > min(len(s) for s in partial), samples

    served = page.locator(f"{LAST_ANSWER} >> .served-by")
    node_id = served.get_attribute("data-node-id")
    assert node_id in (swarm["a_id"], swarm["b_id"])
    expect(served).to_contain_text(node_id[:12])
    assert node_id in (served.get_attribute("title") or "")
    expect_ready(page)


def test_stop_button_stops_generation_on_the_node(page: Page, swarm: dict[str, Any]) -> None:
    configure(page, max_tokens=1500, temperature=0.8, stream=True)
    before = cancelled(swarm)
    for _attempt in range(3):
        send(
            page,
            "Write a very long story, at least two thousand words, about a llama who "
            "travels around the world. Describe every country in detail.",
        )
        # generating: some text is there and the answer has not ended on its own
        page.wait_for_function(
            """() => { const m = [...document.querySelectorAll('.message.assistant')].pop();
                       return m && (m.dataset.done === 'true'
                                    || m.querySelector('.content').textContent.length > 40); }"""
        )
        if page.locator(LAST_ANSWER).get_attribute("data-done") != "true":
            break
        page.click("#new-chat")  # the model ended a "long" story early: try again
    else:
        pytest.fail("the model never produced an answer long enough to stop")

    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")

    expect_ready(page)
    answer = page.locator(LAST_ANSWER)
    expect(answer).to_have_attribute("data-done", "true")
    expect(answer.locator(".meta .finish.stopped")).to_be_visible()
    stopped_at = answer_text(page)
    assert stopped_at.strip()
    time.sleep(1.5)  # the node is not streaming into it any more
    assert answer_text(page) == stopped_at

    wait_for(lambda: cancelled(swarm) > before, 30, "requests_cancelled to go up on a node")


RESUME_TOKENS = 160


def test_answer_resumed_after_its_node_dies_names_the_continuation_node(
    gateway_page: Page, resume_swarm: dict[str, Any]
) -> None:
    """The model node streaming an answer to G's UI is SIGKILLed once text has appeared; G
    resumes the stream on the other node, and the footer names both: the first as the node
    that served it, the second as "continued on node <short id>"."""
    page = gateway_page
    expect(page.locator('#model option[value="smol"]')).to_be_attached()
    page.select_option("#model", "smol")
    configure(page, max_tokens=RESUME_TOKENS, temperature=0, stream=True)
    sent: list[dict[str, Any]] = []

    def no_early_end(route: Any) -> None:
        # the UI has no logit-bias setting: add one on the way to G so the answer cannot end
        # before the kill (no <|endoftext|> 0 or <|im_end|> 2), as tests/test_disconnects.py does
        body = json.loads(route.request.post_data or "{}")
        sent.append(dict(body))
        body["logit_bias"] = {"0": -100, "2": -100}
        route.continue_(post_data=json.dumps(body))

    page.route("**/v1/chat/completions", no_early_end)
    send(page, "Write a long story about a robot who learns to paint.")
    # streaming: some text is there, the answer has not ended, and the header named its node
    page.wait_for_function(
        """() => { const m = [...document.querySelectorAll('.message.assistant')].pop();
                   return m && m.dataset.nodeId && m.dataset.done !== 'true'
                          && m.querySelector('.content').textContent.length > 40; }"""
    )
    answer = page.locator(LAST_ANSWER)
    first = answer.get_attribute("data-node-id")
    assert first in resume_swarm["models"], (first, list(resume_swarm["models"]))
    (second,) = set(resume_swarm["models"]) - {first}
    resume_swarm["models"][first].kill()  # SIGKILL mid-answer
    at_kill = answer_text(page)
    assert answer.get_attribute("data-done") != "true", "the answer ended before the kill"

    wait_answer_done(page)
    assert sent and sent[0]["model"] == "smol" and sent[0]["temperature"] == 0
    assert sent[0]["max_tokens"] == RESUME_TOKENS and sent[0]["stream"] is True
    assert f"resumed a stream on {second[:12]}" in resume_swarm["g"].log()

    # the answer completed: every token, no error, not cut short
    final = answer_text(page)
    assert len(final) > len(at_kill) and final.startswith(at_kill[:30]), (at_kill, final)
    expect(answer).to_have_attribute("data-finish-reason", "length")
    expect(answer).not_to_have_class(re.compile(r"\b(interrupted|stopped)\b"))
    assert page.locator(".message.error").count() == 0
    meta = answer.locator(".meta")
    expect(meta.locator(".tokens")).to_have_text(f"{RESUME_TOKENS} tokens")
    expect(meta.locator(".finish")).to_have_text("cut at max tokens")

    # the footer: served by the killed node, continued on the other one
    served = meta.locator("[data-testid=served-by]")
    expect(served).to_have_attribute("data-node-id", first)
    expect(served).to_contain_text(f"node {first[:12]} (peer)")
    continued = meta.locator("[data-testid=continued-on]")
    expect(continued).to_have_text(f"continued on node {second[:12]}")
    expect(continued).to_have_attribute("data-node-ids", second)
    assert second in (continued.get_attribute("title") or "")
    expect_ready(page)


def test_network_view_shows_both_nodes(page: Page, swarm: dict[str, Any]) -> None:
    for node_id in (swarm["a_id"], swarm["b_id"]):
        card = page.locator(f'#nodes .node[data-node-id="{node_id}"]')
        expect(card).to_be_visible(timeout=60_000)
        expect(card.locator(".node-id")).to_have_text(node_id[:12])
        expect(card.locator(".models")).to_contain_text("smol")
    own = page.locator(f'#nodes .node[data-node-id="{swarm["a_id"]}"]')
    expect(own).to_have_class(re.compile(r"\bself\b"))
    expect(own).to_contain_text("this node")
    expect(page.locator(f'#nodes .node[data-node-id="{swarm["b_id"]}"]')).not_to_contain_text(
        "this node"
    )


def test_missing_model_is_a_clear_error(page: Page) -> None:
    configure(page, max_tokens=8)
    page.select_option("#model", "__custom__")
    page.fill("#model-custom", "no-such-model")
    send(page, "Hello?")

    error = page.locator(".error").last
    expect(error).to_be_visible()
    expect(error).to_contain_text('Model "no-such-model" is not available in the swarm')
    expect(error).to_contain_text("smol")  # what is available instead
    expect_ready(page)
    assert page.locator(".message.assistant").count() == 0


def test_non_streaming_answer(page: Page, swarm: dict[str, Any]) -> None:
    configure(page, max_tokens=24, temperature=0.2, stream=False)
    with page.expect_request("**/v1/chat/completions") as request:
        send(page, "Name three colors.")
    assert json.loads(request.value.post_data or "{}")["stream"] is False
    wait_answer_done(page)

    assert answer_text(page).strip()
    served = page.locator(f"{LAST_ANSWER} >> .served-by")
    assert served.get_attribute("data-node-id") in (swarm["a_id"], swarm["b_id"])
    expect(page.locator(f"{LAST_ANSWER} >> .meta .tokens")).to_contain_text("token")
    expect_ready(page)


def test_unreachable_node_is_reported(page: Page) -> None:
    """A request that never reaches a node (connection refused/reset) says so in plain words."""
    page.route("**/v1/chat/completions", lambda route: route.abort("connectionreset"))
    configure(page, max_tokens=8)
    send(page, "Hello?")
    expect(page.locator(".error").last).to_contain_text("The node stopped responding")
    expect_ready(page)


def test_api_key_is_asked_for_on_401_and_sent(page: Page) -> None:
    """Nodes have no API keys yet: a 401 is simulated in front of the real node."""
    seen: list[str | None] = []

    def guard(route: Any) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth != "Bearer sk-test":
            route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps(
                    {
                        "error": {
                            "message": "Invalid API key.",
                            "type": "authentication_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                ),
            )
        else:
            route.continue_()

    page.route("**/v1/chat/completions", guard)
    configure(page, max_tokens=8, stream=True)
    send(page, "Hi")
    dialog = page.locator("#api-key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#api-key", "sk-test")
    page.click("#api-key-save")
    wait_answer_done(page)
    assert seen == [None, "Bearer sk-test"]
    assert page.evaluate("localStorage.getItem('llamanet.apiKey')") == "sk-test"
    with page.expect_request("**/nodes") as poll:
        pass
    assert poll.value.headers.get("authorization") == "Bearer sk-test"


def test_screenshot_after_streamed_answer(page: Page, swarm: dict[str, Any]) -> None:
    """Writes docs/screenshot.png (shown in the README): both nodes and a streamed answer."""
    for node_id in (swarm["a_id"], swarm["b_id"]):
        expect(page.locator(f'#nodes .node[data-node-id="{node_id}"]')).to_be_visible(
            timeout=60_000
        )
    configure(page, max_tokens=120, temperature=0, stream=True)
    send(
        page,
        "Show a Python function that reverses a string, in a markdown code block, with a "
        "one-line explanation.",
    )
    wait_answer_done(page)
    assert answer_text(page).strip()
    # a poll after the answer: the cards show the nodes idle again
    own = page.locator(f'#nodes .node[data-node-id="{swarm["a_id"]}"]')
    expect(own).not_to_have_class(re.compile(r"\bbusy\b"), timeout=15_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(300)  # let the last frame and bar transitions settle
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
