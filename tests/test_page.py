"""The chat page in a real browser: Debian's Chromium driven by Playwright, against the app under
gunicorn with the fake upstreams. Also takes the screenshots, into docs/screenshots with
SCREENSHOTS=1."""

import base64
import json
import re
import struct
import zlib
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.browser import DESKTOP, PHONE, SCREENSHOT_LIMIT, SCREENSHOTS, docs_screenshots, screenshot_dir
from tests.conftest import TOKEN
from tests.fakes import Reply, gemini_error, gemini_events, gemini_midstream_error, gemini_sse, gemini_stream

PERSIAN = "سلام! چطور در پایتون یک فایل را خط به خط بخوانم؟"

def png(width=4, height=4, rgb=(47, 111, 237)) -> bytes:
    """A small solid-colour PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def answering(reply):
    """A fake Gemini script that sends reply (a Reply, or a function of the request) for
    generation requests only, so the page's model list still loads."""
    def script(recorded):
        if not recorded.path.endswith(":streamGenerateContent"):
            return None
        return reply(recorded) if callable(reply) else reply
    return script


def slowly(texts, pause=0.6):
    """A Gemini stream whose text chunks arrive `pause` seconds apart."""
    chunks = []
    for frame in gemini_sse(gemini_events(texts)):
        chunks += [frame, pause]
    return Reply(chunks=chunks[:-1])


def generations(gemini):
    """The recorded generation requests' bodies."""
    return [r.json for r in gemini.requests if r.path.endswith(":streamGenerateContent")]


def texts_of(content):
    """The text parts of one Gemini content."""
    return "".join(part.get("text", "") for part in content["parts"])


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def page(context):
    """A page that fails its test on a script error or anything the page's policy refused."""
    page = context.new_page()
    page.set_default_timeout(5000)
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and "Content Security Policy" in message.text
            and problems.append(f"console: {message.text}"))
    yield page
    violations = [] if page.is_closed() else page.evaluate("window.__violations || []")
    assert problems == [] and violations == []


def open_page(page, server):
    page.goto(server.url + "/")
    expect(page.locator("html")).to_have_attribute("data-ready", "true")


def send(page, text):
    page.fill("#message", text)
    page.press("#message", "Enter")


def answers(page):
    return page.locator('.message[data-role="assistant"]')


def questions(page):
    return page.locator('.message[data-role="user"]')


# ---------------------------------------------------------------- tests


def test_the_page_loads_clean_under_its_policy(page, server, gemini):
    messages = []
    page.on("console", lambda message: messages.append(f"{message.type}: {message.text}"))
    response = page.goto(server.url + "/")
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    expect(page.locator("html")).to_have_attribute("data-ready", "true")
    expect(page.locator("#model option", has_text="echo")).to_have_count(1)  # filled from /v1/models
    assert page.locator("#model").input_value() == "gemini-2.5-flash"
    gemini.script = answering(gemini_stream(["## Hi\n\n```js\nlet a = 1;\n```\n\n- [x](https://e.org)"]))
    send(page, "hello")
    expect(answers(page).locator(".code-block")).to_be_visible()
    assert page.locator("#message").get_attribute("dir") == "auto"
    assert [m for m in messages if m.startswith(("error", "warning"))] == []


def test_an_answer_streams_in_and_grows(page, server, gemini):
    gemini.script = answering(slowly(["First part. ", "Second part. ", "Third part."]))
    open_page(page, server)
    page.fill("#message", "line one")
    page.press("#message", "Shift+Enter")
    page.type("#message", "line two")
    page.press("#message", "Enter")
    expect(questions(page).locator(".content")).to_have_text("line one\nline two")
    answer = answers(page).locator(".content")
    expect(answer).to_have_text("First part.")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    expect(answer).to_have_text("First part. Second part.")
    expect(answer).to_have_text("First part. Second part. Third part.")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    assert texts_of(generations(gemini)[0]["contents"][-1]) == "line one\nline two"


def test_markdown_renders(context, page, server, gemini):
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    gemini.script = answering(gemini_stream([
        "## Reading a file\n\nUse **with** and *a loop*, or `pathlib`:\n\n",
        "- open it\n- read each line\n  - nested\n\n1. one\n2. two\n\n```python\nfor line in open('f'):\n",
        "    print(line)\n```\n\nSee [the docs](https://docs.python.org/3/) and [this](javascript:alert(1)).",
    ]))
    open_page(page, server)
    send(page, "How do I read a file?")
    answer = answers(page).locator(".content")
    expect(answer.locator("h2")).to_have_text("Reading a file")
    expect(answer.locator("strong")).to_have_text("with")
    expect(answer.locator("em")).to_have_text("a loop")
    expect(answer.locator("p code")).to_have_text("pathlib")
    expect(answer.locator("ul > li")).to_have_count(3)
    expect(answer.locator("ul ul > li")).to_have_text("nested")
    expect(answer.locator("ol > li")).to_have_text(["one", "two"])
    code = answer.locator(".code-block code.language-python")
    expect(code).to_have_text("for line in open('f'):\n    print(line)")
    link = answer.locator("a")
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", "https://docs.python.org/3/")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(answer).to_contain_text("and this.")  # the javascript: link keeps only its label
    copy = answer.locator(".code-block .copy")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "for line in open('f'):\n    print(line)"


def test_markup_in_an_answer_never_runs(page, server, gemini):
    attack = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> '
              '[click](javascript:window.__pwned=3) <a href="javascript:window.__pwned=4">a</a>')
    gemini.script = answering(gemini_stream([attack[:30], attack[30:]]))
    requested = []
    page.on("request", lambda request: requested.append(urlsplit(request.url).path))
    open_page(page, server)
    send(page, '<img src=y onerror="window.__pwned=5"> hi')
    answer = answers(page).locator(".content")
    expect(answer).to_contain_text('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2">')
    expect(questions(page)).to_contain_text('<img src=y onerror="window.__pwned=5"> hi')
    for _ in range(2):  # as streamed, then as rendered again from storage
        assert page.locator(".conversation script, .conversation img, .conversation a").count() == 0
        page.locator(".conversation").click(position={"x": 10, "y": 10})
        assert page.evaluate("typeof window.__pwned") == "undefined"
        page.reload()
        expect(answer).to_contain_text("click")
    assert "/x" not in requested and "/y" not in requested


def test_stop_aborts_and_the_upstream_sees_its_connection_closed(page, server, gemini):
    gemini.script = answering(Reply(chunks=gemini_sse(gemini_events(["Partial answer"], finish=None)),
                                    hang=True))
    open_page(page, server)
    send(page, "Tell me a long story")
    expect(answers(page).locator(".content")).to_have_text("Partial answer")
    page.click("#stop")
    assert gemini.wait_for_disconnects(1, 5.0)
    expect(answers(page)).to_have_class(re.compile(r"\bstopped\b"))
    expect(answers(page).locator(".status")).to_have_text("Stopped")
    expect(page.locator("#send")).to_be_visible()
    page.reload()
    expect(answers(page).locator(".content")).to_have_text("Partial answer")  # kept, marked stopped
    expect(answers(page)).to_have_class(re.compile(r"\bstopped\b"))


def test_an_uploaded_image_reaches_gemini_as_inline_data(page, server, gemini):
    image = png()
    open_page(page, server)
    page.set_input_files("#file", files=[{"name": "blue.png", "mimeType": "image/png", "buffer": image}])
    chip = page.locator("#attachments .chip")
    expect(chip).to_have_attribute("data-status", "ready")
    expect(chip.locator(".chip-name")).to_have_text("blue.png")
    assert chip.locator("img.thumb").get_attribute("src").startswith("blob:")
    send(page, "What colour is this?")
    expect(answers(page).locator(".content")).to_have_text("You said: What colour is this?")
    expect(chip).to_have_count(0)
    expect(questions(page).locator(".file-badge img")).to_be_visible()
    parts = generations(gemini)[0]["contents"][-1]["parts"]
    inline = [p.get("inline_data") or p.get("inlineData") for p in parts if "inline_data" in p or "inlineData" in p]
    assert inline == [{"mime_type": "image/png", "data": base64.b64encode(image).decode()}]


def test_a_file_can_be_removed_before_sending(page, server, gemini):
    open_page(page, server)
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}])
    expect(page.locator(".chip .file-kind")).to_have_text("TXT")
    page.click(".chip-remove")
    expect(page.locator("#attachments")).to_be_hidden()
    send(page, "no file")
    expect(answers(page).locator(".content")).to_have_text("You said: no file")
    assert all("inline_data" not in part for part in generations(gemini)[0]["contents"][-1]["parts"])


def test_a_persian_message_reads_right_to_left(page, server, gemini):
    gemini.script = answering(gemini_stream(["خواندن فایل **ساده** است.\n\n", "Use `open()` in English."]))
    open_page(page, server)
    page.fill("#message", PERSIAN)
    assert page.eval_on_selector("#message", "e => getComputedStyle(e).direction") == "rtl"
    page.press("#message", "Enter")
    expect(answers(page).locator("p").nth(1)).to_have_text("Use open() in English.")
    direction = "e => getComputedStyle(e).direction"
    assert questions(page).locator(".content").evaluate(direction) == "rtl"
    paragraphs = answers(page).locator(".content p")
    assert paragraphs.nth(0).evaluate(direction) == "rtl"
    assert paragraphs.nth(1).evaluate(direction) == "ltr"
    assert texts_of(generations(gemini)[0]["contents"][-1]) == PERSIAN


def test_a_reload_keeps_the_conversation_and_sends_it_as_history(page, server, gemini):
    open_page(page, server)
    send(page, "My name is Ada.")
    expect(answers(page).locator(".content")).to_have_text("You said: My name is Ada.")
    page.reload()
    expect(questions(page)).to_have_text(["My name is Ada."])
    expect(answers(page).locator(".content")).to_have_text(["You said: My name is Ada."])
    expect(page.locator("#chat-list .chat-open")).to_have_text(["My name is Ada."])
    send(page, "What is my name?")
    expect(answers(page).nth(1).locator(".content")).to_have_text("You said: What is my name?")
    contents = generations(gemini)[-1]["contents"]
    assert [(c["role"], texts_of(c)) for c in contents] == [
        ("user", "My name is Ada."), ("model", "You said: My name is Ada."), ("user", "What is my name?")]


def test_new_chat_and_the_sidebar_switch_and_delete(page, server, gemini):
    open_page(page, server)
    send(page, "First conversation")
    expect(answers(page)).to_have_count(1)
    expect(answers(page).locator(".content")).to_have_text("You said: First conversation")
    page.click("#new-chat")
    expect(page.locator("#welcome")).to_be_visible()
    send(page, "Second conversation")
    expect(answers(page).locator(".content")).to_have_text("You said: Second conversation")
    assert len(generations(gemini)[-1]["contents"]) == 1  # a new chat starts without history
    items = page.locator("#chat-list .chat-open")
    expect(items).to_have_text(["Second conversation", "First conversation"])
    items.nth(1).click()
    expect(questions(page)).to_have_text(["First conversation"])
    page.reload()
    expect(questions(page)).to_have_text(["First conversation"])  # the open conversation is kept too
    page.locator("#chat-list .chat-item.current .chat-delete").click()
    expect(items).to_have_text(["Second conversation"])
    expect(page.locator("#welcome")).to_be_visible()


def test_the_sidebar_folds_away_on_a_phone(page, server):
    page.set_viewport_size(PHONE)
    open_page(page, server)
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    page.click("#sidebar-toggle")
    expect(sidebar).to_be_in_viewport()
    page.click("#scrim", position={"x": 370, "y": 400})
    expect(sidebar).not_to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_access_token_link_shows_only_when_tokens_are_configured(page, server, token_server):
    link = page.locator(".sidebar-foot #token-change")
    open_page(page, server)
    expect(link).to_be_hidden()
    open_page(page, token_server)
    expect(link).to_be_visible()
    expect(link).to_have_text("Access token…")


def test_the_token_prompt_appears_on_401_and_the_retry_succeeds(page, token_server, gemini):
    open_page(page, token_server)
    send(page, "hello")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "wrong-token")
    page.press("#token-input", "Enter")
    expect(dialog).to_be_visible()
    expect(page.locator("#token-why")).to_contain_text("not accepted")
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    expect(dialog).to_be_hidden()
    expect(answers(page).locator(".content")).to_have_text("You said: hello")
    expect(page.locator(".message.error")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('chatbridge.token')") == TOKEN
    expect(page.locator("#model option", has_text="echo")).to_have_count(1)  # the list loads with it
    page.reload()
    send(page, "again")
    expect(answers(page).nth(1).locator(".content")).to_have_text("You said: again")
    expect(dialog).to_be_hidden()  # asked once, kept


def test_a_cancelled_token_prompt_leaves_an_error_with_retry(page, token_server, gemini):
    open_page(page, token_server)
    send(page, "hello")
    page.click("#token-cancel")
    error = page.locator(".message.error")
    expect(error.locator(".error-text")).to_contain_text("access token")
    error.locator(".retry").click()
    page.fill("#token-input", TOKEN)
    page.press("#token-input", "Enter")
    expect(answers(page).locator(".content")).to_have_text("You said: hello")
    expect(page.locator(".message.error")).to_have_count(0)


def test_reasoning_shows_in_a_collapsed_thinking_block(page, server, gemini):
    gemini.script = answering(gemini_stream(["The answer is 4."], thoughts=["Two plus two ", "makes four."]))
    open_page(page, server)
    send(page, "What is 2+2?")
    answer = answers(page)
    expect(answer.locator(".content")).to_have_text("The answer is 4.")
    thinking = answer.locator("details.thinking")
    expect(thinking.locator("summary")).to_have_text("Thinking")
    assert thinking.evaluate("e => e.open") is False
    expect(thinking.locator(".reasoning")).to_be_hidden()
    thinking.locator("summary").click()
    expect(thinking.locator(".reasoning")).to_have_text("Two plus two makes four.")
    assert [(c["role"], texts_of(c)) for c in generations(gemini)[0]["contents"]] == [("user", "What is 2+2?")]


@pytest.mark.parametrize("failure", [
    gemini_midstream_error(["Half an ans"]),
    gemini_error(400, "INVALID_ARGUMENT", "The fake refuses this request."),
], ids=["mid-stream", "before-the-stream"])
def test_an_error_shows_in_the_conversation_and_retry_works(page, server, gemini, failure):
    failing = {"now": True}
    gemini.script = answering(lambda recorded: failure if failing["now"] else None)
    open_page(page, server)
    send(page, "Try this")
    error = page.locator(".message.error")
    expect(error.locator(".error-text")).not_to_be_empty()
    expect(error.locator(".retry")).to_be_visible()
    failing["now"] = False
    error.locator(".retry").click()
    expect(answers(page)).to_have_count(1)
    expect(answers(page).locator(".content")).to_have_text("You said: Try this")
    expect(page.locator(".message.error")).to_have_count(0)
    page.reload()
    expect(answers(page).locator(".content")).to_have_text(["You said: Try this"])


def test_a_failed_turn_stays_visible_and_out_of_the_history(page, server, gemini):
    gemini.script = answering(lambda recorded: gemini_midstream_error(["Half"]) if len(generations(gemini)) == 1
                              else None)
    open_page(page, server)
    send(page, "This one fails")
    expect(page.locator(".message.error .retry")).to_be_visible()
    send(page, "This one works")
    expect(answers(page).nth(1).locator(".content")).to_have_text("You said: This one works")
    error = page.locator(".message.error")
    expect(error.locator(".content")).to_have_text("Half")  # what arrived before the error stays
    expect(error.locator(".retry")).to_be_hidden()  # only the last answer can be retried
    assert [texts_of(c) for c in generations(gemini)[-1]["contents"]] == ["This one works"]


def test_an_answer_cut_off_by_a_reload_can_be_retried(page, server, gemini):
    gemini.script = answering(Reply(chunks=gemini_sse(gemini_events(["Never fini"], finish=None)), hang=True))
    open_page(page, server)
    send(page, "Slow one")
    expect(answers(page).locator(".content")).to_have_text("Never fini")
    page.reload()
    expect(page.locator(".message.error .error-text")).to_contain_text("No answer arrived")
    gemini.script = None
    page.click(".message.error .retry")
    expect(answers(page).locator(".content")).to_have_text("You said: Slow one")


# ---------------------------------------------------------------- screenshots

OLDER_CHATS = [("Plan a three-day trip to Isfahan", 3), ("Summarize the attached PDF", 2),
               ("Regex for Iranian phone numbers", 1)]
ANSWER = [
    "برای خواندن خط به خط، فایل را با **`with open`** باز کنید و روی آن حلقه بزنید:\n\n",
    "```python\nwith open(\"notes.txt\", encoding=\"utf-8\") as f:\n    for line in f:\n",
    "        print(line.rstrip())\n```\n\n",
    "- فایل در پایان خودکار بسته می‌شود.\n- کل فایل یک‌جا در حافظه بارگذاری نمی‌شود.\n",
]


def seed_chats(page):
    """Older conversations for the sidebar."""
    chats = [{"id": f"old-{n}", "title": title, "updated": 1767225600000 - hours * 3600000,
              "messages": [{"id": f"m{n}", "role": "user", "content": title},
                           {"id": f"a{n}", "role": "assistant", "content": "Sure."}]}
             for n, (title, hours) in enumerate(OLDER_CHATS)]
    page.evaluate("chats => localStorage.setItem('chatbridge.chats', JSON.stringify(chats))", chats)


def test_screenshots(page, server, gemini, tmp_path):
    """Light and dark, desktop and phone, for the README (docs/screenshots, with SCREENSHOTS=1)."""
    directory, before = screenshot_dir(tmp_path), docs_screenshots()
    gemini.script = answering(gemini_stream(ANSWER, thoughts=["The user asks in Persian about Python files."]))
    open_page(page, server)
    seed_chats(page)
    page.reload()
    send(page, PERSIAN)
    expect(answers(page).locator("li")).to_have_count(2)
    page.locator("#message").blur()
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            path = directory / f"chat-{name}-{scheme}.png"
            page.screenshot(path=path, animations="disabled", caret="hide")
            assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size < SCREENSHOT_LIMIT
    assert json.loads(page.evaluate("localStorage.getItem('chatbridge.chats')"))[0]["title"].startswith("سلام")
    assert directory == SCREENSHOTS or docs_screenshots() == before, "only SCREENSHOTS=1 redraws the README's"
