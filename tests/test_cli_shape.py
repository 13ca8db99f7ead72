"""The command table's shape: every entry point exists and writes with --output (issue 24: `export` and `finetune`
took --out where every other command took --output)."""
from __future__ import annotations

import importlib
import inspect

import pytest

from harness.__main__ import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_exists_and_names_its_output_flag_output(name):
    module, _, fn_name = COMMANDS[name][0].partition(":")
    fn = getattr(importlib.import_module(module), fn_name)
    params = inspect.signature(fn).parameters
    assert "out" not in params, f"{name}: the output flag is --output, like every other command"
