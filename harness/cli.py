"""The signature is the CLI: build argparse sub-commands from typed functions.

A command is a plain function with annotated parameters and a docstring. Every parameter is a ``--flag``
(``snake_case`` -> ``--snake-case``), required when it has no default; positional-only parameters (before
``/`` in the signature) are positional arguments. ``bool``
defaults become ``--flag/--no-flag``; ``list[str]`` takes one or more values. The first docstring
paragraph is the help text; lines ``name: text`` in the docstring describe parameters.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import typing
from collections.abc import Callable


from harness.errors import UserError


def _param_help(doc: str) -> dict[str, str]:
    out = {}
    for line in doc.splitlines():
        line = line.strip()
        if ":" in line:
            key, _, text = line.partition(":")
            if key.isidentifier():
                out[key] = text.strip()
    return out


def _add_params(parser: argparse.ArgumentParser, fn: Callable) -> None:
    hints = typing.get_type_hints(fn)
    helps = _param_help(inspect.getdoc(fn) or "")
    for name, p in inspect.signature(fn).parameters.items():
        tp = hints.get(name, str)
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
            tp, origin, args = args[0], typing.get_origin(args[0]), typing.get_args(args[0])
        kw: dict = {"help": helps.get(name)}
        if origin is list:
            kw["nargs"] = "+"
            kw["type"] = args[0] if args else str
        elif tp is bool:  # default False: a plain switch (also for names like no_judge); True: --x/--no-x
            kw["action"] = argparse.BooleanOptionalAction if p.default is True else "store_true"
        elif typing.get_origin(tp) is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
        else:
            kw["type"] = tp
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            parser.add_argument(name, **kw)
        elif p.default is inspect.Parameter.empty:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, required=True, **kw)
        else:
            kw["default"] = p.default
            if kw.get("help") and p.default is not None and tp is not bool:
                kw["help"] += f" (default: {p.default})"
            parser.add_argument("--" + name.replace("_", "-"), dest=name, **kw)


def build_parser(commands: dict[str, tuple[str, str]], argv: list[str], prog: str = "python -m harness"):
    """commands maps 'name' or 'group name' to ('module:function', 'one-line help').

    Only the chosen command's module is imported, so `python -m harness models` does not pay for the
    judge's or the app's imports.
    """
    parser = argparse.ArgumentParser(prog=prog)
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    chosen = [a for a in argv if not a.startswith("-")][:2]
    for key, (target, short) in commands.items():
        words = key.split()
        where = subs
        if len(words) == 2:
            if words[0] not in groups:
                gp = subs.add_parser(words[0], help=f"{words[0]} sub-commands")
                groups[words[0]] = gp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            where = groups[words[0]]
        if words != chosen[: len(words)]:
            where.add_parser(words[-1], help=short)
            continue
        fn = _resolve(target)
        doc = inspect.getdoc(fn) or short
        sp = where.add_parser(words[-1], help=short, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_params(sp, fn)
        sp.set_defaults(_fn=fn)
    return parser


def _resolve(target: str) -> Callable:
    mod, _, name = target.partition(":")
    return getattr(importlib.import_module(mod), name)


def main(commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(commands, argv)
    ns = vars(parser.parse_args(argv))
    fn = ns.pop("_fn")
    ns.pop("command", None)
    ns.pop("subcommand", None)
    positional = [ns.pop(n) for n, p in inspect.signature(fn).parameters.items()
                  if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    try:
        result = fn(*positional, **ns)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed items are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
