"""The admin page (/admin) in a real browser: Debian's Chromium driven by Playwright, against the
app under gunicorn with the fake upstreams and its real admin API. Also draws the admin
screenshots (into docs/screenshots with SCREENSHOTS=1)."""

import re
import time

import pytest
import requests
from playwright.sync_api import expect

from tests.conftest import ADMIN_TOKEN, GEMINI_KEYS, ZJU_KEYS
from tests.fakes import gemini_429, gemini_error
from tests.browser import DESKTOP, PHONE, SCREENSHOT_LIMIT, SCREENSHOTS, docs_screenshots, screenshot_dir

MODEL = "gemini-2.5-flash"
TOKEN_KEY = "chatbridge.adminToken"
# What Chromium itself logs for a fetch answered 401 or 404; expected where a test causes it.
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of (401|404)")

# The pixels of a canvas drawn in a colour (an "r g b" CSS hex from the page's variables):
# how many are that colour, give or take antialiasing.
COUNT_PIXELS = """(canvas, name) => {
  const hex = getComputedStyle(canvas).getPropertyValue(name).trim();
  const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let found = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && want.every((v, c) => Math.abs(data[i + c] - v) < 8)) found += 1;
  }
  return found;
}"""


def suffix(key: str) -> str:
    return key[-4:]


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def page(context):
    """A page that fails its test on a script error, a console error (but the 401 and 404
    answers of the admin API, which Chromium logs and a test may cause on purpose) or
    anything the page's policy refused."""
    page = context.new_page()
    page.set_default_timeout(5000)
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and not expected_refusal(message)
            and problems.append(f"console: {message.text} at {message.location.get('url')}"))
    yield page
    violations = [] if page.is_closed() else page.evaluate("window.__violations || []")
    assert problems == [] and violations == []


def expected_refusal(message) -> bool:
    return bool(REFUSED.match(message.text)) and "/api/keys" in message.location.get("url", "")


@pytest.fixture
def signed_in(context):
    """The admin token already kept in the browser, as after a first visit."""
    context.add_init_script(f"localStorage.setItem({TOKEN_KEY!r}, {ADMIN_TOKEN!r})")
    return context


def open_admin(page, server):
    response = page.goto(server.url + "/admin")
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    return response


def row(page, provider, key):
    return page.locator(f'section[data-provider="{provider}"] tr.key-row[data-key="{suffix(key)}"]')


def chat(server, text="hello"):
    """One streamed /api/chat request to Gemini, read to its end."""
    response = requests.post(server.url + "/api/chat", json={"message": text, "model": MODEL},
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def until(page, condition, seconds=10.0):
    """Click Refresh until condition() holds: usage reaches the store a moment after a request."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the page never showed it"
        page.click("#refresh")
        page.wait_for_timeout(300)


def keys_from_api(server):
    response = requests.get(server.url + "/api/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=5)
    return {(name, entry["key"][-4:]): entry for name, entries in response.json()["providers"].items()
            for entry in entries}


def only_key(gemini, key, reply):
    """A fake Gemini script that answers generation requests with the given key with reply."""
    gemini.script = lambda recorded: reply if recorded.key == key and recorded.method == "POST" else None


# ---------------------------------------------------------------- tests


def test_the_page_asks_for_the_token_once_and_shows_every_key(page, server):
    response = open_admin(page, server)
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "pasted with a space")  # no header can carry it
    page.press("#token-input", "Enter")
    expect(page.locator("#token-why")).to_contain_text("without spaces")
    page.fill("#token-input", "not-the-admin-token")
    page.press("#token-input", "Enter")
    expect(page.locator("#token-why")).to_contain_text("not accepted")
    expect(dialog).to_be_visible()
    page.fill("#token-input", ADMIN_TOKEN)
    page.click("#token-save")
    expect(dialog).to_be_hidden()
    for key in GEMINI_KEYS:
        expect(row(page, "gemini", key).locator(".key-name")).to_have_text("…" + suffix(key))
        expect(row(page, "gemini", key).locator(".badge")).to_have_text("ok")
    for key in ZJU_KEYS:
        expect(row(page, "zju", key)).to_be_visible()
    expect(page.locator("section.provider")).to_have_count(2)
    assert page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") == ADMIN_TOKEN
    for key in GEMINI_KEYS + ZJU_KEYS:  # the page never holds more of a key than its last four
        assert key[:-4] not in page.content()
    page.reload()
    expect(row(page, "gemini", GEMINI_KEYS[0])).to_be_visible()
    expect(dialog).to_be_hidden()  # asked once, kept
    page.click("#forget")
    expect(page.locator("#notice")).to_contain_text("forgotten")
    expect(page.locator("section.provider")).to_have_count(0)
    assert page.evaluate(f"localStorage.getItem({TOKEN_KEY!r})") is None
    page.click("#notice-action")
    expect(dialog).to_be_visible()


def test_a_cancelled_prompt_shows_nothing_and_says_why(page, server):
    open_admin(page, server)
    page.click("#token-cancel")
    expect(page.locator("#notice")).to_contain_text("ADMIN_TOKEN")
    expect(page.locator("section.provider")).to_have_count(0)


def test_the_page_says_when_the_admin_api_is_off(signed_in, page, token_server):
    response = open_admin(page, token_server)  # a server without ADMIN_TOKEN
    assert response.status == 200
    expect(page.locator("#notice")).to_contain_text("admin API is off")
    expect(page.locator("#token-dialog")).to_be_hidden()


def test_a_resting_key_shows_why_and_comes_back_with_reset(signed_in, page, server, gemini):
    resting = GEMINI_KEYS[0]
    only_key(gemini, resting, gemini_429(retry_delay="50s"))
    for n in range(3):
        assert '"text"' in chat(server, f"question {n}")  # failed over to another key
    open_admin(page, server)
    line = row(page, "gemini", resting)
    expect(line.locator(".badge")).to_have_text("cooling")
    expect(line.locator(".rest")).to_contain_text(f"{MODEL}, rate limited until")
    until(page, lambda: line.locator(".failures .value").inner_text() == "1")
    expect(line.locator(".failures .sub")).to_have_text("rate limited 1")
    expect(line.locator(".last-error")).to_contain_text("quota")
    line.locator(".reset").click()
    expect(line.locator(".badge")).to_have_text("ok")
    expect(line.locator(".check-result")).to_have_text("Rest ended")
    expect(line.locator(".reset")).to_be_disabled()
    assert keys_from_api(server)[("gemini", suffix(resting))]["state"] == "ok"


def test_the_check_button_shows_the_result_and_spends_no_generation(signed_in, page, server, gemini):
    key = GEMINI_KEYS[2]
    gemini.valid_keys = set(GEMINI_KEYS[:2])
    open_admin(page, server)
    line = row(page, "gemini", key)
    line.locator(".check").click()
    expect(line.locator(".check-result")).to_contain_text("Fails: invalid key")
    expect(line.locator(".check-result")).to_have_attribute("title", re.compile("API key not valid"))
    gemini.valid_keys = None
    line.locator(".check").click()
    expect(line.locator(".check-result")).to_contain_text("Works")
    expect(line.locator(".badge")).to_have_text("ok")
    assert [(r.method, r.path) for r in gemini.requests if r.key == key] == [("GET", "/v1beta/models")] * 2
    line.locator(".key-toggle").click()
    expect(page.locator(f'tr.details-row[data-key="{suffix(key)}"] .checked')).to_contain_text("Works")


def test_the_chart_draws_requests_and_failures(signed_in, page, server, gemini):
    failing = GEMINI_KEYS[1]
    only_key(gemini, failing, gemini_error(503, "UNAVAILABLE", "The model is overloaded."))
    for n in range(4):
        chat(server, f"question {n}")
    open_admin(page, server)
    canvas = row(page, "gemini", failing).locator("canvas.spark")
    until(page, lambda: "failures" in (canvas.get_attribute("aria-label") or "")
          and "0 failures" not in canvas.get_attribute("aria-label"))
    assert canvas.evaluate(COUNT_PIXELS, "--chart-failures") > 0
    quiet = row(page, "zju", ZJU_KEYS[0]).locator("canvas.spark")
    expect(quiet).to_have_attribute("aria-label", "No requests in the last hour")
    assert quiet.evaluate(COUNT_PIXELS, "--chart-requests") == 0
    busy = [row(page, "gemini", key).locator("canvas.spark") for key in GEMINI_KEYS]
    assert sum(c.evaluate(COUNT_PIXELS, "--chart-requests") for c in busy) > 0
    page.emulate_media(color_scheme="dark")  # drawn again in the dark palette
    page.wait_for_timeout(100)
    assert canvas.evaluate(COUNT_PIXELS, "--chart-failures") > 0


def test_server_text_is_shown_as_text(signed_in, page, server, gemini):
    attack = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    only_key(gemini, GEMINI_KEYS[0], gemini_error(503, "UNAVAILABLE", attack))
    for n in range(3):
        chat(server, f"question {n}")
    open_admin(page, server)
    error = row(page, "gemini", GEMINI_KEYS[0]).locator(".error-text")
    expect(error).to_contain_text('<img src=x onerror="window.__pwned=1">')
    assert page.locator("#providers img, #providers script").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_it_refreshes_itself_and_pauses_while_hidden(signed_in, page, server):
    page.clock.install()
    loads = []
    page.on("request", lambda request: request.url.endswith("/api/keys") and loads.append(request.url))
    open_admin(page, server)
    expect(row(page, "gemini", GEMINI_KEYS[0])).to_be_visible()
    expect(page.locator("#status")).to_contain_text("refreshes every 10 s")
    assert len(loads) == 1
    with page.expect_response(lambda response: response.url.endswith("/api/keys")):
        page.clock.run_for(10_500)
    assert len(loads) == 2
    page.evaluate("""() => {
      Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
      document.dispatchEvent(new Event("visibilitychange"));
    }""")
    expect(page.locator("#status")).to_contain_text("paused")
    page.clock.run_for(60_000)
    page.wait_for_timeout(200)
    assert len(loads) == 2
    with page.expect_response(lambda response: response.url.endswith("/api/keys")):
        page.evaluate("""() => {
          Object.defineProperty(document, "hidden", {configurable: true, get: () => false});
          document.dispatchEvent(new Event("visibilitychange"));
        }""")
    assert len(loads) == 3


def test_a_phone_gets_a_card_per_key(signed_in, page, server):
    page.set_viewport_size(PHONE)
    open_admin(page, server)
    line = row(page, "gemini", GEMINI_KEYS[0])
    expect(line).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert line.locator(".chart").evaluate("e => getComputedStyle(e, '::before').content") == '"Last hour"'
    expect(line.locator(".check")).to_be_in_viewport()


# ---------------------------------------------------------------- screenshots


def test_screenshots(signed_in, page, server, gemini, tmp_path):
    """Desktop in light mode and a phone in dark mode, for the README (docs/screenshots, with
    SCREENSHOTS=1)."""
    directory, before = screenshot_dir(tmp_path), docs_screenshots()
    only_key(gemini, GEMINI_KEYS[0], gemini_429(retry_delay="50s"))
    for n in range(6):
        chat(server, f"question {n}")
    gemini.valid_keys = set(GEMINI_KEYS[:2])
    open_admin(page, server)
    line = row(page, "gemini", GEMINI_KEYS[2])
    line.locator(".check").click()
    expect(line.locator(".check-result")).to_contain_text("Fails")
    until(page, lambda: row(page, "gemini", GEMINI_KEYS[0]).locator(".failures .value").inner_text() == "1")
    row(page, "gemini", GEMINI_KEYS[1]).locator(".key-toggle").click()
    for name, size, scheme in (("desktop", DESKTOP, "light"), ("phone", PHONE, "dark")):
        page.emulate_media(color_scheme=scheme)
        page.set_viewport_size(size)
        page.wait_for_timeout(100)  # the charts redraw on the next frame
        path = directory / f"admin-{name}-{scheme}.png"
        page.screenshot(path=path, animations="disabled", caret="hide", full_page=name == "desktop")
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size < SCREENSHOT_LIMIT
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]
    assert directory == SCREENSHOTS or docs_screenshots() == before, "only SCREENSHOTS=1 redraws the README's"
