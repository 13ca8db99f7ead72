"""The signature is the CLI: build argparse sub-commands from typed functions.

A command is a plain function with annotated parameters and a docstring. A parameter typed as a dataclass
(``RunConfig``, ``GenerationConfig``, ``JudgeConfig``) contributes one flag per field, with the field's default and
the comment on its line as help; the dataclass is built from the flags, so its ``__post_init__`` checks apply
(one set of names, defaults and checks for the CLI, the app and the tests). A parameter named ``judge`` prefixes
its fields (``--judge-timeout``) and its ``spec`` field is ``--judge`` itself. ``fn.cli_skip = {param: (field,
...)}`` leaves fields out. Every other parameter is a ``--flag``
(``snake_case`` -> ``--snake-case``), required when it has no default; positional-only parameters (before
``/`` in the signature) are positional arguments. ``bool``
defaults become ``--flag/--no-flag``; ``list[str]`` takes one or more values. The first docstring
paragraph is the help text; lines ``name: text`` in the docstring describe parameters.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable


from harness import quiet_libraries
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


def _field_comments(cls) -> dict[str, str]:
    """field name -> the comment on its line in the class source (the field's help)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        code, _, comment = line.partition("  # ")
        name = code.strip().split(":", 1)[0]
        if comment and name.isidentifier():
            out[name] = comment.strip()
    return out


def dataclass_flags(param: str, cls, skip: tuple[str, ...] = ()) -> list[tuple[str, str, inspect.Parameter, object, str]]:
    """(dest, flag, pseudo-parameter, type, help) for each CLI-able field of a dataclass parameter."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        base = [a for a in typing.get_args(tp) if a is not type(None)]
        core = base[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(base) == 1 else tp
        if typing.get_origin(core) is tuple or core is tuple or core is dict:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        if param == "judge":
            flag = "judge" if f.name == "spec" else f"judge_{f.name}"
        else:
            flag = f.name
        pseudo = inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, default=default)
        out.append((f"{param}.{f.name}", flag, pseudo, tp, comments.get(f.name, "")))
    return out


def _add_params(parser: argparse.ArgumentParser, fn: Callable) -> None:
    hints = typing.get_type_hints(fn)
    helps = _param_help(inspect.getdoc(fn) or "")
    skip = getattr(fn, "cli_skip", {})
    params: list[tuple[str, inspect.Parameter, object, str | None, str]] = []
    for name, p in inspect.signature(fn).parameters.items():
        tp = hints.get(name, str)
        if dataclasses.is_dataclass(tp):
            for dest, flag, pseudo, ftp, help_ in dataclass_flags(name, tp, tuple(skip.get(name, ()))):
                params.append((flag, pseudo, ftp, help_, dest))
        else:
            params.append((name, p, tp, helps.get(name), name))
    for name, p, tp, help_, dest in params:
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
            tp, origin, args = args[0], typing.get_origin(args[0]), typing.get_args(args[0])
        kw: dict = {"help": help_ or ""}
        if origin is list:
            kw["nargs"] = "+"
            kw["type"] = args[0] if args else str
            kw["metavar"] = name.upper()
        elif tp is bool:  # default False: a plain switch (also for names like no_judge); True: --x/--no-x
            kw["action"] = argparse.BooleanOptionalAction if p.default is True else "store_true"
        elif typing.get_origin(tp) is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
        else:
            kw["type"] = tp
            kw["metavar"] = name.upper()
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            parser.add_argument(name, **kw)
        elif p.default is inspect.Parameter.empty:
            parser.add_argument("--" + name.replace("_", "-"), dest=dest, required=True, **kw)
        else:
            kw["default"] = p.default
            if p.default not in (None, "") and tp is not bool:
                kw["help"] = (kw["help"] + " " if kw["help"] else "") + f"(default: {p.default})"
            parser.add_argument("--" + name.replace("_", "-"), dest=dest, **kw)


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
    quiet_libraries()
    parser = build_parser(commands, argv)
    ns = vars(parser.parse_args(argv))
    fn = ns.pop("_fn")
    ns.pop("command", None)
    ns.pop("subcommand", None)
    positional = [ns.pop(n) for n, p in inspect.signature(fn).parameters.items()
                  if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    try:
        hints = typing.get_type_hints(fn)
        for name in [n for n in inspect.signature(fn).parameters if dataclasses.is_dataclass(hints.get(n))]:
            values = {k.split(".", 1)[1]: ns.pop(k) for k in list(ns) if k.startswith(name + ".")}
            ns[name] = hints[name](**values)        # its __post_init__ checks the values (UserError)
        result = fn(*positional, **ns)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a command that keeps finished items says so itself (how many, where) before this; no promise here
        print("interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
