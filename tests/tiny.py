"""Tiny models and tokenizers built from a config and the tests' own text (no downloads), and the small helpers
the test files share (free_port).

    python tests/tiny.py /tmp/tiny   # writes tiny-llama/ and tiny-gpt2/ there, for trying the CLI by hand
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

TEXT = """Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction: ### Input: ### Response:
Hello, how are you today? I am fine, thank you. What is the capital of France? The capital of France is Paris.
Rewrite the sentence in passive voice. The cat chased the mouse. The mouse was chased by the cat.
Free entry! Win a prize now, claim your reward at the link. Your parcel is waiting, pay the fee.
Hi mum, this is my new number. Are we still meeting for lunch tomorrow? See you at noon.
Write a sonnet about the sea. The waves roll in beneath the silver moon, and gulls cry out.
写一首五言绝句，题目：春夜。春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。
床前明月光，疑是地上霜。举头望明月，低头思故乡。白日依山尽，黄河入海流。
spam ham yes no answer classify message label
"""

def free_port() -> int:
    """A loopback port nothing listens on right now (for a server a test starts, or one that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT.splitlines() * 3, trainer)
    eos = "<|im_end|>" if chat else "<|endoftext|>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_llama(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(chat=True)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.4,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_gpt2(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(chat=False)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=512, initializer_range=0.4,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_adapter(base_dir: Path, out: Path, kind: str = "causal", seed: int = 1, base_name: str | None = None,
                  task: str | None = None) -> Path:
    """A tiny LoRA adapter with non-zero weights (so it changes outputs), saved in peft format + recipe.toml."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if kind == "seq_cls":
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
        cfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
                         if "llama" in model.config.model_type else ["c_attn"], init_lora_weights=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
                         if "llama" in model.config.model_type else ["c_attn"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    if kind == "seq_cls":  # a head that is not the random init of the next load
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "score" in n and "modules_to_save" in n:
                    p.normal_(0, 1.0)
    peft_model.save_pretrained(out)
    task = task or ("spam" if kind == "seq_cls" else "chat")
    labels = 'labels = ["ham", "spam"]\n' if kind == "seq_cls" else ""
    (out / "recipe.toml").write_text(f'name = "{out.name}"\nbase = "{base_name or Path(base_dir).resolve()}"\n'
                                     f'task = "{task}"\n{labels}', encoding="utf-8")
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny")
    print(build_llama(root / "tiny-llama"), build_gpt2(root / "tiny-gpt2"))


# Shakespeare's sonnet 18 (public domain): the reference sonnet of the rule, grammar and app tests
SONNET_18 = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee."""
