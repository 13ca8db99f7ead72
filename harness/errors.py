"""The one error type a user can fix: the CLI prints it as one sentence (exit 2), the app shows it inline.

    from harness.errors import UserError
    raise UserError("eval_sets/own/x.jsonl:3: missing field 'label'; add it or delete the line")

Library modules raise it for bad input (files, names, values) with what was wrong, what is available and what
to run. It is a ValueError, so code that validates with ValueError keeps working. `assert` is for internal
invariants only.
"""
from __future__ import annotations


class UserError(ValueError):
    """An error caused by input the user can fix; the CLI prints it without a traceback (exit 2)."""
