"""Shared fixtures: tiny models built from configs (no network), an isolated cache and adapters dir."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models gain nothing from threads; spare the other core
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny.build_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return tiny.build_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache, adapters and results folders; nothing touches ~/.cache or the repo."""
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FTBENCH_ADAPTERS", str(tmp_path / "adapters"))
    monkeypatch.setenv("FTBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: a server that is down."""
    return tiny.free_port()


@pytest.fixture(scope="module")
def embedded_llama(tmp_path_factory, request):
    """(engine, cache): one harness.llamacpp engine on the real embedded SmolLM2 GGUF for the test module, its
    adapters (the project's adapters/) exported into a module cache. Threads: the module's LLAMA_THREADS (1).
    Skipped where llama-cpp-python or the embedded GGUF is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip('llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install '
                    '"llama-cpp-python[server]"')
    from harness.llamacpp import load_engine
    from harness.models import embedded_gguf, resolve_base
    from harness.paths import PROJECT_ROOT
    if embedded_gguf(resolve_base("smollm2-135m-instruct")) is None:
        pytest.skip("the embedded GGUF is not installed")
    cache = tmp_path_factory.mktemp("llama-cache")
    saved = {k: os.environ.get(k) for k in ("FTBENCH_CACHE", "FTBENCH_ADAPTERS")}
    os.environ.update(FTBENCH_CACHE=str(cache), FTBENCH_ADAPTERS=str(PROJECT_ROOT / "adapters"))
    try:
        eng = load_engine("smollm2-135m-instruct", n_threads=getattr(request.module, "LLAMA_THREADS", 1), n_ctx=1024)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield eng, cache
    eng.close()
