"""python -m harness <command> — one table of sub-commands over the library's functions.

    python -m harness models
    python -m harness generate --model smollm2-135m-instruct --input prompts.txt --output out.jsonl
    python -m harness run --model smollm2-135m-instruct --adapter smollm2-135m-alpaca --eval-set instructions
"""
import sys

from harness.cli import main

COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("harness.tasks:tasks_cmd", "list the registered tasks (harness/tasks, eval_sets/tasks)"),
    "models": ("harness.commands:models", "list base models and adapters with their status"),
    "generate": ("harness.commands:generate", "generate a response for each prompt of a file (batched)"),
    "classify": ("harness.commands:classify", "classify each message of a file with a classification adapter"),
    "data prepare": ("harness.data:prepare_cmd", "download (sha256-checked) or read a dataset and write its splits"),
    "data list": ("harness.data:list_cmd", "list datasets and eval sets"),
    "finetune": ("harness.finetune:finetune_cmd", "train a LoRA adapter from a recipe file"),
    "card": ("harness.finetune:card_cmd", "measure an adapter vs its base and write the metrics into its card"),
    "run": ("harness.evaluate:run_cmd", "generate, judge and score an eval set; update the leaderboard"),
    "generate-set": ("harness.evaluate:generate_set_cmd", "generate responses for an eval set (cached, resumable)"),
    "judge": ("harness.evaluate:judge_cmd", "score a responses JSONL with a judge (cached, resumable)"),
    "leaderboard": ("harness.leaderboard:leaderboard_cmd", "write results/leaderboard_<task>.csv from stored results"),
    "report": ("harness.report:report_cmd", "comparison report of two checkpoints (Markdown + PNG)"),
    "convert": ("harness.convert:convert_cmd", "an LLMs-from-scratch GPTModel .pth state dict -> a Hugging Face GPT-2 folder (LM or ch06 classifier)"),
    "sweep": ("harness.sweep:sweep_cmd", "evaluate every checkpoint of a folder; metric vs step with CIs; the best one"),
    "export": ("harness.export:export_cmd", "export an adapter to a serving engine: gguf | ollama | vllm"),
    "labels export": ("harness.votes:labels_export_cmd", "write the stored human votes to a CSV or JSONL file"),
    "labels import": ("harness.votes:labels_import_cmd", "import human pairwise labels from a CSV or JSONL file"),
    "labels push": ("harness.votes:labels_push_cmd", "push the stored votes to a Hub dataset repo (owner/name) or a folder"),
    "bench generation": ("harness.bench.generation:bench_generation", "tokens/s: transformers sequential vs batched, llama.cpp batched; load times"),
    "bench judge": ("harness.bench.judge:bench_judge", "judge throughput: 1 vs 4 workers, cold vs warm cache"),
    "bench app": ("harness.bench.app:bench_app", "the app as a user meets it: page up, first token, Compare, llama.cpp speed, RSS"),
    "bench llamacpp": ("harness.bench.llamacpp:bench_llamacpp", "one chat stream: llama.cpp vs transformers; poem grammar cost"),
    "bench rules": ("harness.bench.rules:bench_rules", "poem rule checks on reference poems and under each constraint (slow)"),
    "bench equivalence": ("harness.bench.equivalence:bench_equivalence", "llama.cpp vs transformers: greedy answers (ROUGE-L, identical) and poem rule rates, grammar vs logits processor"),
    "bench convert": ("harness.bench.convert:bench_convert", "convert a GPT-2-medium-shaped state dict vs reading the file"),
    "bench agreement": ("harness.bench.agreement:bench_agreement", "every offline judge vs the committed labels -> results/reports/judges/instructions_own.md"),
}

if __name__ == "__main__":
    sys.exit(main(COMMANDS))
