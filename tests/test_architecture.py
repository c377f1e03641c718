"""The layout's rules (docs/architecture.md): imports only run down the levels or sideways within
a folder, nothing imports the package root, and no modules import each other round a loop."""
from __future__ import annotations

import ast
from pathlib import Path

import afde_nb

ROOT = Path(afde_nb.__file__).parent
LEVEL = {"_core": 0, "errors": 0, "core": 1, "data": 1, "models": 2, "pipeline": 3, "eval": 4, "ui": 5}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("afde_nb",) + p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every afde_nb name ``name`` imports (anywhere in the file), as the most specific module."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            targets = [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t == "afde_nb" or t.startswith("afde_nb."):
                while t not in MODULES and t.count(".") > 1:
                    t = t.rpartition(".")[0]
                found.append((t, node.lineno))
    return found


def _level(module: str) -> int | None:
    parts = module.split(".")
    return LEVEL.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_level():
    assert all(_level(m) is not None for m in MODULES if m != "afde_nb" and m != "afde_nb.__main__")


def test_imports_never_run_up_a_level():
    bad = []
    for name, path in MODULES.items():
        if name in ("afde_nb", "afde_nb.__main__"):
            continue
        for target, line in _imports(name, path):
            if target == "afde_nb" or (target.count(".") == 1 and target.split(".")[1] not in LEVEL):
                bad.append(f"{name}:{line} imports the package root ({target})")
            elif _level(target) is not None and _level(target) > _level(name):
                bad.append(f"{name}:{line} imports {target}, a higher level")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {n: {t for t, _ in _imports(n, p) if t in MODULES and t != n and not (n.startswith(t + ".") and
                                                                                MODULES[t].name == "__init__.py")}
             for n, p in MODULES.items() if n != "afde_nb"}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t] if t in stack else [n, t])
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: a core module importing the pipeline is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..pipeline.compress import compress\n")
    assert _imports("afde_nb.core.bad", bad) == [("afde_nb.pipeline.compress", 1)]
    assert _level("afde_nb.pipeline.compress") > _level("afde_nb.core.bad")
