"""ftbench: show and measure what fine-tuning did to a small language model.

Library modules: paths, models, generation, data, finetune, judge, store, metrics, evaluate,
leaderboard, report. Entry points: `python -m harness <command>` and app.py.
"""
__version__ = "0.1.0"


def quiet_libraries() -> None:
    """The entry points' console shows our lines, not the libraries' noise: transformers' per-load progress bars
    (printed twice on a first start: conversion, then load; they follow huggingface_hub's switch, which
    HF_HUB_DISABLE_PROGRESS_BARS=0 turns back on), its FutureWarning about a renamed method that peft still calls,
    and the gguf writer's INFO lines when an adapter is exported. Errors and warnings stay."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    for name in ("gguf", "gguf.gguf_writer"):
        logging.getLogger(name).setLevel(logging.WARNING)
