"""The app in a real browser: Debian's headless Chromium driven by selenium (chromedriver at /usr/bin/chromedriver).

    python -m pytest tests/test_browser.py -q                     # build_demo() with a tiny model, in-process
    FTBENCH_APP_URL=http://127.0.0.1:7860/ python -m pytest tests/test_browser.py -q   # a running `python app.py`

The page loads, a chat message gets an answer, a spam message gets a label, and every tab is used once; a PNG
of each tab is saved to artifacts/screenshots/<tiny|app>-<tab>.png (and to $FTBENCH_SCREENSHOTS if set).
Chromium missing: `apt-get update && apt-get install -y chromium chromium-driver` (.ci/run does this).
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from tiny import build_adapter

from harness.paths import PROJECT_ROOT

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
EXTERNAL = os.environ.get("FTBENCH_APP_URL", "")
WAIT = 240 if EXTERNAL else 60          # the real model on a busy 2-core CPU is slow to write a poem

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get update && apt-get install -y chromium "
                "chromium-driver", allow_module_level=True)
selenium = pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IN_PROCESS: dict = {}        # the in-process app's AppState, to slow its model down for the Stop test


@pytest.fixture(scope="module")
def url(tiny_llama_dir, tmp_path_factory):
    if EXTERNAL:
        yield EXTERNAL
        return
    import app as app_module
    from harness.app.state import AppState
    folder = tmp_path_factory.mktemp("adapters")
    build_adapter(tiny_llama_dir, folder / "tiny-chat", kind="causal")
    build_adapter(tiny_llama_dir, folder / "tiny-spam", kind="seq_cls")
    results = tmp_path_factory.mktemp("results")
    (results / "leaderboard_spam.csv").write_text(        # made-up numbers: only the rendering is tested
        "task,eval_set,model,adapter,judge,n,accuracy,accuracy_ci_low,accuracy_ci_high,f1\n"
        "spam,sms_own,tiny-llama,,,44,0.55,0.40,0.70,0.50\n"
        "spam,sms_own,tiny-llama,tiny-spam,,44,0.80,0.68,0.91,0.79\n", encoding="utf-8")
    state = AppState(model=str(tiny_llama_dir), adapters_folder=folder, results_folder=results,
                     judge_host=f"127.0.0.1:{free_port()}")
    state.warmup()
    IN_PROCESS["state"] = state
    demo = app_module.build_demo(state)
    port = free_port()
    app_module.launch(demo, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def driver(url, tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,1300"):
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    d.set_page_load_timeout(60)
    d.get(url)
    yield d
    d.quit()


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


def wait(d, condition, timeout: float = WAIT):
    return WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda _: condition())


def open_tab(d, tab: str) -> None:
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, f"#tab-{tab}-button"), 60)   # the page may still render
    css(d, f"#tab-{tab}-button").click()
    wait(d, lambda: css(d, f"#tab-{tab}").is_displayed(), 10)


def type_into(d, selector: str, text: str) -> None:
    box = css(d, f"{selector} textarea")
    box.clear()
    box.send_keys(text)


def value(d, selector: str) -> str:
    return css(d, f"{selector} textarea").get_attribute("value") or ""


def toast(d) -> str:
    """The text of a Gradio error toast, if one is showing."""
    return " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']"))


def test_page_loads_with_the_model_picker_and_all_tabs(driver):
    wait(driver, lambda: "Model:" in css(driver, "#model-status").text, 60)
    tabs = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']")]
    assert tabs == ["Chat", "Spam", "Poem", "Compare", "Leaderboard"]
    assert "adapter" in css(driver, "#model-status").text
    assert "Traceback" not in driver.page_source


def open_accordion(d, tab: str, title: str) -> None:
    css_path = f"//*[@id='tab-{tab}']//button[contains(., '{title}')]"
    d.find_element(By.XPATH, css_path).click()


def test_a_chat_message_gets_an_answer(driver):
    open_tab(driver, "chat")
    open_accordion(driver, "chat", "Transparency")      # a closed accordion's contents are not rendered
    type_into(driver, "#chat-input", "Hello! What is the capital of France?")
    css(driver, "#chat-send").click()
    bot = "#chatbot [data-testid='bot']"
    wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, bot) and css(driver, bot).text.strip())
    wait(driver, lambda: '"finish_reason"' in css(driver, "#chat-stats").text
         and '"running"' not in css(driver, "#chat-stats").text)          # the reply is complete
    prompt = value(driver, "#chat-prompt")
    message = [{"role": "user", "content": "Hello! What is the capital of France?"}]
    if "state" in IN_PROCESS:          # exactly what the model was given
        assert prompt == IN_PROCESS["state"].lm.render_chat(message, None, 256)
    else:                              # SmolLM2's chat template, ending where the answer starts
        assert "<|im_start|>user\nHello! What is the capital of France?<|im_end|>" in prompt
        assert prompt.rstrip().endswith("<|im_start|>assistant")
    user = driver.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user']")
    assert user and "capital of France" in user[-1].text
    assert css(driver, bot).text.strip()
    screenshot(driver, "chat")


def test_stop_halts_a_long_answer(driver):
    handle = None
    if "state" in IN_PROCESS:                         # the tiny model is too fast to catch: 30 ms per step
        handle = IN_PROCESS["state"].lm.model.get_input_embeddings().register_forward_hook(
            lambda *_: time.sleep(0.03))
    try:
        open_tab(driver, "chat")
        if not driver.find_elements(By.ID, "chat-stats"):
            open_accordion(driver, "chat", "Transparency")
        css(driver, "#chat-clear").click()
        type_into(driver, "#chat-input", "Tell me a long story about the sea.")
        css(driver, "#chat-send").click()
        bot = "#chatbot [data-testid='bot']"
        wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, bot) and css(driver, bot).text.strip())
        css(driver, "#chat-stop").click()
        wait(driver, lambda: '"cancelled"' in css(driver, "#chat-stats").text, 5)
        shown = css(driver, bot).text
        time.sleep(1.5)
        assert css(driver, bot).text == shown, "the reply kept growing after Stop"
    finally:
        if handle is not None:
            handle.remove()


def test_a_spam_message_gets_a_label(driver):
    open_tab(driver, "spam")
    type_into(driver, "#spam-input", "URGENT! You won a 1000 GBP prize. Claim now at http://win-prize.top/claim")
    css(driver, "#spam-button").click()
    wait(driver, lambda: css(driver, "#spam-verdict").text.strip())
    verdict = css(driver, "#spam-verdict").text
    assert verdict.split()[0] in ("spam", "ham") and "threshold" in verdict
    label = css(driver, "#spam-label").text
    assert "spam" in label and "ham" in label and "%" in label        # both classes with probabilities
    screenshot(driver, "spam")


def test_the_poem_tab_writes_and_checks_the_form(driver):
    open_tab(driver, "poem")
    type_into(driver, "#poem-topic", "春夜")
    css(driver, "#poem-button").click()
    wait(driver, lambda: css(driver, "#poem-check").text.startswith(("Form check: OK", "Form check: not right")))
    # the form is kept while decoding by default, so even a random tiny model writes a 五言绝句
    assert css(driver, "#poem-check").text.startswith("Form check: OK") and "五言绝句" in css(driver, "#poem-check").text
    assert driver.find_element(By.CSS_SELECTOR, "#poem-enforce input").is_selected()
    assert value(driver, "#poem-output").strip()
    screenshot(driver, "poem")


def test_the_compare_tab_answers_or_says_what_is_missing(driver):
    open_tab(driver, "compare")
    type_into(driver, "#compare-input", "Name three colors.")
    button = css(driver, "#compare-button")
    if button.is_enabled():
        button.click()
        wait(driver, lambda: css(driver, "#compare-judge").text.strip())
        assert value(driver, "#compare-base").strip() or value(driver, "#compare-tuned").strip()
        assert "judge" in css(driver, "#compare-judge").text.lower()      # scores, or a notice why there are none
    else:                                        # no fine-tuned adapter for this base: the tab says so
        assert "finetune" in driver.find_element(By.ID, "tab-compare").text
    screenshot(driver, "compare")


def test_the_leaderboard_tab_shows_a_table_or_what_to_run(driver):
    open_tab(driver, "leaderboard")
    wait(driver, lambda: css(driver, "#leaderboard-notice").text.strip(), 30)
    notice = css(driver, "#leaderboard-notice").text
    if EXTERNAL and "python -m harness run" in notice:          # no results yet: the tab says what to run
        assert not driver.find_elements(By.CSS_SELECTOR, "#leaderboard-plot img")
    else:
        assert "rows of leaderboard_" in notice
        wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#leaderboard-plot img"), 30)
        table = css(driver, "#leaderboard-table").text      # the tiny app has a spam CSV; the real app all three
        assert "accuracy" in table if not EXTERNAL else any(c in table for c in ("accuracy", "rouge_l", "form_ok"))
    screenshot(driver, "leaderboard")
    assert "Traceback" not in driver.page_source
