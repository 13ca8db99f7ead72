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
