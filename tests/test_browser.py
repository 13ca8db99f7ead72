"""The app in a real browser: Debian's headless Chromium driven by selenium (chromedriver at /usr/bin/chromedriver).

    python -m pytest tests/test_browser.py -q                     # build_demo() with a tiny model, in-process
    FTBENCH_APP_URL=http://127.0.0.1:7860/ FTBENCH_SCREENSHOTS=docs/screenshots \\
        python -m pytest tests/test_browser.py -q -k "tab"         # a running `python app.py`: screenshots

Every tab is used once and a PNG of each is saved to artifacts/screenshots/<tiny|app>-<tab>.png (and to
$FTBENCH_SCREENSHOTS if set). The tests named after issue 14's defects each fail on the app before it:
typing during a stream, per-message labels, stopped replies, classify while Compare runs, waiting counts,
error states, leaderboard labels and error bars, long inputs, the poem tab, the batch CSV, phone width.
In-process tests slow the tiny model down with a forward hook (`slow`) so a stream can be caught mid-way.
Chromium missing: `apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does this).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from tiny import build_adapter, free_port

from harness.paths import PROJECT_ROOT

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
EXTERNAL = os.environ.get("FTBENCH_APP_URL", "")
WAIT = 240 if EXTERNAL else 60          # the real model on a busy 2-core CPU is slow to write a poem
in_process = pytest.mark.skipif(bool(EXTERNAL), reason="needs the in-process app (a slowed tiny model, made-up CSVs)")

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get update && apt-get install -y chromium "
                "chromium-driver", allow_module_level=True)
selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


IN_PROCESS: dict = {}        # the in-process app's AppState and folders


def made_up_poem_runs(results: Path) -> None:
    """Rows files and a leaderboard CSV for two poem runs (made-up text, not dataset rows): free vs form."""
    runs = results / "runs" / "poem"
    runs.mkdir(parents=True)
    for decoding, ok in (("", [1, 0, 0, 1]), ("form", [1, 1, 1, 1])):
        rows = [{"task": "poem", "eval_set": "poems_own", "item_id": f"p{i}", "model": "tiny-llama", "adapter": "",
                 "adapter_sha": "", "decoding": decoding, "judge": "", "judge_digest": "", "judge_prompt_version": "",
                 "prompt": f"made-up prompt {i}", "response": f"made-up poem {i} {decoding}", "form_ok": bool(o)}
                for i, o in enumerate(ok)]
        name = f"poems_own__tiny__base__nojudge{'__form' if decoding else ''}.jsonl"
        (runs / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (results / "leaderboard_poem.csv").write_text(
        "task,eval_set,model,adapter,adapter_sha,decoding,judge,judge_digest,judge_prompt_version,n,n_parsed,"
        "form_ok_rate,n_form\n"
        "poem,poems_own,tiny-llama,,,form,,,,4,4,1.0,4\n"
        "poem,poems_own,tiny-llama,,,,,,,4,4,0.5,4\n", encoding="utf-8")


class HungJudge:
    """A judge server that accepts connections, reads the request and never answers (a hung judge). It notes
    when each connection opened and when the client gave up on it (closed it): connections[i] = [opened, closed
    or None], so a test can tell whether something happened while the judge was still being waited for."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[list] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:          # closed
                return
            times = [time.monotonic(), None]
            self.connections.append(times)
            threading.Thread(target=self._hold, args=(conn, times), daemon=True).start()

    @staticmethod
    def _hold(conn, times):
        with conn:
            while True:
                try:
                    if not conn.recv(65536):
                        break
                except OSError:
                    break
        times[1] = time.monotonic()

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def url(tiny_llama_dir, tmp_path_factory):
    if EXTERNAL:
        yield EXTERNAL
        return
    import app as app_module
    from harness.app.state import AppState
    folder = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    poem = build_adapter(tiny_llama_dir, folder / "tiny-poem", kind="causal", seed=3, task="poem")
    with open(poem / "recipe.toml", "a", encoding="utf-8") as f:
        f.write('lang = "zh"\n')                       # a Chinese poem adapter, as the real one
    build_adapter(tiny_llama_dir, folder / "tiny-spam", kind="seq_cls")
    results = tmp_path_factory.mktemp("results")
    (results / "leaderboard_spam.csv").write_text(        # made-up numbers: only the rendering is tested
        "task,eval_set,model,adapter,judge,n,accuracy,accuracy_ci_low,accuracy_ci_high,f1,gen_tokens_per_s\n"
        "spam,sms_own,tiny-llama,,,44,0.55,0.40,0.70,0.50,0\n"
        "spam,sms_own,tiny-llama,tiny-spam,,44,0.80,0.68,0.91,0.79,0\n", encoding="utf-8")
    made_up_poem_runs(results)
    hung = HungJudge()
    from test_app_compare_any import fine_tune
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    fine_tune(tiny_llama_dir, checkpoints / "tiny-sft")              # a full fine-tune folder (issue 25 part 4)
    state = AppState(model=str(tiny_llama_dir), adapters_folder=folder, results_folder=results,
                     judge_host=hung.host, judge_timeout=3.0, store=str(tmp_path_factory.mktemp("store") / "s.sqlite"),
                     checkpoints=checkpoints)
    state.prepare()
    IN_PROCESS.update(state=state, adapters=folder, results=results, hung=hung)
    demo = app_module.build_demo(state)
    port = free_port()
    app_module.launch(demo, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    hung.close()
    IN_PROCESS.clear()


def make_driver(url, profile, width=1280, height=1300, phone=False):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    d.set_page_load_timeout(60)
    if phone:         # headless Chromium keeps windows >= 500 px wide: emulate the phone's viewport instead
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                  "deviceScaleFactor": 1, "mobile": True})
    d.get(url)
    return d


@pytest.fixture(scope="module")
def driver(url, tmp_path_factory):
    d = make_driver(url, tmp_path_factory.mktemp("chromium-profile"))
    yield d
    d.quit()


def settle(state, timeout: float = 30.0) -> None:
    """Wait until the in-process app is idle: no generation running, no request queued, no short work.
    A test whose page went away must leave nothing behind for the next one (the page's unload stops its work)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with state._lock:
            busy = {s: len(e) for s, e in state._running.items() if e}, dict(state._jobs)
        if not busy[0] and not busy[1] and not state.short_waiting:
            return
        time.sleep(0.1)
    raise AssertionError(f"the app is still busy {timeout:.0f} s after the test's page went away: running "
                         f"{busy[0]}, queued {list(busy[1].values())}, short work {state.short_waiting}")


@pytest.fixture(autouse=True)
def fresh_page(request):
    """Every browser test starts on a fresh page: a new session (an empty chat, the default pickers and tab) on
    an idle app. After an in-process test the page goes away and the app must settle (settle())."""
    if "driver" not in request.fixturenames:
        yield
        return
    d, url = request.getfixturevalue("driver"), request.getfixturevalue("url")
    if "state" in IN_PROCESS:
        settle(IN_PROCESS["state"])
    d.get(url)
    wait(d, lambda: "Model:" in text(d, "#model-status") and "⏳" not in text(d, "#model-status"))
    yield
    if "state" in IN_PROCESS:
        d.get("about:blank")          # the page goes away: its session's work is stopped and unqueued
        settle(IN_PROCESS["state"])


class Slowdown:
    """Every forward pass of the in-process model takes >= 40 ms while on, so a reply streams for seconds."""

    def __init__(self, state):
        self.state = state
        self.handle = state.lm.model.get_input_embeddings().register_forward_hook(lambda *_: time.sleep(0.04))

    def off(self) -> None:
        """Let the rest finish at full speed."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@pytest.fixture
def slow():
    s = Slowdown(IN_PROCESS["state"])
    yield s
    s.off()


def screenshot(d, tab: str) -> Path:
    """Save the page as <prefix>-<tab>.png under artifacts/screenshots/ (and $FTBENCH_SCREENSHOTS)."""
    name = f"{'app' if EXTERNAL else 'tiny'}-{tab}.png"
    out = PROJECT_ROOT / "artifacts" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(out / name))
    assert (out / name).stat().st_size > 10_000, "a real screenshot, not an empty page"
    extra = os.environ.get("FTBENCH_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / name, Path(extra) / name)
    return out / name


def css(d, selector: str):
    return d.find_element(By.CSS_SELECTOR, selector)


def csss(d, selector: str):
    return d.find_elements(By.CSS_SELECTOR, selector)


def wait(d, condition, timeout: float = WAIT):
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException

    def check(_):
        try:
            return condition()
        except StaleElementReferenceException:      # re-rendered while read: look again
            return False
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.1).until(check)
    except TimeoutException:      # say what the page showed instead
        shown = {sel: text(d, sel)[:300] for sel in ("#model-status", "#chat-notice", "#compare-status",
                                                       "#spam-verdict", "#poem-check", "#vote-message")}
        raise AssertionError(f"timed out after {timeout} s; the page shows {shown}; users {users(d)[-3:]}, "
                             f"answers {[b[-200:] for b in bots(d)[-3:]]}") from None


def open_tab(d, tab: str) -> None:
    """Show a tab (an inactive tab's contents are not on the page: open it before reading them)."""
    wait(d, lambda: csss(d, f"#tab-{tab}-button"), 60)   # the page may still render
    css(d, f"#tab-{tab}-button").click()
    wait(d, lambda: csss(d, f"#tab-{tab}") and css(d, f"#tab-{tab}").is_displayed(), 10)


def open_accordion(d, tab: str, title: str, inside: str) -> None:
    """Open an accordion (its contents are rendered only while it is open) unless it is open, until `inside`
    (a selector in it) is on the page. Clicking an open accordion would close it."""
    button = d.find_element(By.XPATH, f"//*[@id='tab-{tab}']//button[contains(@class, 'label-wrap')]"
                                      f"[contains(., '{title}')]")
    if "open" not in (button.get_attribute("class") or "").split():
        button.click()
    wait(d, lambda: csss(d, inside), 10)


def type_into(d, selector: str, text_: str) -> None:
    """Replace a textbox's text as a user would (select all, type), so the page's input events fire."""
    box = css(d, f"{selector} textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text_)


def paste_into(d, selector: str, text_: str) -> None:
    """Set a long text as a paste would (send_keys of 4,000+ characters is slow), firing the input event."""
    box = css(d, f"{selector} textarea")
    d.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', "
                     "{bubbles: true}));", box, text_)


def value(d, selector: str) -> str:
    found = csss(d, f"{selector} textarea")
    return (found[0].get_attribute("value") or "") if found else ""


def text(d, selector: str) -> str:
    found = csss(d, selector)
    return found[0].text if found else ""


def bots(d) -> list[str]:
    return [e.text for e in csss(d, "#chatbot [data-testid='bot']")]


def users(d) -> list[str]:
    return [e.text for e in csss(d, "#chatbot [data-testid='user']")]


def idle(d) -> None:
    """Wait until there is an answer and no answer is waiting or being written."""
    wait(d, lambda: bots(d) and not any(("▍" in b or "⏳" in b) for b in bots(d)))


def send(d, message: str, enter: bool = False, answered: bool = True) -> None:
    """Chat: type a message and send it (Send, or Enter in the box); wait until it shows in the conversation
    and, with `answered`, until every answer is written."""
    open_tab(d, "chat")
    shown = len(users(d))
    type_into(d, "#chat-input", message)
    if enter:
        css(d, "#chat-input textarea").send_keys(Keys.ENTER)
    else:
        css(d, "#chat-send").click()
    wait(d, lambda: len(users(d)) > shown and users(d)[-1].strip() == message.strip(), 10)
    if answered:
        idle(d)


def streaming(d) -> bool:
    """The last answer is being written (its text is streaming in)."""
    return bool(bots(d)) and "▍" in bots(d)[-1]


def compare(d, prompt: str, paste: bool = False, done: bool = True) -> None:
    """Compare: put a prompt in and press Compare; with `done`, wait until both sides are written."""
    open_tab(d, "compare")
    (paste_into if paste else type_into)(d, "#compare-input", prompt)
    before = compare_records()            # kept alive, so a new record is told apart from these by identity
    shown = text(d, "#compare-status")
    css(d, "#compare-button").click()
    if not done:
        return
    if "state" in IN_PROCESS:            # the page may still show the previous comparison's "done"
        wait(d, lambda: [r for r in compare_records() if all(r is not b for b in before)
                         and r["prompt"] == prompt.strip() and r["status"] in ("done", "stopped", "failed")])
    else:
        assert not shown.startswith("done"), "one comparison per page in the tab test: its status starts empty"
    wait(d, lambda: text(d, "#compare-status").startswith("done"))     # a blind one says how it was sampled


def compare_records() -> list[dict]:
    """The in-process app's comparison records, one per session that compared ([] for an external app)."""
    state = IN_PROCESS.get("state")
    if state is None:
        return []
    with state._lock:
        return [data["compare"] for data in state.sessions.values() if data.get("compare")]


def classify(d, message: str) -> str:
    """Spam: classify one message; returns the verdict once it is shown for this message."""
    open_tab(d, "spam")
    before = text(d, "#spam-verdict")
    type_into(d, "#spam-input", message)
    css(d, "#spam-button").click()
    wait(d, lambda: text(d, "#spam-verdict") != before and text(d, "#spam-verdict").strip())
    return text(d, "#spam-verdict")


def write_poem(d, topic: str, check: str = "Form check: ") -> str:
    """Poem: write one on a topic; returns the form check once it starts with `check` (the poem is done)."""
    open_tab(d, "poem")
    type_into(d, "#poem-topic", topic)
    before = text(d, "#poem-check")           # "Form check: —", or the previous poem's (each test differs)
    css(d, "#poem-button").click()
    wait(d, lambda: text(d, "#poem-check") != before and text(d, "#poem-check").startswith(check) and not any(
        w in text(d, "#poem-check") for w in ("writing", "waiting")))
    return text(d, "#poem-check")


def pick(d, selector: str, label: str) -> None:
    """Choose the option shown as `label` in a Gradio dropdown (options are [role=option] with aria-label)."""
    box = css(d, f"{selector} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(label)
    option = f"[role='option'][aria-label='{label}']"
    wait(d, lambda: csss(d, option), 10)
    css(d, option).click()
    wait(d, lambda: css(d, f"{selector} input").get_attribute("value") == label, 10)
    time.sleep(0.3)                   # the change event reaches the server


def cells(d, selector: str) -> list:
    """The shown cells of a Gradio dataframe (Gradio 6 draws them as div.body-cell; its <td>s only size it)."""
    return csss(d, f"{selector} .body-cell")


def votes_counted(d) -> int:
    import re
    found = re.search(r"Votes counted(?: \(every visitor\))?: (\d+)", text(d, "#votes-tally"))
    return int(found.group(1)) if found else -1



# ---------------------------------------------------------------- every tab once (with screenshots)

def test_page_loads_with_the_model_picker_and_all_tabs(driver):
    tabs = [b.text for b in csss(driver, "button[role='tab']")]
    assert tabs == ["Chat", "Spam", "Poem", "Compare", "Leaderboard"]
    assert "adapter" in css(driver, "#model-status").text
    assert "Traceback" not in driver.page_source


def test_chat_tab_answers_with_the_exact_prompt(driver):
    open_accordion(driver, "chat", "Transparency", "#chat-stats")
    send(driver, "Hello! What is the capital of France?")
    wait(driver, lambda: '"finish_reason"' in css(driver, "#chat-stats").text
         and '"running"' not in css(driver, "#chat-stats").text)          # the reply is complete
    prompt = value(driver, "#chat-prompt")
    message = [{"role": "user", "content": "Hello! What is the capital of France?"}]
    if "state" in IN_PROCESS:          # exactly what the model was given
        assert prompt == IN_PROCESS["state"].lm.render_chat(message, None, 256)
    else:                              # SmolLM2's chat template, ending where the answer starts
        assert "<|im_start|>user\nHello! What is the capital of France?<|im_end|>" in prompt
        assert prompt.rstrip().endswith("<|im_start|>assistant")
    assert "capital of France" in users(driver)[-1]
    assert bots(driver)[-1].strip()
    screenshot(driver, "chat")


def test_spam_tab_gives_a_label(driver):
    verdict = classify(driver, "URGENT! You won a 1000 GBP prize. Claim now at http://win-prize.top/claim")
    assert verdict.split()[0] in ("spam", "ham") and "threshold" in verdict
    label = css(driver, "#spam-label").text
    assert "spam" in label and "ham" in label and "%" in label        # both classes with probabilities
    screenshot(driver, "spam")


def test_poem_tab_writes_and_checks_the_form(driver):
    open_tab(driver, "poem")
    css(driver, "#poem-rhyme input").click()                   # the screenshot shows a rhyme-kept poem
    check = write_poem(driver, "春夜")
    # the form is kept while decoding by default, so even a random tiny model writes a 五言绝句
    assert check.startswith("Form check: OK") and "五言绝句" in check
    assert css(driver, "#poem-enforce input").is_selected()
    assert value(driver, "#poem-output").strip()
    wait(driver, lambda: "rhyme: OK (" in text(driver, "#poem-rules"), 10)
    screenshot(driver, "poem")


def test_compare_tab_answers_with_offline_figures(driver):
    open_tab(driver, "compare")
    if not css(driver, "#compare-button").is_enabled():    # no fine-tuned adapter for this base: the tab says so
        assert "finetune" in css(driver, "#tab-compare").text
        return
    compare(driver, "Name three colors.")
    assert value(driver, "#compare-left").strip() and value(driver, "#compare-right").strip()
    assert "words" in text(driver, "#compare-left-figures") and "characters" in text(driver, "#compare-right-figures")
    wait(driver, lambda: "judge" in text(driver, "#compare-judge").lower())   # scores, or a notice why there are none
    screenshot(driver, "compare")


def test_leaderboard_tab_shows_a_table_or_what_to_run(driver):
    open_tab(driver, "leaderboard")
    wait(driver, lambda: css(driver, "#leaderboard-notice").text.strip(), 30)
    notice = css(driver, "#leaderboard-notice").text
    if EXTERNAL and "python -m harness run" in notice:          # no results yet: the tab says what to run
        assert not csss(driver, "#leaderboard-plot img")
    else:
        assert "rows of leaderboard_" in notice
        wait(driver, lambda: csss(driver, "#leaderboard-plot img"), 30)
        table = css(driver, "#leaderboard-table").text
        assert "decoding" in table and any(c in table for c in ("accuracy", "rouge_l", "form_ok"))
    wait(driver, lambda: "Judges vs the votes" in text(driver, "#leaderboard-agreement"), 30)
    screenshot(driver, "leaderboard")
    assert "Traceback" not in driver.page_source


# ---------------------------------------------------------------- issue 14, defect by defect (in-process)

@in_process
def test_1_typing_is_kept_while_a_reply_streams_and_typed_ahead_messages_all_get_answers(driver, slow):
    send(driver, "Tell me a long story about the sea.", answered=False)
    wait(driver, lambda: streaming(driver), 20)
    box = css(driver, "#chat-input textarea")
    box.send_keys("a draft I am still typing")
    time.sleep(1.5)                                                         # many streamed updates later
    assert streaming(driver), "the reply must still be streaming while the draft is checked"
    assert value(driver, "#chat-input") == "a draft I am still typing"
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    for m in ("first typed ahead", "second typed ahead", "third typed ahead"):
        box.send_keys(m)
        box.send_keys(Keys.ENTER)
        time.sleep(0.3)
    wait(driver, lambda: len(users(driver)) == 4, 10)                        # every message shown at once
    assert [u.strip() for u in users(driver)[1:]] == ["first typed ahead", "second typed ahead", "third typed ahead"]
    assert any("waiting for" in b or "next in line" in b for b in bots(driver)), "queued answers say they wait"
    slow.off()
    idle(driver)
    assert len(bots(driver)) == 4 and all(b.rsplit("—", 1)[0].strip() for b in bots(driver)), \
        "every answer has text before its label"


@in_process
def test_2_the_users_message_shows_at_once_with_an_honest_queue_count(driver, slow):
    send(driver, "one", answered=False)
    t0 = time.perf_counter()
    send(driver, "two", answered=False)
    assert time.perf_counter() - t0 < 3, "the second message took more than 3 s to show"
    wait(driver, lambda: "waiting for 1 request ahead" in bots(driver)[-1], 5)   # "one" is being written
    assert streaming(driver) is False and "▍" in bots(driver)[0]
    slow.off()
    idle(driver)
    assert "waiting" not in bots(driver)[-1]


@in_process
def test_2_classify_runs_while_compare_writes(driver, slow):
    open_tab(driver, "compare")
    open_accordion(driver, "compare", "Sampling", "#compare-max-tokens")
    tokens = css(driver, "#compare-max-tokens input[type='number']")
    tokens.send_keys(Keys.CONTROL, "a")
    tokens.send_keys("440", Keys.TAB)                   # 440 slowed tokens (the tiny model's context is 512): ~18 s
    compare(driver, "Write a long essay about the history of the sea.", done=False)
    wait(driver, lambda: "writing" in text(driver, "#compare-status"), 20)
    t0 = time.perf_counter()
    verdict = classify(driver, "Free entry! Win a prize now")
    took = time.perf_counter() - t0
    assert "threshold" in verdict
    open_tab(driver, "compare")
    assert "writing" in text(driver, "#compare-status"), f"the spam check waited for Compare to end ({took:.1f} s)"
    assert took < 15, f"the spam check took {took:.1f} s while Compare wrote"
    css(driver, "#compare-stop").click()
    wait(driver, lambda: "stopped" in text(driver, "#compare-status"), 10)


@in_process
def test_2_a_hung_judge_never_holds_the_model_queue(driver):
    state, hung = IN_PROCESS["state"], IN_PROCESS["hung"]
    state.judge_timeout = 8.0                 # the judge is waited for 8 s (the fixture's 3 s is for the others)
    try:
        t0 = time.monotonic()
        compare(driver, "Name a colour.")
        mine = lambda: [c for c in hung.connections if c[0] > t0]  # noqa: E731 - not an earlier test's judge
        wait(driver, mine, 20)                                     # the judge is being asked, and never answers
        asked = mine()[0]
        send(driver, "Hi", answered=False)
        wait(driver, lambda: bots(driver) and "⏳" not in bots(driver)[-1], 10)     # the chat is answering
        answered = time.monotonic()
        assert asked[1] is None or asked[1] > answered, \
            f"chat answered {answered - asked[1]:.1f} s after the judge gave up: it waited behind the judge"
        idle(driver)
        open_tab(driver, "compare")
        wait(driver, lambda: "No judge scores" in text(driver, "#compare-judge"), 30)
        end = time.monotonic() + 10          # the server's thread notes the close a moment after the client's
        while asked[1] is None and time.monotonic() < end:
            time.sleep(0.05)
        assert asked[1] is not None, "the judge's request did not end with its timeout: its connection stayed open"
    finally:
        state.judge_timeout = 3.0


@in_process
def test_3_each_answer_is_labelled_when_written_and_a_stopped_one_is_marked(driver, slow):
    pick(driver, "#adapter-picker", "tiny-chat (chat)")
    send(driver, "Tell me a long story about the sea.", answered=False)
    wait(driver, lambda: streaming(driver), 20)
    pick(driver, "#adapter-picker", "none (base model)")       # switched in the middle of the answer
    css(driver, "#chat-stop").click()
    wait(driver, lambda: "stopped by you" in bots(driver)[-1], 10)
    first = bots(driver)[-1]
    assert "adapter tiny-chat" in first and ("sampling" in first or "greedy" in first)
    slow.off()
    send(driver, "Hi")
    assert "no adapter" in bots(driver)[-1] and "adapter tiny-chat" in bots(driver)[0]
    assert "stopped by you" not in bots(driver)[-1]


@in_process
def test_3_regenerate_undo_edit_and_export(driver):
    import requests
    send(driver, "Hello there")
    assert "no adapter" in bots(driver)[-1]
    pick(driver, "#adapter-picker", "tiny-chat (chat)")
    css(driver, "#chat-regenerate").click()                     # written again, with the settings chosen now
    wait(driver, lambda: len(bots(driver)) == 1 and "adapter tiny-chat" in bots(driver)[-1]
         and not any(m in bots(driver)[-1] for m in ("▍", "⏳")))
    pick(driver, "#adapter-picker", "none (base model)")
    css(driver, "#chat-edit").click()
    wait(driver, lambda: value(driver, "#chat-input") == "Hello there" and not users(driver), 10)
    box = css(driver, "#chat-input textarea")
    box.send_keys(" again")
    box.send_keys(Keys.ENTER)
    wait(driver, lambda: users(driver) and users(driver)[-1].strip() == "Hello there again", 10)
    idle(driver)
    css(driver, "#chat-export-json").click()
    wait(driver, lambda: csss(driver, "#chat-export-file a")
         and css(driver, "#chat-export-file a").get_attribute("href").endswith(".json"), 10)
    exported = requests.get(css(driver, "#chat-export-file a").get_attribute("href"), timeout=10).json()
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    answer = exported["messages"][1]
    assert answer["adapter"] == "" and answer["decoding"].startswith(("greedy", "sampling")) and "sampling" in answer
    css(driver, "#chat-export-md").click()
    wait(driver, lambda: csss(driver, "#chat-export-file a")
         and css(driver, "#chat-export-file a").get_attribute("href").endswith(".md"), 10)
    md = requests.get(css(driver, "#chat-export-file a").get_attribute("href"), timeout=10).text
    assert "**You:**" in md and "Hello there again" in md and "no adapter" in md
    css(driver, "#chat-undo").click()
    wait(driver, lambda: not users(driver), 10)


@in_process
def test_4_compare_streams_both_sides_stops_and_offers_examples(driver, slow):
    open_tab(driver, "compare")
    assert "Examples (chat" in css(driver, "#tab-compare").text and "Examples (poem" in css(driver, "#tab-compare").text
    compare(driver, "Write a long essay about the sea.", done=False)
    wait(driver, lambda: "writing" in text(driver, "#compare-status") and value(driver, "#compare-left")
         and value(driver, "#compare-right"), 20)                # both sides at once, not one after the other
    css(driver, "#compare-stop").click()
    wait(driver, lambda: "stopped" in text(driver, "#compare-status"), 10)
    shown = value(driver, "#compare-left")
    time.sleep(1)
    assert value(driver, "#compare-left") == shown, "the model went on writing after Stop"


@in_process
def test_4_an_eval_set_example_gets_rouge_l_and_a_poem_adapter_keeps_the_form(driver):
    from harness.app.compare import eval_items
    items = eval_items()
    chat_prompt = next(p for p, it in items.items() if it["task"] == "chat" and it["reference"])
    compare(driver, chat_prompt, paste=True)
    assert "ROUGE-L" in text(driver, "#compare-left-figures") and "ROUGE-L" in text(driver, "#compare-right-figures")
    assert not css(driver, "#compare-form").is_displayed() if csss(driver, "#compare-form") else True
    pick(driver, "#compare-adapter", "tiny-poem")
    wait(driver, lambda: csss(driver, "#compare-form") and css(driver, "#compare-form").is_displayed(), 10)
    compare(driver, "写一首五言绝句，题目：春夜")
    wait(driver, lambda: "Form check" in text(driver, "#compare-left-figures"))
    assert "Form check: OK" in text(driver, "#compare-left-figures")
    assert "Form check: OK" in text(driver, "#compare-right-figures")


@in_process
def test_4_blind_votes_hide_the_names_are_counted_and_can_be_undone(driver, monkeypatch):
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(IN_PROCESS["adapters"]))   # the votes check the adapter exists
    open_tab(driver, "compare")
    pick(driver, "#compare-adapter", "tiny-chat")
    css(driver, "#compare-blind input").click()
    assert css(driver, "#compare-blind input").is_selected()
    counted = votes_counted(driver)
    assert counted >= 0, text(driver, "#votes-tally")
    compare(driver, "Name a fruit.")
    heads = text(driver, "#compare-left-head") + text(driver, "#compare-right-head")
    assert heads.count("hidden until you vote") == 2 and "tiny-chat" not in heads and "Base" not in heads
    css(driver, "#vote-left").click()
    wait(driver, lambda: "Vote stored" in text(driver, "#vote-message"), 10)
    assert "counted" in text(driver, "#vote-message")
    heads = text(driver, "#compare-left-head") + text(driver, "#compare-right-head")
    assert "Fine-tuned: tiny-chat" in heads and "Base:" in heads, "the names are revealed after the vote"
    wait(driver, lambda: votes_counted(driver) == counted + 1, 10)
    css(driver, "#vote-tie").click()                                 # one vote per comparison
    wait(driver, lambda: "already voted" in text(driver, "#vote-message"), 10)
    assert votes_counted(driver) == counted + 1
    compare(driver, "Name a vegetable.")
    css(driver, "#vote-tie").click()
    wait(driver, lambda: votes_counted(driver) == counted + 2 and "tie 1" in text(driver, "#votes-tally"), 10)
    open_accordion(driver, "compare", "Your votes", "#votes-table")
    wait(driver, lambda: [c for c in cells(driver, "#votes-table") if c.text.strip() == "tie"], 10)
    [c for c in cells(driver, "#votes-table") if c.text.strip() == "tie"][0].click()     # the newest vote's row
    wait(driver, lambda: len(value(driver, "#vote-undo-id")) == 16, 10)
    css(driver, "#vote-undo").click()
    wait(driver, lambda: votes_counted(driver) == counted + 1 and "1 undone" in text(driver, "#votes-tally"), 10)
    assert "tie 0" in text(driver, "#votes-tally") and "undone" in text(driver, "#vote-message")
    css(driver, "#compare-blind input").click()                      # not blind: a vote is refused
    compare(driver, "Name a tree.")
    css(driver, "#vote-left").click()
    wait(driver, lambda: "names were hidden" in text(driver, "#vote-message"), 10)
    assert votes_counted(driver) == counted + 1


@in_process
def test_25_a_full_fine_tune_folder_against_its_base_blind_and_voted(driver, monkeypatch):
    """Issue 25 part 4: a visitor adds a full fine-tune folder from the checkpoints folder (a name escaping it is
    refused without echoing it), compares it blind against the base (two models, the memory shown) and votes;
    the vote names both checkpoints."""
    from harness import votes
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(IN_PROCESS["adapters"]))
    state = IN_PROCESS["state"]
    open_tab(driver, "compare")
    open_accordion(driver, "compare", "Add a checkpoint", "#compare-add-name")
    type_into(driver, "#compare-add-name", "../escaped-folder")
    css(driver, "#compare-add-button").click()
    wait(driver, lambda: "not inside the app's checkpoints folder" in text(driver, "#compare-notice"), 10)
    assert "escaped-folder" not in text(driver, "#compare-notice")
    type_into(driver, "#compare-add-name", "tiny-sft")
    css(driver, "#compare-add-button").click()
    wait(driver, lambda: css(driver, "#compare-adapter input").get_attribute("value") == "tiny-sft (checkpoints folder)",
         10)
    assert "base in use" in css(driver, "#compare-a input").get_attribute("value")
    css(driver, "#compare-blind input").click()
    compare(driver, "Name a color.")
    assert "MiB resident (RSS)" in text(driver, "#compare-status"), "two models loaded: the memory is shown"
    assert value(driver, "#compare-left").strip() and value(driver, "#compare-right").strip()
    heads = text(driver, "#compare-left-head") + text(driver, "#compare-right-head")
    assert heads.count("hidden until you vote") == 2 and "tiny-sft" not in heads
    css(driver, "#vote-right").click()
    wait(driver, lambda: "Vote stored" in text(driver, "#vote-message"), 10)
    assert "counted" in text(driver, "#vote-message")
    heads = text(driver, "#compare-left-head") + text(driver, "#compare-right-head")
    assert "B: tiny-sft" in heads and "A: tiny-llama" in heads, "the names are revealed after the vote"
    row = votes.list_votes(state.store, limit=1)[0]
    assert row["model_a"].endswith("tiny-sft") and row["model_b"] == state.base_name and row["status"] == "counted"
    rec = [r for r in compare_records() if r["prompt"] == "Name a color."][-1]
    assert row["winner"] == ("a" if rec["base_left"] else "b"), "right was pressed: the side shown on the right won"
    css(driver, "#compare-blind input").click()


@in_process
def test_13_the_leaderboard_shows_judges_against_your_votes(driver, monkeypatch):
    """Issue 13 part 3 in the app: the leaderboard tab's judge-vs-human section (harness.agreement) shows each
    judge that shares voted pairs with the humans, with its agreement, as the report does."""
    from harness.agreement import agreement_summary
    from harness.io import text_sha
    from harness.store import Store
    from harness.votes import cast_vote
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(IN_PROCESS["adapters"]))
    state = IN_PROCESS["state"]
    pairs = []
    for i in range(24):            # made-up answers: 24 voted pairs; the made-up judge sides with 20 of them
        a, b = f"answer a{i} " + "long " * (i % 3), f"answer b{i}"
        human = "left" if i % 2 else "right"                 # A is shown on the left
        judge_a_wins = (human == "left") if i < 20 else (human != "left")
        cast_vote(state.store, session="made-up", prompt=f"made-up prompt {i}", response_left=a, response_right=b, side_a="left",
                  model_a="", adapter_a="", model_b="", adapter_b="", seed_a=0, seed_b=0, choice=human,
                  task="chat", item_id=f"m{i}")
        pairs.append((f"m{i}", a, b, judge_a_wins))
    with Store(state.store) as st:
        st.put("judgments", [{"key": f"made-up-{item}-{side}", "judge": "made-up-judge", "prompt_version": "v1",
                              "item": {"id": item, "response": resp}, "score": score, "parsed": True}
                             for item, a, b, a_wins in pairs
                             for side, resp, score in (("a", a, 80 if a_wins else 20), ("b", b, 20 if a_wins else 80))])
    expected = next(r for r in agreement_summary(state.store) if r["judge"].startswith("made-up-judge"))
    assert expected["n"] == 24 and round(expected["agree"], 3) == round(20 / 24, 3)
    open_tab(driver, "leaderboard")
    wait(driver, lambda: "Judges vs the votes" in text(driver, "#leaderboard-agreement"), 30)
    d = driver
    d.find_element(By.XPATH, "//*[@id='tab-leaderboard']//button[contains(., 'Reload CSVs')]").click()
    wait(d, lambda: "made-up-judge (pointwise v1) agrees with your 24 votes 83% of the time" in
         text(d, "#leaderboard-agreement"), 20)
    assert expected["sentence"].split(":")[0] in text(d, "#leaderboard-agreement")
    assert text_sha(pairs[0][1])         # the pairs are keyed by the answers' hashes, as the votes are


@in_process
def test_10_the_first_start_serves_the_page_at_once_and_says_the_model_is_being_prepared(url, tiny_llama_dir,
                                                                                         tmp_path_factory):
    import threading as threads

    import app as app_module
    from harness.app.state import AppState
    state = AppState(model=str(tiny_llama_dir), adapters_folder=IN_PROCESS["adapters"],
                     results_folder=IN_PROCESS["results"], store=str(tmp_path_factory.mktemp("store2") / "s.sqlite"))
    release, real_get = threads.Event(), state.get_model

    def slow_get_model():                   # the one-time conversion, held until the test lets it finish
        release.wait(60)
        return real_get()
    state.get_model = slow_get_model
    state.begin_prepare()                   # as main() does before the page is built
    loader = threads.Thread(target=state.prepare, daemon=True)
    t0 = time.perf_counter()
    demo = app_module.build_demo(state)
    port = free_port()
    app_module.launch(demo, port=port, block=False, quiet=True)
    loader.start()
    d = make_driver(f"http://127.0.0.1:{port}/", tmp_path_factory.mktemp("first-start-profile"))
    try:
        wait(d, lambda: "loading the model" in css(d, "#model-status").text, 20)
        assert time.perf_counter() - t0 < 20, "the page is up within 20 s while the model is still preparing"
        assert "⏳" in css(d, "#model-status").text and state.phase == "preparing"
        send(d, "Hi", answered=False)
        wait(d, lambda: bots(d) and "model is ready" in bots(d)[-1], 10)   # shown at once, waiting
        release.set()
        wait(d, lambda: "⏳" not in css(d, "#model-status").text, 30)
        idle(d)
        assert "no adapter" in bots(d)[-1]
    finally:
        release.set()
        d.quit()
        demo.close()


@in_process
def test_5_errors_never_hide_the_conversation_and_the_base_picker_shows_the_base_in_use(driver):
    send(driver, "Hello")
    type_into(driver, "#chat-input", "")
    css(driver, "#chat-send").click()                           # an empty Send
    wait(driver, lambda: "empty" in text(driver, "#chat-notice"), 10)
    time.sleep(1)                                               # the notice stays (no later update erases it)
    assert "empty" in text(driver, "#chat-notice")
    assert css(driver, "#chatbot").is_displayed() and len(bots(driver)) == 1
    assert not csss(driver, "#chatbot .error"), "an error badge over the conversation"
    base = css(driver, "#base-picker input").get_attribute("value")
    box = css(driver, "#base-picker input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("no-such-base", Keys.ENTER)
    css(driver, "#load-base").click()
    wait(driver, lambda: "unknown base" in text(driver, "#base-notice"), 20)
    assert css(driver, "#base-picker input").get_attribute("value") == base
    assert not csss(driver, "#base-picker .error")


@in_process
def test_6_the_leaderboard_labels_decoding_draws_intervals_and_opens_items_and_diffs(driver):
    open_tab(driver, "leaderboard")
    wait(driver, lambda: css(driver, "#leaderboard-notice").text.strip(), 30)
    pick(driver, "#leaderboard-task", "poem")
    wait(driver, lambda: "leaderboard_poem.csv" in text(driver, "#leaderboard-notice"), 20)
    table = text(driver, "#leaderboard-table")
    assert "decoding" in table and "form-constrained" in table and "free" in table
    caption = text(driver, "#leaderboard-caption")
    assert "form_ok_rate" in caption and "Wilson 95% interval" in caption and "eval set · decoding" in caption
    cell = [c for c in cells(driver, "#leaderboard-table") if c.text.strip() == "poems_own"][0]
    cell.click()
    wait(driver, lambda: "items from its rows file" in text(driver, "#leaderboard-items-note"), 20)
    assert "made-up poem" in text(driver, "#leaderboard-items")
    open_accordion(driver, "leaderboard", "Diff two runs", "#diff-button")
    css(driver, "#diff-button").click()
    wait(driver, lambda: "items in common" in text(driver, "#diff-note"), 20)
    assert "2 differ" in text(driver, "#diff-note") and "made-up poem" in text(driver, "#diff-table")
    pick(driver, "#leaderboard-task", "spam")
    wait(driver, lambda: "95% bootstrap CI" in text(driver, "#leaderboard-caption"), 20)
    assert "gen_tokens_per_s" not in text(driver, "#leaderboard-table"), "an all-zero column is hidden"


@in_process
def test_7_a_long_paste_is_refused_with_how_much_is_too_many_and_kept_in_full(driver):
    long = "word " * 900                                        # 4,500 characters
    paste_into(driver, "#chat-input", long)
    css(driver, "#chat-send").click()
    wait(driver, lambda: "too long" in text(driver, "#chat-notice"), 10)
    assert "4,499 characters" in text(driver, "#chat-notice") and "499 too many" in text(driver, "#chat-notice")
    assert len(value(driver, "#chat-input")) == len(long), "the browser cut the paste"
    assert not users(driver)
    open_tab(driver, "spam")
    paste_into(driver, "#spam-input", long)
    css(driver, "#spam-button").click()
    wait(driver, lambda: "too long" in text(driver, "#spam-verdict"), 10)
    assert len(value(driver, "#spam-input")) == len(long)


@in_process
def test_8_the_poem_tab_form_box_wording_budget_and_language_warning(driver):
    open_tab(driver, "poem")
    open_accordion(driver, "poem", "Sampling", "#poem-max-tokens")
    tokens = css(driver, "#poem-max-tokens input[type='number']")
    tokens.send_keys(Keys.CONTROL, "a")
    tokens.send_keys("16", Keys.TAB)                            # far too few for a 五言绝句 by hand
    check = write_poem(driver, "春夜")
    assert check.startswith("Form check: OK") and "4 lines × 5 characters, as a 五言绝句 needs" in check
    driver.find_element(By.XPATH, "//*[@id='poem-lang']//label[contains(., 'English')]").click()
    wait(driver, lambda: not csss(driver, "#poem-enforce") or not css(driver, "#poem-enforce").is_displayed(), 10)
    pick(driver, "#adapter-picker", "tiny-poem (poem)")
    wait(driver, lambda: "trained on Chinese poems" in text(driver, "#poem-warning"), 10)
    pick(driver, "#poem-form", "free verse")
    check = write_poem(driver, "the sea", check="Form check: OK. Free verse")
    assert "as expected" not in check
    assert value(driver, "#poem-output").strip() and not value(driver, "#poem-output").endswith("\ufffd")


def test_16_the_rhyme_box_keeps_a_rhyme_group_and_the_rule_check_says_so(driver):
    """Issue 16 part 4: Rhyme (平水韵) / Tone (平仄) boxes for a Chinese 近体 form under the form constraint; the
    rule checks (rhyme, tone, repeated rhyme character, unknown characters) beside the form check; an unknown
    rhyme group is one sentence in the notice and hides nothing."""
    open_tab(driver, "poem")
    assert css(driver, "#poem-rhyme").is_displayed() and css(driver, "#poem-tone").is_displayed()
    box = css(driver, "#poem-rhyme input")
    if not box.is_selected():
        box.click()
    check = write_poem(driver, "春夜")
    assert check.startswith("Form check: OK")
    wait(driver, lambda: "Rule check" in text(driver, "#poem-rules"), 10)
    rules = text(driver, "#poem-rules")
    assert "decoded keeping rhyme." in rules and "rhyme: OK (" in rules, rules
    assert "repeated rhyme character:" in rules and "characters not in the rhyme table:" in rules and "tone: " in rules
    poem = value(driver, "#poem-output")
    group = css(driver, "#poem-rhyme-group input")              # a one-line box: an <input>
    group.send_keys(Keys.CONTROL, "a")
    group.send_keys("qqq")
    css(driver, "#poem-button").click()
    wait(driver, lambda: "no rhyme group 'qqq'" in text(driver, "#poem-notice"), 20)
    assert value(driver, "#poem-output") == poem and "rhyme: OK (" in text(driver, "#poem-rules"), "nothing hidden"
    driver.find_element(By.XPATH, "//*[@id='poem-lang']//label[contains(., 'English')]").click()
    wait(driver, lambda: not csss(driver, "#poem-rhyme") or not css(driver, "#poem-rhyme").is_displayed(), 10)


@in_process
def test_9_the_batch_csv_keeps_the_users_columns_with_the_clis_names(driver, tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("id,text,note\n17,Win a prize now,a\n18,See you at noon,b\n", encoding="utf-8")
    open_tab(driver, "spam")
    open_accordion(driver, "spam", "Classify a file", "#spam-file input[type='file']")
    css(driver, "#spam-file input[type='file']").send_keys(str(f))
    wait(driver, lambda: "mine" in text(driver, "#spam-file") and ".csv" in text(driver, "#spam-file"), 10)  # uploaded
    css(driver, "#spam-file-button").click()
    wait(driver, lambda: "2 messages" in text(driver, "#spam-file-summary"), 30)
    head = text(driver, "#spam-preview")
    for col in ("id", "text", "note", "label", "p_ham", "p_spam"):
        assert col in head
    assert "17" in head and "18" in head


@in_process
def test_12_a_phone_width_page_has_a_small_header_and_every_tab(url, tmp_path_factory):
    d = make_driver(url, tmp_path_factory.mktemp("phone-profile"), width=390, height=844, phone=True)
    try:
        wait(d, lambda: "Model:" in css(d, "#model-status").text, 60)
        assert d.execute_script("return window.innerWidth") == 390
        tabs = [b for b in csss(d, "button[role='tab']") if b.is_displayed()]
        assert [b.text for b in tabs] == ["Chat", "Spam", "Poem", "Compare", "Leaderboard"]
        header = css(d, "#model-status").location["y"] + css(d, "#model-status").size["height"]
        assert header < 360, f"the header takes {header} px of 844"
        tabs[-1].click()
        wait(d, lambda: css(d, "#tab-leaderboard").is_displayed(), 10)
        wide = d.execute_script("return document.documentElement.scrollWidth")
        assert wide <= 390, f"the page scrolls sideways ({wide} px wide on a 390 px screen)"
    finally:
        d.quit()


def test_9_at_390_px_pickers_poem_rules_and_the_plot_fit_and_the_page_opens_at_the_header(url, tmp_path_factory):
    """Issue 23 item 9: at 390 px the model names in the pickers are not cut, the poem's Rhyme/Tone row and the
    page never scroll sideways, the leaderboard plot is drawn at a readable scale, and the page opens at its
    header (no autofocus scrolling past it). Screenshots of every tab at 390 px (<prefix>-phone-<tab>.png)."""
    d = make_driver(url, tmp_path_factory.mktemp("phone-profile-9"), width=390, height=844, phone=True)
    try:
        wait(d, lambda: "Model:" in css(d, "#model-status").text and "⏳" not in css(d, "#model-status").text, 120)
        time.sleep(1.0)
        assert d.execute_script("return window.scrollY") == 0, "the page opens at its header"
        for picker, name in (("#base-picker input", "smollm2-135m-instruct"),      # the real names' labels
                             ("#adapter-picker input", "smollm2-135m-alpaca (chat)")):
            cut = d.execute_script("const e = document.querySelector(arguments[0]); e.value = arguments[1];"
                                   "return [e.scrollWidth, e.clientWidth, e.value];", picker, name)
            assert cut[0] <= cut[1] + 1, f"{picker} shows {cut[2]!r} cut ({cut[0]} px in {cut[1]} px)"
        screenshot(d, "phone-chat")
        tabs = {b.text: b for b in csss(d, "button[role='tab']") if b.is_displayed()}
        tabs["Poem"].click()
        wait(d, lambda: css(d, "#poem-rhyme").is_displayed(), 10)
        row = d.execute_script("const e = document.querySelector('#poem-rules-row');"
                               "return [e.scrollWidth, e.clientWidth];")
        assert row[0] <= row[1] + 1, f"the Rhyme/Tone row scrolls sideways ({row[0]} px in {row[1]} px)"
        wide = d.execute_script("return document.documentElement.scrollWidth")
        assert wide <= 390, f"the page scrolls sideways ({wide} px wide)"
        screenshot(d, "phone-poem")
        for tab in ("Spam", "Compare"):
            tabs[tab].click()
            time.sleep(1.0)
            screenshot(d, f"phone-{tab.lower()}")
        tabs["Leaderboard"].click()
        wait(d, lambda: csss(d, "#leaderboard-plot img"), 30)
        img = css(d, "#leaderboard-plot img")
        shown, natural = d.execute_script("return [arguments[0].clientWidth, arguments[0].naturalWidth]", img)
        assert shown <= 390 and shown / natural >= 0.6, f"the plot is drawn at {shown}/{natural} of its size"
        d.execute_script("arguments[0].scrollIntoView()", img)
        screenshot(d, "phone-leaderboard")
    finally:
        d.quit()
