"""The package's shape: folders that name the parts, imports that flow one way, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "reattn_llm"
# Each part may import from the parts listed before it (and from itself); documents stands apart.
ORDER = ["errors", "kernels", "kv", "method", "runtime", "calibration", "integrations", "serve", "cli", "lab"]
ALLOWED = {part: set(ORDER[: i + 1]) for i, part in enumerate(ORDER)}
ALLOWED["calibration"] |= {"documents"}
ALLOWED["integrations"] |= {"documents"}
ALLOWED["serve"] |= {"documents", "integrations"}
ALLOWED["cli"] |= {"documents", "integrations"}
ALLOWED["lab"] |= {"documents", "integrations", "cli"}
ALLOWED["documents"] = {"errors", "documents"}
ALLOWED["__init__"] = set(ORDER) | {"documents"}
LONG_ALLOWED = {"kernels/triton_attention.py", "kernels/triton_topk.py", "documents/pdf.py"}


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """Parts of the package that ``path`` imports, type-only imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = list(path.relative_to(ROOT).parent.parts)
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # `from . import x` at the top level
                    target = [alias.name for alias in node.names][:1]
            elif node.module and node.module.startswith("reattn_llm."):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                parts.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reattn_llm."):
                    parts.add(alias.name.split(".")[1])
    return parts


MODULES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    part = _part(path)
    bad = _imported_parts(path) - ALLOWED[part]
    assert not bad, f"{path.relative_to(ROOT)} ({part}) imports {sorted(bad)}: only {sorted(ALLOWED[part])}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    rel = str(path.relative_to(ROOT))
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert rel in LONG_ALLOWED or lines <= 400, f"{rel} has {lines} lines (at most 400 outside the kernels)"


def test_no_import_cycles_between_modules():
    """No module imports one that (directly or not) imports it back, type-only imports included."""
    names = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in MODULES}
    by_name = {v.removesuffix(".__init__"): k for k, v in names.items()}
    graph: dict[str, set[str]] = {}
    for path, name in names.items():
        mod = name.removesuffix(".__init__")
        pkg = list(path.relative_to(ROOT).parent.parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:
                    full = f"{target}.{alias.name}" if target else alias.name
                    if full in by_name:
                        deps.add(full)
                    elif target in by_name:
                        deps.add(target)
        deps.discard(mod)
        graph[mod] = {d for d in deps if not mod.startswith(d + ".") and not mod == d}
    # a package __init__ re-exporting its own modules is not a cycle; drop parent-package edges
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue
            if seen.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(dep) :], dep])}")
            if dep not in seen:
                visit(dep)
        stack.pop()
        seen[node] = 2

    for node in graph:
        if node not in seen:
            visit(node)
