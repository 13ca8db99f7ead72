"""The benchmark package (harness/bench/): every `bench ...` command resolves to a function there, and nothing in
the product imports it (benchmarks never ship in the product's import graph). The figures themselves are printed
by the commands (this machine is noisy: no timed assertions in tests)."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

from harness.paths import PROJECT_ROOT

HARNESS = PROJECT_ROOT / "harness"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_every_bench_command_is_a_function_of_the_bench_package():
    from harness.__main__ import COMMANDS
    benches = {name: target for name, (target, _) in COMMANDS.items() if name.startswith("bench ")}
    assert {"bench generation", "bench app"} <= set(benches)
    for name, target in benches.items():
        module, func = target.split(":")
        assert module.startswith("harness.bench."), f"{name} -> {module}: benchmarks live in harness/bench/"
        fn = getattr(importlib.import_module(module), func)
        assert inspect.isfunction(fn) and fn.__doc__, name


def test_no_product_module_imports_the_bench_package():
    offenders = []
    for path in HARNESS.rglob("*.py"):
        rel = path.relative_to(PROJECT_ROOT)
        if rel.parts[:2] == ("harness", "bench") or rel.name == "__main__.py":
            continue
        if any(m == "harness.bench" or m.startswith("harness.bench.") for m in _imports(path)):
            offenders.append(str(rel))
    for extra in (PROJECT_ROOT / "app.py",):
        if any(m.startswith("harness.bench") for m in _imports(extra)):
            offenders.append(extra.name)
    assert offenders == []
    assert not (HARNESS / "bench.py").exists() and not (HARNESS / "bench_app.py").exists()


def test_rules_loads_no_model():
    """harness/rules.py holds pure rule checks: the model-loading measurement lives in harness/bench/rules.py."""
    imported = _imports(HARNESS / "rules.py")
    assert not {m for m in imported if m.split(".")[1:2] and m.split(".")[1] in
                ("models", "data", "forms", "generation", "tasks")}, imported
    from harness.bench.rules import bench_rules, measure_rules
    assert "n" in inspect.signature(bench_rules).parameters and callable(measure_rules)
