"""harness/convert.py: LLMs-from-scratch GPTModel state dicts -> Hugging Face GPT-2 folders, checked against a
reference GPTModel written here from the book's description (ch04: GPTModel; ch06: the 2-class out_head and
classify_review), with tiny sizes and the tests' own tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from tiny import build_tokenizer

from harness.convert import convert, convert_cmd, read_state_dict
from harness.errors import UserError


# ---------------------------------------------------------------- the book's GPTModel (reference)

class MultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, num_heads, qkv_bias=False):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:n, :n], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).contiguous().view(b, n, self.d_out))


class LayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * x ** 3)))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), GELU(),
                                    nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["n_heads"],
                                      cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2 = LayerNorm(cfg["emb_dim"]), LayerNorm(cfg["emb_dim"])

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))


class GPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def classify_review(text, model, tokenizer, max_length, pad_token_id):
    """The book's ch06 classify_review, returning the logits instead of the label."""
    ids = tokenizer.encode(text, add_special_tokens=False)[:min(max_length, model.pos_emb.weight.shape[0])]
    ids += [pad_token_id] * (max_length - len(ids))
    with torch.no_grad():
        return model(torch.tensor(ids).unsqueeze(0))[:, -1, :][0]


# ---------------------------------------------------------------- fixtures

TEXTS = ["Free entry! Win a prize now, claim your reward at the link.", "Hi mum, see you at noon.",
         "The capital of France is Paris. " * 6]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok") / "tokenizer"
    build_tokenizer(chat=False).save_pretrained(d)
    return d


def book_model(vocab, qkv_bias=True, emb=32, heads=4, layers=2, context=64, seed=0, tied=False):
    torch.manual_seed(seed)
    model = GPTModel({"vocab_size": vocab, "emb_dim": emb, "context_length": context, "n_heads": heads,
                      "n_layers": layers, "qkv_bias": qkv_bias})
    with torch.no_grad():       # norms that are not the identity, so a swapped scale/shift would show
        for name, p in model.named_parameters():
            if name.endswith((".scale", ".shift")):
                p.normal_(1.0 if name.endswith(".scale") else 0.0, 0.3)
        if tied:
            model.out_head.weight = model.tok_emb.weight
    return model.eval()


def _ids(tok, text="Hello, how are you today? The capital of France is Paris."):
    return torch.tensor([tok.encode(text, add_special_tokens=False)])


# ---------------------------------------------------------------- exact against the reference

@pytest.mark.parametrize("qkv_bias,tied", [(True, False), (False, True)])
def test_converted_lm_logits_equal_the_books_model(tmp_path, tok_dir, qkv_bias, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ref = book_model(len(tok), qkv_bias=qkv_bias, tied=tied)
    torch.save(ref.state_dict(), tmp_path / "model.pth")
    out = convert(tmp_path / "model.pth", tmp_path / "hf", tokenizer=str(tok_dir), heads=4)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.config.n_head == 4 and hf.config.n_positions == 64
    assert hf.config.tie_word_embeddings == tied
    ids = _ids(tok)
    with torch.no_grad():
        assert (ref(ids) - hf(ids).logits).abs().max() < 1e-4
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ftbench_converted"]["qkv_bias"] == qkv_bias and cfg["ftbench_converted"]["file"] == "model.pth"


def test_converted_classifier_equals_the_books_classify_review(tmp_path, tok_dir):
    from harness.models import load_model
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ref = book_model(len(tok), seed=3)
    torch.manual_seed(4)
    ref.out_head = nn.Linear(32, 2)        # ch06: a new 2-class head, with a bias
    with torch.no_grad():
        ref.out_head.bias.copy_(torch.tensor([0.7, -0.4]))
    torch.save(ref.state_dict(), tmp_path / "review_classifier.pth")
    out = convert(tmp_path / "review_classifier.pth", tmp_path / "spam", tokenizer=str(tok_dir), heads=4,
                  max_length=24)
    cfg = json.loads((out / "config.json").read_text())["ftbench_classifier"]
    assert cfg["labels"] == ["ham", "spam"] and cfg["max_length"] == 24
    lm = load_model(str(out))
    assert lm.head_labels == ("ham", "spam") and lm.head_max_length == 24
    got = lm.head_logits(TEXTS)
    for text, row in zip(TEXTS, got):          # the last text is longer than 24 tokens: truncated, as the book
        expected = classify_review(text, ref, tok, 24, tok.eos_token_id)
        assert (row - expected).abs().max() < 1e-4
    probs = lm.head_probs(TEXTS[:1])[0]
    assert set(probs) == {"ham", "spam"} and probs["ham"] + probs["spam"] == pytest.approx(1.0)


def test_model_pth_anywhere_converts_once_into_the_cache(tmp_path, tok_dir, monkeypatch):
    from transformers import AutoTokenizer

    import harness.convert as conv
    from harness.models import load_model, resolve_base
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.save(book_model(len(tok), emb=768, heads=12, layers=1, context=16).state_dict(), tmp_path / "m.pth")
    monkeypatch.setattr(conv, "GPT2_TOKENIZER", str(tok_dir))
    monkeypatch.setattr(conv.converted_pth, "__defaults__", (str(tok_dir),))
    first = resolve_base(str(tmp_path / "m.pth"))
    assert first.source == "local" and "pth-m-" in first.location
    from harness.paths import sha256_file
    converted = json.loads((Path(first.location) / "config.json").read_text())["ftbench_converted"]
    assert converted["sha256"] == sha256_file(tmp_path / "m.pth")
    calls = []
    monkeypatch.setattr(conv, "convert", lambda *a, **k: calls.append(a))
    assert resolve_base(str(tmp_path / "m.pth")).location == first.location and calls == []
    lm = load_model(str(tmp_path / "m.pth"))
    assert lm.context_length == 16 and lm.spec.prompt_style == "alpaca"


# ---------------------------------------------------------------- bad input

def test_a_whole_pickled_model_is_refused_naming_state_dict(tmp_path, tok_dir):
    torch.save(book_model(50), tmp_path / "whole.pth")
    with pytest.raises(UserError, match=r"whole pickled model.*model\.state_dict\(\)"):
        convert(tmp_path / "whole.pth", tmp_path / "out", tokenizer=str(tok_dir))
    assert not (tmp_path / "out").exists()


def test_a_truncated_file_is_one_sentence(tmp_path, tok_dir):
    torch.save(book_model(50).state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=r"truncated") as e:
        convert(tmp_path / "cut.pth", tmp_path / "out", tokenizer=str(tok_dir))
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)


def test_another_architecture_is_refused(tmp_path, tok_dir, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).state_dict(), tmp_path / "hf.pth")
    with pytest.raises(UserError, match=r"not a state dict of the LLMs-from-scratch GPTModel.*transformer\."):
        convert(tmp_path / "hf.pth", tmp_path / "out", tokenizer=str(tok_dir))


def test_wrong_heads_are_refused_by_divisibility(tmp_path, tok_dir):
    from transformers import AutoTokenizer
    torch.save(book_model(len(AutoTokenizer.from_pretrained(tok_dir))).state_dict(), tmp_path / "m.pth")
    with pytest.raises(UserError, match=r"--heads 5 does not divide the embedding size 32"):
        convert(tmp_path / "m.pth", tmp_path / "out", tokenizer=str(tok_dir), heads=5)
    with pytest.raises(UserError, match=r"pass --heads N"):      # 32 is no GPT-2 size: no guess
        convert(tmp_path / "m.pth", tmp_path / "out", tokenizer=str(tok_dir))


def test_a_vocab_mismatch_names_both_sizes(tmp_path, tok_dir):
    from transformers import AutoTokenizer
    n = len(AutoTokenizer.from_pretrained(tok_dir))
    torch.save(book_model(n + 7).state_dict(), tmp_path / "m.pth")
    with pytest.raises(UserError, match=rf"{n + 7} tokens.*has {n}.*--tokenizer"):
        convert(tmp_path / "m.pth", tmp_path / "out", tokenizer=str(tok_dir), heads=4)


def test_the_gpt2_tokenizer_offline_is_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    torch.save(book_model(50257, emb=16, layers=1, context=8).state_dict(), tmp_path / "m.pth")
    with pytest.raises(UserError) as e:
        convert_cmd(str(tmp_path / "m.pth"), output=str(tmp_path / "out"), heads=4)
    msg = str(e.value)
    assert "openai-community/gpt2" in msg and "hf download" in msg and "--tokenizer" in msg
    assert msg.count(". ") == 0 and "\n" not in msg


def cli(argv: list[str]) -> int:
    """`python -m harness ...` in process, with the convert and sweep commands (until the table lists them)."""
    from harness.__main__ import COMMANDS
    from harness.cli import main
    table = {**COMMANDS, "convert": ("harness.convert:convert_cmd", "convert"),
             "sweep": ("harness.sweep:sweep_cmd", "sweep")}
    return main(table, argv)


def test_cli_converts_and_guesses_heads_for_a_gpt2_size(tmp_path, tok_dir, capsys):
    from transformers import AutoTokenizer
    n = len(AutoTokenizer.from_pretrained(tok_dir))
    torch.save(book_model(n, emb=768, heads=12, layers=1, context=16).state_dict(), tmp_path / "m.pth")
    assert cli(["convert", str(tmp_path / "m.pth"), "--output", str(tmp_path / "out"),
                "--tokenizer", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert "12 heads" in out and "guessed from the embedding size 768" in out
    assert cli(["convert", str(tmp_path / "m.pth"), "--output", str(tmp_path / "out"),
                "--tokenizer", str(tok_dir), "--heads", "7"]) == 2
    err = capsys.readouterr().err
    assert "--heads 7" in err and "Traceback" not in err


def test_the_books_checkpoint_dict_is_read(tmp_path):
    sd = book_model(50).state_dict()
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {}}, tmp_path / "model_and_optimizer.pth")
    assert set(read_state_dict(tmp_path / "model_and_optimizer.pth")) == set(sd)


# ---------------------------------------------------------------- course presets (README), with tiny models

def _classify_uses_own_head() -> bool:
    import inspect

    import harness.classify
    return "head_probs(texts" in inspect.getsource(harness.classify.classify)


@pytest.mark.skipif(not _classify_uses_own_head(), reason="needs classify() to use a converted model's own head "
                    "(requested from H4 in /work/team/requests/H4.md)")
def test_course_preset_ch06_classifier_prints_accuracy(tmp_path, tok_dir, capsys):
    """ch06: review_classifier.pth converted, then `classify --model DIR` on SMS rows with labels: the accuracy
    printed is the book's classify_review accuracy on the same rows."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ref = book_model(len(tok), seed=7)
    ref.out_head = nn.Linear(32, 2)
    torch.save(ref.state_dict(), tmp_path / "review_classifier.pth")
    assert cli(["convert", str(tmp_path / "review_classifier.pth"), "--output", str(tmp_path / "spam"),
                "--tokenizer", str(tok_dir), "--heads", "4", "--max-length", "20"]) == 0
    rows = [("Free entry! Win a prize now, claim your reward at the link.", "spam"),
            ("Hi mum, this is my new number.", "ham"), ("Your parcel is waiting, pay the fee.", "spam"),
            ("Are we still meeting for lunch tomorrow? See you at noon.", "ham")] * 2
    (tmp_path / "sms.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    capsys.readouterr()
    assert cli(["classify", "--model", str(tmp_path / "spam"), "--input", str(tmp_path / "sms.jsonl"),
                "--output", str(tmp_path / "out.csv"), "--task", "spam"]) == 0
    book = [("spam" if int(classify_review(t, ref, tok, 20, tok.eos_token_id).argmax()) == 1 else "ham") == y
            for t, y in rows]
    assert f"accuracy against the input's `label` column (kept as label_given): {sum(book) / len(rows):.3f}" \
        in capsys.readouterr().out


def book_format_input(entry):
    """ch07's format_input, as in the book."""
    instruction_text = (f"Below is an instruction that describes a task. "
                        f"Write a response that appropriately completes the request."
                        f"\n\n### Instruction:\n{entry['instruction']}")
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def test_course_preset_ch07_judge_sends_the_books_prompt(tmp_path, monkeypatch, capsys):
    """ch07: instruction-data-with-response.json (a JSON array with model_response) goes straight into
    `judge --responses`, each answer scored 0-100 with exactly the book's prompt."""
    from harness.testing.fake_ollama import FakeOllama
    entries = [{"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
                "output": "The car is as fast as lightning.", "model_response": "The car is as fast as a bullet."},
               {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "",
                "output": "Jane Austen.", "model_response": "The author is Jane Austen."}]
    path = tmp_path / "instruction-data-with-response.json"
    path.write_text(json.dumps(entries, indent=4))
    with FakeOllama(answers=["85", "92"]) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host)
        assert cli(["judge", "--responses", str(path), "--output", str(tmp_path / "scored.jsonl"),
                    "--judge-workers", "1"]) == 0
        sent = [b["messages"][-1]["content"] for b in fake.chat_bodies()]
    book = [(f"Given the input `{book_format_input(e)}` "
             f"and correct output `{e['output']}`, "
             f"score the model response `{e['model_response']}`"
             f" on a scale from 0 to 100, where 100 is the best score. "
             f"Respond with the integer number only.") for e in entries]
    assert sorted(sent) == sorted(book)
    assert "Average score: 88.50" in capsys.readouterr().out
