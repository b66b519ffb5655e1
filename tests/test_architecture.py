"""The house rules of ARCHITECTURE.md, checked over the import graph of the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmscope"
OUTER = {"cli", "web", "plots", "tour"}
RANK = {"engine": 0, "datasets": 1}  # families 2, outer layers 3


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "lmscope"


def _rank(layer: str) -> int:
    return 3 if layer in OUTER or layer == "lmscope" else RANK.get(layer, 2)


def _runtime_nodes(tree: ast.Module):
    """The statements that run at import time: module level, outside `if TYPE_CHECKING:`."""
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield from ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else ()


def _imports(path: Path, *, import_time: bool = False) -> set[str]:
    """lmscope modules imported by `path`: every import (also inside functions), or with
    `import_time` only those that run when the module is imported."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    for node in (_runtime_nodes(tree) if import_time else ast.walk(tree)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lmscope")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("lmscope"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
    return out


def _graph(*, import_time: bool = False) -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: {t for t in _imports(p, import_time=import_time) if t in files and t != "lmscope"}
            for m, p in files.items()}


def test_imports_run_one_way_outer_families_datasets_engine():
    """Every import, lazy ones inside functions included. `lmscope` itself (its version and
    lazy top-level names) may be imported from anywhere."""
    bad = []
    for src, targets in _graph().items():
        for t in targets:
            if _rank(_layer(t)) > _rank(_layer(src)):
                bad.append(f"{src} -> {t}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_the_studio_does_not_import_the_cli():
    bad = [f"{s} -> {t}" for s, ts in _graph().items() if _layer(s) == "web" for t in ts if _layer(t) == "cli"]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Among the imports that run when a module is imported (a lazy import inside a function,
    such as `Model.run` reaching `runner.run`, is a call, not a dependency of the module)."""
    graph = _graph(import_time=True)
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == node or _module_is_parent(nxt, node):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _module_is_parent(pkg: str, mod: str) -> bool:
    """`lmscope.lens` (the package __init__) importing its own modules is not a cycle."""
    return mod.startswith(pkg + ".")


def test_families_and_outer_layers_never_touch_the_hf_model():
    bad = []
    for path in SRC.rglob("*.py"):
        mod = _module(path)
        if _layer(mod) in ("engine", "lmscope"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("hf", "spec") and isinstance(node.ctx, ast.Load):
                bad.append(f"{mod}:{node.lineno} .{node.attr}")
    assert not bad, "only the engine reads model.hf / model.spec:\n" + "\n".join(bad)


def test_every_family_has_a_cli_module_a_docs_page_and_tests():
    root = SRC.parents[1]
    families = sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
                      and p.name not in OUTER | set(RANK))
    assert families, "no family found"
    missing = []
    for fam in families:
        if not any((root / "tests" / fam).glob("test_*.py")):
            missing.append(f"tests/{fam}/")
        if not (root / "docs" / f"{fam}.md").is_file():
            missing.append(f"docs/{fam}.md")
    assert not missing, "families without their room: " + ", ".join(missing)


def test_every_lazy_export_of_a_family_resolves():
    """A family's `__init__` names each public object once; every name must import (a
    generated export table once listed "(" and lost the names of a multi-line import)."""
    import importlib

    for init in sorted(SRC.glob("*/__init__.py")):
        pkg = importlib.import_module(f"lmscope.{init.parent.name}")
        for name in getattr(pkg, "__all__", []):
            assert name.isidentifier(), f"lmscope.{init.parent.name} exports {name!r}"
            assert getattr(pkg, name) is not None
