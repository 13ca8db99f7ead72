"""ftbench: show and measure what fine-tuning did to a small language model.

Library modules: paths, models, generation, data, finetune, judge, store, metrics, evaluate,
leaderboard, report. Entry points: `python -m harness <command>` and app.py.
"""
__version__ = "0.1.0"
