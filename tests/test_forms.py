"""Form-constrained decoding: every generated classical poem has the form asked for, on any tokenizer."""
from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.forms import CHARSET_FILE, VocabTables, charset, token_bytes
from harness.generation import GenerationConfig, StreamStats, generate_batch, stream
from harness.metrics import FIXED_FORMS, form_check, is_cjk
from harness.models import load_model

TOPICS = ["春夜", "明月", "黄河入海流", "思故乡"]


def _brute(b: bytes) -> tuple[int, int] | None:
    """(complete ideographs, bytes still missing) if b is a run of allowed ideographs, else None."""
    n, i = 0, 0
    while i < len(b):
        seq = b[i:i + 3]
        if seq[0] & 0xF0 != 0xE0:
            return None
        if len(seq) < 3:
            return n, 3 - len(seq)
        try:
            ch = seq.decode()
        except UnicodeDecodeError:
            return None
        if not charset()[1][ord(ch)]:
            return None
        n, i = n + 1, i + 3
    return n, 0


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_tables_agree_with_a_plain_utf8_decoder(which, request):
    lm = load_model(str(request.getfixturevalue(which)))
    tables = VocabTables(lm.tokenizer)
    valid, done, need, cp, first = tables.table(0, 0)
    tb = token_bytes(lm.tokenizer)
    assert sum(1 for b in tb if b and len(b) >= 2) > 20
    n_valid = 0
    for i, b in enumerate(tb):
        want = _brute(b) if b else None
        if want is None:
            assert not valid[i], (i, b)
            continue
        if want[1] == 0:     # complete characters: always allowed
            assert valid[i] and done[i] == want[0] and need[i] == 0, (i, b)
            assert first[i] == ord(b[:3].decode())
            n_valid += 1
    assert n_valid >= 2, "the tiny vocabulary has merged CJK tokens"
    # a partial character continues only with continuation bytes
    lead = next(i for i, b in enumerate(tb) if b and len(b) == 1 and b[0] == 0xE6)   # first byte of 春, 明 ...
    after = tables.table(int(need[lead]), int(cp[lead]))[0]
    assert after.any()
    assert all(tb[i][0] & 0xC0 == 0x80 for i in after.nonzero()[0])


@pytest.mark.parametrize("form", list(FIXED_FORMS))
@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_every_constrained_poem_has_the_form(form, which, request):
    lm = load_model(str(request.getfixturevalue(which)))
    prompts = [lm.render_instruction(f"写一首{form}，题目：{t}") for t in TOPICS]
    free = generate_batch(lm, prompts, GenerationConfig(max_new_tokens=200, batch_size=4))
    assert not all(form_check(g.text, form)["ok"] for g in free), "a random tiny model cannot write the form unaided"
    for cfg in (GenerationConfig(max_new_tokens=200, batch_size=4, form=form),
                GenerationConfig(max_new_tokens=200, batch_size=3, form=form, do_sample=True, temperature=1.3, seed=3)):
        outs = generate_batch(lm, prompts, cfg)
        for g in outs:
            check = form_check(g.text, form)
            assert check["ok"], (g.text, check["problem"])
            assert g.finish_reason == "stop"          # ended with EOS right after the last line
            lines = g.text.split("\n")
            assert len(lines) == FIXED_FORMS[form][0]
            assert all(line[-1] in "，。" for line in lines)
            chars = [ch for ch in g.text if is_cjk(ch)]
            pairs = list(zip(chars, chars[1:]))
            assert len(pairs) == len(set(pairs)), f"a character pair repeats in {g.text!r}"


def test_without_no_repeat_the_tiny_model_loops(tiny_llama_dir):
    """The no-repeat rule is what removes the loops: the same constraint without it repeats pairs."""
    from transformers import LogitsProcessorList

    from harness.forms import FormConstraint
    lm = load_model(str(tiny_llama_dir))
    enc = lm.tokenizer([lm.render_instruction(f"写一首七言律诗，题目：{t}") for t in TOPICS], return_tensors="pt",
                       padding=True, padding_side="left", add_special_tokens=False)
    repeats = 0
    for no_repeat in (False, True):
        proc = FormConstraint(lm.tokenizer, "七言律诗", lm.tokenizer.eos_token_id, no_repeat=no_repeat)
        ids = lm.model.generate(**enc, max_new_tokens=200, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                                logits_processor=LogitsProcessorList([proc]))
        for row in ids[:, enc["input_ids"].shape[1]:]:
            text = lm.tokenizer.decode(row, skip_special_tokens=True)
            assert form_check(text, "七言律诗")["ok"], text
            chars = [ch for ch in text if is_cjk(ch)]
            assert all(charset()[1][ord(c)] for c in chars), "only characters of the poem charset"
            pairs = list(zip(chars, chars[1:]))
            if no_repeat:
                assert len(pairs) == len(set(pairs)), text
            else:
                repeats += len(pairs) - len(set(pairs))
    assert repeats > 0


def test_constrained_streaming_and_greedy_batch_agree(tiny_llama_dir):
    lm = load_model(str(tiny_llama_dir))
    prompt = lm.render_instruction("写一首七言绝句，题目：明月")
    cfg = GenerationConfig(max_new_tokens=200, form="七言绝句")
    stats = StreamStats()
    streamed = "".join(stream(lm, prompt, cfg, stats=stats))
    assert streamed == generate_batch(lm, [prompt], cfg)[0].text
    assert form_check(streamed, "七言绝句")["ok"] and stats.finish_reason == "stop"


def test_unknown_form_is_refused():
    text = CHARSET_FILE.read_text(encoding="utf-8")
    chars = text.replace("\n", "")
    assert len(chars) == len(set(chars)) == 3500 and all(is_cjk(c) for c in chars) and "月" in chars[:100]
    assert charset()[1].sum() == 3500
    with pytest.raises(UserError, match="五言绝句"):
        GenerationConfig(form="haiku")
    assert GenerationConfig(form="五言绝句").as_key()["form"] == "五言绝句"
    assert "form" not in GenerationConfig().as_key()


def test_character_level_vocabulary(tmp_path):
    """BERT-style Chinese vocabularies (uer/gpt2-chinese-poem): one token per character, no byte pieces."""
    import torch
    from tiny import TEXT
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    chars = sorted({ch for ch in TEXT if not ch.isspace()} | {"\n"})
    vocab = {"[EOS]": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[EOS]"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="[EOS]", unk_token="[EOS]", pad_token="[EOS]")
    assert tok("春眠\n", add_special_tokens=False)["input_ids"] == [vocab["春"], vocab["眠"], vocab["\n"]]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                       eos_token_id=0, bos_token_id=0, pad_token_id=0))
    model.save_pretrained(tmp_path / "charlm")
    tok.save_pretrained(tmp_path / "charlm")
    lm = load_model(str(tmp_path / "charlm"))
    valid = VocabTables(lm.tokenizer).table(0, 0)[0]
    assert valid[vocab["春"]] and not valid[vocab["，"]] and not valid[vocab["a"]]
    outs = generate_batch(lm, ["写一首五言绝句：", "春夜"], GenerationConfig(max_new_tokens=40, form="五言绝句",
                                                                         do_sample=True, seed=1))
    for g in outs:
        assert form_check(g.text, "五言绝句")["ok"], g.text


# ---------------------------------------------------------------- rhyme and tone (harness/rules.py)

def _constrained(lm, form: str, topics: list[str], **opts) -> list[str]:
    from transformers import LogitsProcessorList

    from harness.forms import FormConstraint
    enc = lm.tokenizer([lm.render_instruction(f"写一首{form}，题目：{t}") for t in topics], return_tensors="pt",
                       padding=True, padding_side="left", add_special_tokens=False)
    proc = FormConstraint(lm.tokenizer, form, lm.tokenizer.eos_token_id, **opts)
    ids = lm.model.generate(**enc, max_new_tokens=320, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                            logits_processor=LogitsProcessorList([proc]))
    return [lm.tokenizer.decode(row, skip_special_tokens=True) for row in ids[:, enc["input_ids"].shape[1]:]]


@pytest.mark.parametrize("form", list(FIXED_FORMS))
def test_rhyme_and_tone_constraints_hold(form, tiny_llama_dir):
    from harness.rules import explain_poem as check_poem
    lm = load_model(str(tiny_llama_dir))
    free = [check_poem(t, form, "zh") for t in _constrained(lm, form, TOPICS)]
    assert all(r["rhyme_ok"] is not None or r["unknown_chars"] for r in free)
    assert not all(r["rhyme_ok"] and r["tone_ok"] for r in free), "a random tiny model does not keep the rules"
    for opts in ({"rhyme": True}, {"rhyme": True, "tone": True}):
        for text in _constrained(lm, form, TOPICS, **opts):
            r = check_poem(text, form, "zh")
            assert form_check(text, form)["ok"], text
            assert r["rhyme_ok"] is True and r["repeated_rhyme"] is False, (text, r["rules_summary"])
            if "tone" in opts:
                assert r["tone_ok"] is True and r["tone_rate"] == 1.0, (text, r["rules_summary"])


def test_given_rhyme_group_and_template(tiny_gpt2_dir):
    from harness.rules import constrained_positions, explain_poem as check_poem, rhyme_table, tone_templates, zh_lines
    lm = load_model(str(tiny_gpt2_dir))
    table = rhyme_table()
    pats = tone_templates("七言绝句")["平起首句入韵"]
    for text in _constrained(lm, "七言绝句", TOPICS[:3], rhyme_group="東", tone="平起首句入韵", rhyme_first_line=True):
        r = check_poem(text, "七言绝句", "zh")
        assert r["rhyme_ok"] is True and r["rhyme_group"] == "东" and r["tone_ok"] is True, text
        lines = zh_lines(text)
        assert "东" in table.groups_of(lines[0][-1]), "with rhyme_first_line the first line rhymes too"
        for line, pat in zip(lines, pats):          # the given template, not merely one of the four
            assert all(pat[p] in table.levels_of(line[p]) for p in constrained_positions(7)), (line, pat)


def test_unknown_rhyme_group_or_template_is_refused(tiny_llama_dir):
    from harness.forms import FormConstraint
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(UserError, match="nearest 东"):
        FormConstraint(lm.tokenizer, "五言绝句", lm.tokenizer.eos_token_id, rhyme_group="董")
    with pytest.raises(UserError, match="平声 groups are 东冬江"):
        FormConstraint(lm.tokenizer, "五言绝句", lm.tokenizer.eos_token_id, rhyme_group="foo")
    with pytest.raises(UserError, match="仄起首句不入韵"):
        FormConstraint(lm.tokenizer, "五言绝句", lm.tokenizer.eos_token_id, tone="平起")
